"""Saving fitted estimators without pickle: one ``.npz`` file of arrays plus JSON metadata.

Loading such a file executes no code (``numpy.load(allow_pickle=False)`` and
``json``), so it is safe for models from untrusted sources. The file holds the
constructor parameters, every fitted attribute (arrays, dicts of arrays and
JSON values) and a format version; a file of another format version is refused
with a message naming both versions.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
_META = "__meta__.json"
_DICT_SEPARATOR = "::"


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store a {type(value).__name__} in JSON")


def _storable_classes(classes: np.ndarray) -> np.ndarray:
    if classes.dtype != object:
        return classes
    if all(isinstance(c, str) for c in classes):
        return classes.astype(str)
    raise TypeError(
        "save() stores class labels that are numbers or strings; classes_ holds other objects "
        f"({sorted({type(c).__name__ for c in classes})}). Use pickle/joblib for such a model."
    )


def save_estimator(estimator, path) -> Path:
    """Write a fitted estimator's parameters and fitted state to ``path`` (``.npz``)."""
    from . import __version__

    arrays, values = {}, {}
    for name, value in vars(estimator).items():
        if not name.endswith("_") or name.startswith("_"):
            continue
        if name == "classes_":
            arrays[name] = _storable_classes(np.asarray(value))
        elif isinstance(value, np.ndarray):
            arrays[name] = value
        elif isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values()):
            for key, array in value.items():
                arrays[f"{name}{_DICT_SEPARATOR}{key}"] = array
        else:
            values[name] = value
    for name in getattr(estimator, "_derived_attributes", ()):  # for readers of the file; not set on load
        arrays[name] = np.asarray(getattr(estimator, name))
    params = estimator.get_params(deep=False)
    params["memory"] = None  # a cache location is a property of a machine, not of the model
    if not isinstance(params.get("random_state"), (int, type(None))):
        params["random_state"] = None
    if params.get("device") is not None:
        params["device"] = str(params["device"])
    meta = {
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "estimator": type(estimator).__name__,
        "params": params,
        "values": values,
    }
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    with open(path, "wb") as handle:
        np.savez(handle, **arrays, **{_META: np.array(json.dumps(meta, default=_json_default))})
    return path


def load_estimator(cls, path):
    """Rebuild an estimator of class ``cls`` from a file written by :func:`save_estimator`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path {str(path)!r} does not exist.")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ValueError(f"path {str(path)!r} is not a file written by {cls.__name__}.save().") from exc
    with archive:
        if _META not in archive.files:
            raise ValueError(f"path {str(path)!r} is not a file written by {cls.__name__}.save() (no metadata).")
        meta = json.loads(str(archive[_META]))
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{str(path)!r} was written by qpm_sklearn {meta.get('library_version')} in format version "
                f"{meta.get('format_version')}; this version of qpm_sklearn reads format version "
                f"{FORMAT_VERSION} only. Refit the model or load it with the version that wrote it."
            )
        if meta.get("estimator") != cls.__name__:
            raise ValueError(f"{str(path)!r} holds a {meta.get('estimator')}, not a {cls.__name__}.")
        estimator = cls(**meta["params"])
        for name in archive.files:
            if name == _META or name in getattr(cls, "_derived_attributes", ()):
                continue
            if _DICT_SEPARATOR in name:
                attribute, key = name.split(_DICT_SEPARATOR, 1)
                vars(estimator).setdefault(attribute, {})[key] = archive[name]
            else:
                setattr(estimator, name, archive[name])
    for name, value in meta["values"].items():
        setattr(estimator, name, value)
    return estimator
