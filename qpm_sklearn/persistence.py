"""Saving fitted estimators without pickle: one checked ``.npz`` file of arrays plus JSON.

Format version 2. The archive (a zip, read with ``numpy.load(allow_pickle=False)``)
holds ``__meta__.json``, a 0-d unicode array with the JSON object ::

    {"format_version": 2, "library_version": "...", "estimator": "QPMClassifier",
     "params": {...constructor parameters...}, "values": {...JSON fitted attributes...}}

and one array per fitted array attribute, ``<attribute>::<key>`` for the network states
(dicts of arrays). Nothing in the file is an object array: feature names are JSON
strings, string class labels a unicode array (so a loaded ``classes_`` of strings has
a numpy ``str`` dtype, its labels equal to the fitted ones). Values JSON cannot hold exactly are
tagged -- ``{"__numpy__": "<i8", "value": 3}`` for a numpy scalar (``"__ndarray__"`` for an
array of numbers or strings), ``{"__tuple__": [...]}``,
``{"__dict__": [[key, value], ...]}`` for a dict (keys of any such type, e.g. the
class labels of a ``class_weight``), ``{"__random_state__": [...]}`` for a RandomState's
state, ``{"__torch_device__": "cuda:0"}`` -- so parameters round-trip exactly.

``memory`` is the one parameter not stored: a cache location belongs to a machine, not
to a model, and a path read from a file is not one to write into. ``save`` writes
``null`` and ``load`` refuses anything else; set it again with ``set_params`` after
loading.

This module is the estimator-independent part: the exact JSON codec
(:func:`encode_value`, :func:`decode_value`), writing an archive atomically
(:func:`write_model_file`: a uniquely named temporary file in the same folder, fsynced,
then ``os.replace``, so a failed save leaves the previous file intact), and reading one
(:func:`read_model_file`) with the checks every model file gets (an archive, no pickled
data, a JSON header of the right version and estimator). Which attributes a model holds,
with which dtypes and shapes, is the estimator's schema and lives beside it
(:mod:`qpm_sklearn.classifier`); it checks the rest with :func:`take_array`,
:func:`take_state` and :func:`take_value`, raising :class:`ModelFileDefect`, which
:func:`read_model_file` turns into one ``ValueError`` naming the file. Loading executes
no code.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ._atomic import replace_atomically

_Estimator = TypeVar("_Estimator")

FORMAT_VERSION = 2
_META = "__meta__.json"
_DICT_SEPARATOR = "::"
_META_KEYS = {"format_version", "library_version", "estimator", "params", "values"}


class ModelFileDefect(Exception):
    """What is wrong with a model file; :func:`read_model_file` turns it into one ValueError naming the file."""


# --------------------------------------------------------------------------------------------
# Exact JSON for parameters and fitted values
# --------------------------------------------------------------------------------------------


def encode_value(value: Any, name: str) -> Any:
    """``value`` as JSON that :func:`decode_value` turns back into an equal value (tags in the module doc).

    Raises
    ------
    TypeError
        When ``value`` (called ``name`` in the message) has a type the format cannot hold.
    """
    if value is None or isinstance(value, (bool, str)) and not isinstance(value, np.generic):
        return value
    if type(value) in (int, float):
        return value
    if isinstance(value, np.generic) and value.dtype.kind in "biufU":
        return {"__numpy__": value.dtype.str, "value": value.item()}
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufU":
        return {"__ndarray__": value.dtype.str, "value": value.tolist()}
    if isinstance(value, np.random.RandomState):
        state = value.get_state(legacy=True)
        if isinstance(state, tuple):  # MT19937's state; another bit generator's (a dict) is refused below
            kind, keys, position, has_gauss, gauss = state
            return {"__random_state__": [kind, keys.tolist(), int(position), int(has_gauss), float(gauss)]}
    if type(value).__module__ == "torch" and type(value).__name__ == "device":
        return {"__torch_device__": str(value)}
    if isinstance(value, tuple):
        return {"__tuple__": [encode_value(item, name) for item in value]}
    if isinstance(value, list):
        return [encode_value(item, name) for item in value]
    if isinstance(value, dict):
        return {"__dict__": [[encode_value(key, name), encode_value(item, f"{name}[{key!r}]")] for key, item in value.items()]}
    raise TypeError(
        f"save() cannot store {name}={value!r} (a {type(value).__name__}) in a model file without pickle; "
        "use numbers, strings, lists, tuples, dicts, numpy scalars or arrays, or a RandomState."
    )


def decode_value(value: Any, name: str) -> Any:
    """The value :func:`encode_value` stored as ``value``; a malformed one raises :class:`ModelFileDefect`."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, list):
        return [decode_value(item, name) for item in value]
    if not isinstance(value, dict) or len(value) not in (1, 2):
        raise ModelFileDefect(f"{name} is not a stored value: {short(value)}")
    if set(value) == {"__numpy__", "value"}:
        try:
            dtype = np.dtype(value["__numpy__"])
            if dtype.kind not in "biufU":
                raise TypeError(dtype)
            return dtype.type(value["value"])
        except (TypeError, ValueError, OverflowError):
            raise ModelFileDefect(f"{name} is not a valid numpy scalar: {short(value)}") from None
    if set(value) == {"__ndarray__", "value"}:
        try:
            dtype = np.dtype(value["__ndarray__"])
            if dtype.kind not in "biufU":
                raise TypeError(dtype)
            return np.asarray(value["value"], dtype=dtype)
        except (TypeError, ValueError, OverflowError):
            raise ModelFileDefect(f"{name} is not a valid numpy array: {short(value)}") from None
    if set(value) == {"__tuple__"} and isinstance(value["__tuple__"], list):
        return tuple(decode_value(item, name) for item in value["__tuple__"])
    if set(value) == {"__dict__"} and isinstance(value["__dict__"], list):
        items = value["__dict__"]
        if not all(isinstance(item, list) and len(item) == 2 for item in items):
            raise ModelFileDefect(f"{name} is not a stored dict: {short(value)}")
        keys = [decode_value(key, name) for key, _ in items]
        if not all(isinstance(key, (str, int, float, bool, np.generic, tuple)) or key is None for key in keys):
            raise ModelFileDefect(f"{name} has a dict key that is not hashable: {short(value)}")
        return {key: decode_value(item, f"{name}[{key!r}]") for key, (_, item) in zip(keys, items)}
    if set(value) == {"__torch_device__"} and isinstance(value["__torch_device__"], str):
        import torch

        try:
            return torch.device(value["__torch_device__"])
        except (RuntimeError, ValueError):
            raise ModelFileDefect(f"{name} is not a valid torch device: {short(value)}") from None
    if set(value) == {"__random_state__"}:
        try:
            kind, keys, position, has_gauss, gauss = value["__random_state__"]
            state = np.random.RandomState()
            state.set_state((kind, np.asarray(keys, dtype=np.uint32), int(position), int(has_gauss), float(gauss)))
            return state
        except (TypeError, ValueError, OverflowError):
            raise ModelFileDefect(f"{name} is not a valid RandomState state") from None
    raise ModelFileDefect(f"{name} is not a stored value: {short(value)}")


def short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_model_file(
    path: str | os.PathLike[str],
    estimator: str,
    params: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    states: Mapping[str, Mapping[str, np.ndarray]],
    values: Mapping[str, Any],
) -> Path:
    """Write one model file atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Where to write; ``.npz`` is appended when missing.
    estimator : str
        The estimator's class name, checked by :func:`read_model_file`.
    params : mapping
        Constructor parameters, stored as exact JSON (:func:`encode_value`).
    arrays : mapping of str to ndarray
        Arrays stored under their names (numbers or strings, never objects).
    states : mapping of str to mapping of str to ndarray
        Dicts of arrays (network states), stored as ``<name>::<key>``.
    values : mapping
        Other fitted values, stored as exact JSON.

    Returns
    -------
    path : pathlib.Path
        The file written.
    """
    from . import __version__

    entries = {name: np.asarray(array) for name, array in arrays.items()}
    for attribute, state in states.items():
        for key, array in state.items():
            entries[f"{attribute}{_DICT_SEPARATOR}{key}"] = np.asarray(array)
    meta = {
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "estimator": estimator,
        "params": {key: encode_value(value, key) for key, value in params.items()},
        "values": {key: encode_value(value, key) for key, value in values.items()},
    }
    entries[_META] = np.array(json.dumps(meta))
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    # mypy would also match **entries to savez's allow_pickle (no key is that name).
    return replace_atomically(path, lambda handle: np.savez(handle, **entries))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_model_file(
    path: str | os.PathLike[str],
    estimator: str,
    build: Callable[[dict[str, Any], dict[str, np.ndarray], dict[str, Any]], _Estimator],
) -> _Estimator:
    """Read a file written by :func:`write_model_file` and rebuild the estimator with ``build``.

    Parameters
    ----------
    path : str or os.PathLike
        The model file.
    estimator : str
        The class name the file must hold.
    build : callable
        ``build(params, arrays, values)`` with the decoded parameters, the arrays (dict
        entries under ``<name>::<key>``, for :func:`take_state`) and the still encoded
        values (for :func:`take_value`); returns the estimator and raises
        :class:`ModelFileDefect` for what is wrong.

    Returns
    -------
    estimator : object
        What ``build`` returns.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        For any defect of the file, naming the file and the defect.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path {str(path)!r} does not exist.")
    try:
        contents = _read_archive(path, estimator)
        meta = _read_meta(contents.pop(_META, None), estimator)
        params = {key: decode_value(value, f"parameter {key!r}") for key, value in meta["params"].items()}
        return build(params, contents, dict(meta["values"]))
    except RecursionError:
        raise ValueError(f"{str(path)!r} is not a valid {estimator} model file: its JSON is nested too deeply") from None
    except ModelFileDefect as defect:
        raise ValueError(f"{str(path)!r} is not a valid {estimator} model file: {defect}") from None


def _read_archive(path: Path, estimator: str) -> dict:
    not_ours = f"not a file written by {estimator}.save()"
    if path.stat().st_size == 0:
        raise ModelFileDefect(f"{not_ours}: the file is empty")
    try:
        archive = np.load(path, allow_pickle=False)
    except ValueError:  # numpy's last guess, a pickle, is refused
        raise ModelFileDefect(f"{not_ours}: neither an .npz archive nor an .npy array") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ModelFileDefect(f"{not_ours} (unreadable archive: {exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ModelFileDefect(f"{not_ours}: a single .npy array, not an archive")
    contents = {}
    with archive:
        for name in archive.files:
            try:
                contents[name] = archive[name]
            except ValueError as exc:
                if "allow_pickle" in str(exc):
                    raise ModelFileDefect(f"{name!r} is an object array (pickled data), which this format never holds") from None
                raise ModelFileDefect(f"{name!r} is unreadable ({exc})") from None
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as exc:
                raise ModelFileDefect(f"{not_ours} ({name!r} is unreadable: {exc})") from None
    return contents


def _read_meta(raw, estimator: str) -> dict:
    if raw is None:
        raise ModelFileDefect(f"not a file written by {estimator}.save() (no {_META})")
    if raw.dtype.kind != "U" or raw.shape != ():
        raise ModelFileDefect(f"{_META} must be a 0-d unicode array; got dtype {raw.dtype}, shape {raw.shape}")
    try:
        meta = json.loads(str(raw))
    except ValueError as exc:
        raise ModelFileDefect(f"{_META} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ModelFileDefect(f"{_META} must hold a JSON object; got a {type(meta).__name__}")
    version = meta.get("format_version")
    if version != FORMAT_VERSION or type(version) is not int:
        raise ModelFileDefect(
            f"written by qpm_sklearn {meta.get('library_version')} in format version {version!r}; this "
            f"version of qpm_sklearn reads format version {FORMAT_VERSION} only. Refit the model or load it "
            "with the version that wrote it"
        )
    if set(meta) != _META_KEYS:
        raise ModelFileDefect(f"{_META} must have the keys {sorted(_META_KEYS)}; got {sorted(meta)}")
    if meta["estimator"] != estimator:
        raise ModelFileDefect(f"it holds a {meta['estimator']!r}, not a {estimator}")
    for key in ("params", "values"):
        if not isinstance(meta[key], dict):
            raise ModelFileDefect(f"{_META}[{key!r}] must be a JSON object; got a {type(meta[key]).__name__}")
    return meta


def take_array(contents: dict[str, np.ndarray], name: str, dtypes: str | type, shape: tuple) -> np.ndarray:
    """Pop array ``name`` from ``contents``, checked.

    Parameters
    ----------
    contents : dict of str to ndarray
        The arrays still unread.
    name : str
        The array to take.
    dtypes : str or numpy dtype
        A string of dtype kinds (``"biufU"``) the array's kind must be in, or the exact dtype.
    shape : tuple of int or None
        The expected shape; ``None`` matches any size on that axis.

    Returns
    -------
    array : ndarray
        The array (finite, when floating).
    """
    if name not in contents:
        raise ModelFileDefect(f"the array {name!r} is missing")
    array = contents.pop(name)
    if array.dtype.kind not in dtypes if isinstance(dtypes, str) else array.dtype != dtypes:
        raise ModelFileDefect(f"{name} has dtype {array.dtype}; expected {dtypes if isinstance(dtypes, str) else np.dtype(dtypes)}")
    if array.ndim != len(shape) or any(want is not None and got != want for got, want in zip(array.shape, shape)):
        wanted = tuple("*" if size is None else size for size in shape)
        raise ModelFileDefect(f"{name} has shape {array.shape}; expected {wanted}")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise ModelFileDefect(f"{name} holds NaN or infinite values")
    return array


def take_state(contents: dict[str, np.ndarray], attribute: str) -> dict[str, np.ndarray]:
    """Pop the dict of arrays stored as ``<attribute>::<key>``: finite numbers, keyed by ``key``.

    Parameters
    ----------
    contents : dict of str to ndarray
        The arrays still unread.
    attribute : str
        The name the dict was written under.

    Returns
    -------
    state : dict of str to ndarray
    """
    prefix = attribute + _DICT_SEPARATOR
    state = {name[len(prefix) :]: contents.pop(name) for name in [n for n in contents if n.startswith(prefix)]}
    for key, array in state.items():
        if array.dtype.kind not in "fi" or (array.dtype.kind == "f" and not np.all(np.isfinite(array))):
            raise ModelFileDefect(f"{attribute}[{key!r}] must be finite numbers; got dtype {array.dtype}")
    return state


def take_value(values: dict[str, Any], name: str, check: Callable[[Any], bool], expected: str) -> Any:
    """Pop and decode JSON value ``name``; ``check(value)`` must hold (``expected`` describes it).

    Parameters
    ----------
    values : dict
        The encoded values still unread.
    name : str
        The value to take.
    check : callable
        Returns whether the decoded value is valid.
    expected : str
        What a valid value is, for the error message.

    Returns
    -------
    value : object
        The decoded value.
    """
    if name not in values:
        raise ModelFileDefect(f"the value {name!r} is missing")
    value = decode_value(values.pop(name), name)
    if not check(value):
        raise ModelFileDefect(f"{name} must be {expected}; got {short(value)}")
    return value


#: The package's types in a pickled or skops-saved estimator, to pass as skops' ``trusted``
#: (``skops.io.load(path, trusted=SKOPS_TRUSTED_TYPES)``) or MLflow's ``skops_trusted_types``
#: (``mlflow.sklearn.log_model(pipe, name="model", skops_trusted_types=SKOPS_TRUSTED_TYPES)``).
#: Everything else a fitted pipeline holds is numpy, dicts and lists, which skops trusts; the
#: fitted state never holds torch objects.
SKOPS_TRUSTED_TYPES = [
    "qpm_sklearn.classifier.QPMClassifier",
    "qpm_sklearn.embedding.Dinov2Embedder",
    "qpm_sklearn.embedding.PatchEmbedder",
]
