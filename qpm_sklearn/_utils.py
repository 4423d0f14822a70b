"""Torch-free helpers shared by the package: logging, progress bars and input validators.

The numpy-only modules (selection, glm, baselines, metrics) import from here, never from
``_device`` (the torch runtime), so that they stay usable without importing torch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from numbers import Integral
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from sklearn.utils._param_validation import Interval

__all__ = [
    "logger",
    "progress",
    "quiet_transformers",
    "StrictInterval",
    "check_int",
    "check_finite_array",
    "check_class_codes",
]

logger = logging.getLogger("qpm_sklearn")

_Item = TypeVar("_Item")


def progress(
    iterable: Iterable[_Item], *, verbose: int | bool, desc: str, total: int | None = None, unit: str = "it"
) -> Iterable[_Item]:
    """Wrap ``iterable`` in a tqdm bar when ``verbose`` (level 1 or more); return it unchanged otherwise."""
    if not verbose:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False)


@contextlib.contextmanager
def quiet_transformers(verbose: int | bool) -> Iterator[None]:
    """Silence transformers' logging and the hub's download bars unless verbose, then restore."""
    if verbose:
        yield
        return
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hub_bars = not hub_utils.are_progress_bars_disabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    hub_utils.disable_progress_bars()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
        if hub_bars:
            hub_utils.enable_progress_bars()


class StrictInterval(Interval):
    """scikit-learn's ``Interval`` constraint that refuses bools.

    ``True`` is an ``Integral`` (and a ``Real``) to Python, so ``Interval(Integral, 1, None)``
    accepts it as the size 1; a flag passed where a size belongs is a mistake worth an error.

    Examples
    --------
    >>> from numbers import Integral
    >>> StrictInterval(Integral, 1, None, closed="left").is_satisfied_by(True)
    False
    """

    def is_satisfied_by(self, val: object) -> bool:
        return not isinstance(val, (bool, np.bool_)) and super().is_satisfied_by(val)

    def __str__(self) -> str:
        return f"{super().__str__()} (not a bool)"


def check_int(value: object, name: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as a Python int in ``[low, high]``; bools and non-integers raise ``TypeError``.

    Examples
    --------
    >>> check_int(3, "n_selected", 1, 10)
    3
    >>> check_int(True, "n_selected")
    Traceback (most recent call last):
    ...
    TypeError: n_selected must be an int; got bool True.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}.")
    number = int(value)
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ValueError(f"{name} must be in {bounds}; got {number}.")
    return number


def check_finite_array(
    value: npt.ArrayLike, name: str, *, ndim: int | None = None, dtype: npt.DTypeLike = np.float64
) -> np.ndarray:
    """``value`` as a finite float array of ``dtype`` (and ``ndim`` dimensions when given).

    Examples
    --------
    >>> check_finite_array([[1, 2]], "F", ndim=2).dtype
    dtype('float64')
    >>> check_finite_array([1.0, float("nan")], "F")
    Traceback (most recent call last):
    ...
    ValueError: F must contain only finite values; got NaN or inf.
    """
    try:
        array = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numeric array; got {type(value).__name__}.") from exc
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array; got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must contain only finite values; got NaN or inf.")
    return array


def check_class_codes(
    y: npt.ArrayLike, n_samples: int, n_classes: int | None = None, name: str = "y"
) -> npt.NDArray[np.int64]:
    """``y`` as int64 class codes of shape ``(n_samples,)`` in ``[0, n_classes)``.

    ``n_classes`` defaults to ``max(y) + 1``.
    """
    labels = np.asarray(y)
    if labels.shape != (n_samples,):
        raise ValueError(f"{name} must have shape ({n_samples},); got shape {labels.shape}.")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class codes; got dtype {labels.dtype}.")
    if labels.size:
        high = int(labels.max()) + 1 if n_classes is None else int(n_classes)
        if labels.min() < 0 or labels.max() >= high:
            raise ValueError(
                f"{name} must be class codes in [0, {high}); got values in [{labels.min()}, {labels.max()}]."
            )
    return labels.astype(np.int64)
