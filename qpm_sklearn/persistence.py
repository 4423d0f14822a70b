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

Loading executes no code and checks the file as ``fit`` checks its inputs: the
parameters go through the estimator's ``_validate_params`` (after ``set_params``) and
its budget checks; the fitted attributes must be exactly those the schema below lists
(an unknown name is refused, never ``setattr``), with the declared dtypes and shapes
consistent with each other and with the parameters; the network states are loaded,
strictly, into networks built from the parameters. Any defect raises one
``ValueError`` naming the file and what is wrong. Writing is atomic (a uniquely named
temporary file in the same folder, fsynced, then ``os.replace``), so a failed save
leaves the previous file intact.
"""

from __future__ import annotations

import json
import numbers
import os
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from ._atomic import replace_atomically

if TYPE_CHECKING:
    from . import classifier

_Classifier = TypeVar("_Classifier", bound="classifier.QPMClassifier")

FORMAT_VERSION = 2
_META = "__meta__.json"
_DICT_SEPARATOR = "::"
_META_KEYS = {"format_version", "library_version", "estimator", "params", "values"}

# The fitted state of QPMClassifier, by how it is stored: arrays, dicts of arrays
# (network states, checked by loading them into networks built from the parameters),
# and JSON values. ``assignment_`` is derived from ``sparse_weight_``: written for
# readers of the file, checked, never set.
_ARRAYS = ("classes_", "selected_features_", "sparse_weight_", "sparse_bias_", "feature_mean_", "feature_std_")
_STATES = ("dense_mlp_state_", "dense_head_state_", "sparse_mlp_state_")
_VALUES = ("n_features_in_", "selection_info_", "history_")
_OPTIONAL_VALUES = ("feature_names_in_",)
_DERIVED = ("assignment_",)


class _Defect(Exception):
    """What is wrong with a model file; load turns it into one ValueError naming the file."""


# --------------------------------------------------------------------------------------------
# Exact JSON for parameters and fitted values
# --------------------------------------------------------------------------------------------


def _encode(value, name: str):
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
        return {"__tuple__": [_encode(item, name) for item in value]}
    if isinstance(value, list):
        return [_encode(item, name) for item in value]
    if isinstance(value, dict):
        return {"__dict__": [[_encode(key, name), _encode(item, f"{name}[{key!r}]")] for key, item in value.items()]}
    raise TypeError(
        f"save() cannot store {name}={value!r} (a {type(value).__name__}) in a model file without pickle; "
        "use numbers, strings, lists, tuples, dicts, numpy scalars or arrays, or a RandomState."
    )


def _decode(value, name: str):
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, list):
        return [_decode(item, name) for item in value]
    if not isinstance(value, dict) or len(value) not in (1, 2):
        raise _Defect(f"{name} is not a stored value: {_short(value)}")
    if set(value) == {"__numpy__", "value"}:
        try:
            dtype = np.dtype(value["__numpy__"])
            if dtype.kind not in "biufU":
                raise TypeError(dtype)
            return dtype.type(value["value"])
        except (TypeError, ValueError, OverflowError):
            raise _Defect(f"{name} is not a valid numpy scalar: {_short(value)}") from None
    if set(value) == {"__ndarray__", "value"}:
        try:
            dtype = np.dtype(value["__ndarray__"])
            if dtype.kind not in "biufU":
                raise TypeError(dtype)
            return np.asarray(value["value"], dtype=dtype)
        except (TypeError, ValueError, OverflowError):
            raise _Defect(f"{name} is not a valid numpy array: {_short(value)}") from None
    if set(value) == {"__tuple__"} and isinstance(value["__tuple__"], list):
        return tuple(_decode(item, name) for item in value["__tuple__"])
    if set(value) == {"__dict__"} and isinstance(value["__dict__"], list):
        items = value["__dict__"]
        if not all(isinstance(item, list) and len(item) == 2 for item in items):
            raise _Defect(f"{name} is not a stored dict: {_short(value)}")
        keys = [_decode(key, name) for key, _ in items]
        if not all(isinstance(key, (str, int, float, bool, np.generic, tuple)) or key is None for key in keys):
            raise _Defect(f"{name} has a dict key that is not hashable: {_short(value)}")
        return {key: _decode(item, f"{name}[{key!r}]") for key, (_, item) in zip(keys, items)}
    if set(value) == {"__torch_device__"} and isinstance(value["__torch_device__"], str):
        import torch

        try:
            return torch.device(value["__torch_device__"])
        except (RuntimeError, ValueError):
            raise _Defect(f"{name} is not a valid torch device: {_short(value)}") from None
    if set(value) == {"__random_state__"}:
        try:
            kind, keys, position, has_gauss, gauss = value["__random_state__"]
            state = np.random.RandomState()
            state.set_state((kind, np.asarray(keys, dtype=np.uint32), int(position), int(has_gauss), float(gauss)))
            return state
        except (TypeError, ValueError, OverflowError):
            raise _Defect(f"{name} is not a valid RandomState state") from None
    raise _Defect(f"{name} is not a stored value: {_short(value)}")


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def _storable_classes(classes: np.ndarray) -> np.ndarray:
    if classes.dtype.kind in "biufU":
        return classes
    if classes.dtype == object and all(isinstance(c, str) for c in classes):
        return classes.astype(str)
    raise TypeError(
        "save() stores class labels that are numbers or strings; classes_ holds "
        f"{sorted({type(c).__name__ for c in classes})}. Use pickle/joblib for such a model."
    )


def save_estimator(estimator: classifier.QPMClassifier, path: str | os.PathLike[str]) -> Path:
    """Write a fitted estimator's parameters and fitted state to ``path`` (``.npz``), atomically."""
    from . import __version__

    name = type(estimator).__name__
    state = vars(estimator)
    declared = set(_ARRAYS) | set(_STATES) | set(_VALUES) | set(_OPTIONAL_VALUES)
    undeclared = sorted(k for k in state if k.endswith("_") and not k.startswith("_") and k not in declared)
    if undeclared:
        raise TypeError(f"save(): {name} has fitted attributes {undeclared} that format version {FORMAT_VERSION} does not declare.")
    arrays = {"classes_": _storable_classes(np.asarray(estimator.classes_))}
    arrays.update({attribute: np.asarray(getattr(estimator, attribute)) for attribute in _ARRAYS[1:] + _DERIVED})
    for attribute in _STATES:
        for key, array in getattr(estimator, attribute).items():
            arrays[f"{attribute}{_DICT_SEPARATOR}{key}"] = np.asarray(array)
    values = {attribute: _encode(getattr(estimator, attribute), attribute) for attribute in _VALUES}
    if "feature_names_in_" in state:
        values["feature_names_in_"] = [str(feature) for feature in estimator.feature_names_in_]
    params = estimator.get_params(deep=False)
    params["memory"] = None  # a cache location belongs to a machine, not to the model (see the module doc)
    meta = {
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "estimator": name,
        "params": {key: _encode(value, key) for key, value in params.items()},
        "values": values,
    }
    arrays[_META] = np.array(json.dumps(meta))
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    # mypy would also match **arrays to savez's allow_pickle (no key is that name).
    return replace_atomically(path, lambda handle: np.savez(handle, **arrays))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_estimator(cls: type[_Classifier], path: str | os.PathLike[str]) -> _Classifier:
    """Rebuild an estimator of class ``cls`` from a file written by :func:`save_estimator`.

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
        contents = _read_archive(path, cls)
        meta = _read_meta(contents.pop(_META, None), cls)
        estimator = _estimator_from_params(cls, meta["params"])
        fitted = _check_fitted_state(estimator, contents, meta["values"])
    except RecursionError:
        raise ValueError(f"{str(path)!r} is not a valid {cls.__name__} model file: its JSON is nested too deeply") from None
    except _Defect as defect:
        raise ValueError(f"{str(path)!r} is not a valid {cls.__name__} model file: {defect}") from None
    vars(estimator).update(fitted)
    return estimator


def _read_archive(path: Path, cls) -> dict:
    not_ours = f"not a file written by {cls.__name__}.save()"
    if path.stat().st_size == 0:
        raise _Defect(f"{not_ours}: the file is empty")
    try:
        archive = np.load(path, allow_pickle=False)
    except ValueError:  # numpy's last guess, a pickle, is refused
        raise _Defect(f"{not_ours}: neither an .npz archive nor an .npy array") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise _Defect(f"{not_ours} (unreadable archive: {exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise _Defect(f"{not_ours}: a single .npy array, not an archive")
    contents = {}
    with archive:
        for name in archive.files:
            try:
                contents[name] = archive[name]
            except ValueError as exc:
                if "allow_pickle" in str(exc):
                    raise _Defect(f"{name!r} is an object array (pickled data), which this format never holds") from None
                raise _Defect(f"{name!r} is unreadable ({exc})") from None
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as exc:
                raise _Defect(f"{not_ours} ({name!r} is unreadable: {exc})") from None
    return contents


def _read_meta(raw, cls) -> dict:
    if raw is None:
        raise _Defect(f"not a file written by {cls.__name__}.save() (no {_META})")
    if raw.dtype.kind != "U" or raw.shape != ():
        raise _Defect(f"{_META} must be a 0-d unicode array; got dtype {raw.dtype}, shape {raw.shape}")
    try:
        meta = json.loads(str(raw))
    except ValueError as exc:
        raise _Defect(f"{_META} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise _Defect(f"{_META} must hold a JSON object; got a {type(meta).__name__}")
    version = meta.get("format_version")
    if version != FORMAT_VERSION or type(version) is not int:
        raise _Defect(
            f"written by qpm_sklearn {meta.get('library_version')} in format version {version!r}; this "
            f"version of qpm_sklearn reads format version {FORMAT_VERSION} only. Refit the model or load it "
            "with the version that wrote it"
        )
    if set(meta) != _META_KEYS:
        raise _Defect(f"{_META} must have the keys {sorted(_META_KEYS)}; got {sorted(meta)}")
    if meta["estimator"] != cls.__name__:
        raise _Defect(f"it holds a {meta['estimator']!r}, not a {cls.__name__}")
    for key in ("params", "values"):
        if not isinstance(meta[key], dict):
            raise _Defect(f"{_META}[{key!r}] must be a JSON object; got a {type(meta[key]).__name__}")
    return meta


def _estimator_from_params(cls, stored: dict):
    estimator = cls()
    expected = set(estimator.get_params(deep=False))
    if set(stored) != expected:
        missing, unknown = sorted(expected - set(stored)), sorted(set(stored) - expected)
        raise _Defect(f"the parameters do not match {cls.__name__}'s: missing {missing}, unknown {unknown}")
    params = {key: _decode(value, f"parameter {key!r}") for key, value in stored.items()}
    if params["memory"] is not None:
        raise _Defect(f"parameter 'memory' must be null in a model file (it is never saved); got {params['memory']!r}")
    try:
        estimator.set_params(**params)
        estimator._validate_params()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "ignored with selection=..." is no defect of the file
            estimator._solver_options()
    except (ValueError, TypeError) as exc:
        raise _Defect(f"invalid parameters: {exc}") from None
    return estimator


def _array(contents: dict, name: str, dtypes, shape: tuple) -> np.ndarray:
    """Pop array ``name``: its dtype kind in ``dtypes`` (a string of kinds) or equal to it (a dtype)."""
    if name not in contents:
        raise _Defect(f"the array {name!r} is missing")
    array = contents.pop(name)
    if array.dtype.kind not in dtypes if isinstance(dtypes, str) else array.dtype != dtypes:
        raise _Defect(f"{name} has dtype {array.dtype}; expected {dtypes if isinstance(dtypes, str) else np.dtype(dtypes)}")
    if array.ndim != len(shape) or any(want is not None and got != want for got, want in zip(array.shape, shape)):
        wanted = tuple("*" if size is None else size for size in shape)
        raise _Defect(f"{name} has shape {array.shape}; expected {wanted}")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise _Defect(f"{name} holds NaN or infinite values")
    return array


def _state(contents: dict, attribute: str, build) -> dict:
    prefix = attribute + _DICT_SEPARATOR
    state = {name[len(prefix) :]: contents.pop(name) for name in [n for n in contents if n.startswith(prefix)]}
    for key, array in state.items():
        if array.dtype.kind not in "fi" or (array.dtype.kind == "f" and not np.all(np.isfinite(array))):
            raise _Defect(f"{attribute}[{key!r}] must be finite numbers; got dtype {array.dtype}")
    from .adapter import empty_network, load_network_state

    try:
        load_network_state(empty_network(build), state)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise _Defect(f"{attribute} does not fit the network the parameters describe: {exc}") from None
    return state


def _value(values: dict, name: str, check, expected: str):
    if name not in values:
        raise _Defect(f"the value {name!r} is missing")
    value = _decode(values.pop(name), name)
    if not check(value):
        raise _Defect(f"{name} must be {expected}; got {_short(value)}")
    return value


def _check_fitted_state(estimator, contents: dict, values: dict) -> dict:
    """The fitted attributes of the file, checked against the schema and the parameters."""
    from .adapter import DenseHead, SparseHead, TokenMLP

    values = dict(values)
    fitted = {}

    def is_count(value):
        return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)) and value >= 1

    def is_records(value):
        return isinstance(value, list) and all(isinstance(row, dict) for row in value)

    n_in = fitted["n_features_in_"] = _value(values, "n_features_in_", is_count, "a positive int")
    fitted["selection_info_"] = _value(values, "selection_info_", lambda v: isinstance(v, dict), "a dict")
    fitted["history_"] = _value(values, "history_", is_records, "a list of dicts")
    if "feature_names_in_" in values:
        names = values.pop("feature_names_in_")
        if not (isinstance(names, list) and len(names) == n_in and all(type(n) is str for n in names)):
            raise _Defect(f"feature_names_in_ must be a list of {n_in} strings; got {_short(names)}")
        fitted["feature_names_in_"] = np.asarray(names, dtype=object)
    if values:
        raise _Defect(f"unexpected values {sorted(values)}: format version {FORMAT_VERSION} does not declare them")

    classes = fitted["classes_"] = _array(contents, "classes_", "biufU", (None,))
    if len(classes) < 2 or not np.array_equal(classes, np.unique(classes)):
        raise _Defect(f"classes_ must be at least 2 distinct labels in sorted order; got {_short(classes.tolist())}")
    n_classes, p = len(classes), estimator.get_params(deep=False)
    try:
        estimator._check_budgets(n_classes)
    except ValueError as exc:
        raise _Defect(f"invalid parameters: {exc}") from None
    selected = fitted["selected_features_"] = _array(contents, "selected_features_", np.int64, (None,))
    n_selected = len(selected)
    if n_selected == 0 or np.any(np.diff(selected) <= 0) or selected[0] < 0 or selected[-1] >= p["n_features"]:
        raise _Defect(f"selected_features_ must be increasing channel ids in [0, n_features={p['n_features']})")
    weight = fitted["sparse_weight_"] = _array(contents, "sparse_weight_", np.float32, (n_classes, n_selected))
    fitted["sparse_bias_"] = _array(contents, "sparse_bias_", np.float32, (n_classes,))
    fitted["feature_mean_"] = _array(contents, "feature_mean_", np.float32, (n_selected,))
    fitted["feature_std_"] = _array(contents, "feature_std_", np.float32, (n_selected,))
    if np.any(fitted["feature_std_"] < 0):
        raise _Defect("feature_std_ holds negative values")
    if p["selection"] == "qpm":
        ones = weight != 0
        if n_selected != p["n_selected"] or np.any(weight[ones] != 1) or np.any(ones.sum(axis=1) != p["n_per_class"]):
            raise _Defect(
                f"with selection='qpm' the sparse head must be 0/1 with n_per_class={p['n_per_class']} ones per "
                f"class over n_selected={p['n_selected']} features; got shape {weight.shape}"
            )
    assignment = _array(contents, "assignment_", "iub", (n_classes, n_selected))
    if not np.array_equal(assignment, weight != 0):
        raise _Defect("assignment_ does not match the non-zeros of sparse_weight_")
    try:
        SparseHead(weight, fitted["feature_mean_"], fitted["feature_std_"], bias=fitted["sparse_bias_"])
    except (ValueError, TypeError) as exc:
        raise _Defect(str(exc)) from None

    def mlp():
        return TokenMLP(n_in, p["hidden_size"], p["n_features"], p["n_layers"])

    fitted["dense_mlp_state_"] = _state(contents, "dense_mlp_state_", mlp)
    fitted["sparse_mlp_state_"] = _state(contents, "sparse_mlp_state_", mlp)
    fitted["dense_head_state_"] = _state(contents, "dense_head_state_", lambda: DenseHead(p["n_features"], n_classes))
    if contents:
        raise _Defect(f"unexpected entries {sorted(contents)}: format version {FORMAT_VERSION} does not declare them")
    return fitted
