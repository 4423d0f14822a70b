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
from sklearn.utils.validation import check_is_fitted

__all__ = [
    "logger",
    "progress",
    "quiet_transformers",
    "StrictInterval",
    "check_int",
    "check_finite_array",
    "check_class_codes",
    "check_sample_weight",
    "check_split_weights",
    "check_fitted",
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


def check_fitted(estimator: object) -> None:
    """Raise scikit-learn's ``NotFittedError`` when ``estimator`` is an unfitted estimator.

    An object without ``fit`` (a stand-in that only offers the fitted attributes a
    function reads) is taken as fitted. Functions that read a classifier's fitted
    state call this first, so that an unfitted model gets the error scikit-learn's
    own functions give rather than an ``AttributeError``.

    Parameters
    ----------
    estimator : object
        A classifier (or probe) whose fitted state the caller is about to read.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        When ``estimator`` has ``fit`` but is not fitted.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> check_fitted(LogisticRegression())  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ...
    sklearn.exceptions.NotFittedError: This LogisticRegression instance is not fitted yet.
    """
    if hasattr(estimator, "fit"):
        check_is_fitted(estimator)


# Training computes in float32: every positive weight, divided by the largest, must stay a
# normal float32 number (a smaller one would be flushed towards 0 and its sample silently lost).
_FLOAT32 = np.finfo(np.float32)


def check_sample_weight(sample_weight: npt.ArrayLike, n_samples: int, *, name: str = "sample_weight") -> np.ndarray:
    """``sample_weight`` as float64 of shape ``(n_samples,)``, checked for use in float32 training.

    Training divides the weights by the largest one and computes in float32 (only their
    ratios matter: every loss term is a weighted mean). So the weights must be finite,
    non-negative and not all zero, every positive weight must lie in float32's normal
    range (``1.2e-38`` to ``3.4e38``), and so must its ratio to the largest weight;
    anything else would overflow to inf or silently round a sample's weight to zero.

    Parameters
    ----------
    sample_weight : array-like of shape (n_samples,)
    n_samples : int
    name : str, default="sample_weight"
        How errors call the weights (e.g. ``"sample_weight times class_weight"``).

    Returns
    -------
    sample_weight : ndarray of shape (n_samples,), float64

    Raises
    ------
    ValueError
        For a wrong shape, a negative, non-finite or out-of-range value, or weights that are all zero.

    Examples
    --------
    >>> check_sample_weight([1.0, 0.0, 2.5], 3).tolist()
    [1.0, 0.0, 2.5]
    >>> check_sample_weight([1.0, 1e50], 2)
    Traceback (most recent call last):
    ...
    ValueError: sample_weight holds weights up to 1e+50, beyond float32's largest number (3.4e+38), the dtype training computes in. Only their ratios matter: divide them all by a common factor.
    """
    weight = check_finite_array(sample_weight, name, ndim=1)
    if weight.shape != (n_samples,):
        raise ValueError(f"{name} must hold one weight per sample ({n_samples}); got shape {weight.shape}.")
    if (weight < 0).any():
        raise ValueError(f"{name} must be non-negative; got {weight.min():.3g} (sample {int(weight.argmin())}).")
    positive = weight[weight > 0]
    if positive.size == 0:
        raise ValueError(f"{name} is zero for every sample; nothing would be learned.")
    largest, smallest = float(positive.max()), float(positive.min())
    if largest > float(_FLOAT32.max):
        raise ValueError(
            f"{name} holds weights up to {largest:.3g}, beyond float32's largest number ({_FLOAT32.max:.2g}), the "
            "dtype training computes in. Only their ratios matter: divide them all by a common factor."
        )
    if smallest < float(_FLOAT32.tiny):
        raise ValueError(
            f"{name} holds positive weights as small as {smallest:.3g}, below float32's smallest normal number "
            f"({_FLOAT32.tiny:.2g}), the dtype training computes in. Only their ratios matter: multiply them all by "
            "a common factor, or set negligible ones to 0."
        )
    if smallest / largest < float(_FLOAT32.tiny):
        raise ValueError(
            f"{name} holds positive weights as small as {smallest / largest:.3g} times the largest ({largest:.3g}), "
            f"which float32 (the dtype training computes in) cannot hold (its smallest normal number is "
            f"{_FLOAT32.tiny:.2g}): they would count as 0. Set them to 0, or raise them."
        )
    return weight


def check_split_weights(sample_weight: np.ndarray | None, train_rows: np.ndarray, validation_rows: np.ndarray) -> None:
    """Refuse an early-stopping split in which the training or the held-out rows all weigh zero.

    The validation score is a weighted mean over the held-out rows (0/0 when they all
    weigh 0) and training needs a positive weight to learn from.

    Parameters
    ----------
    sample_weight : ndarray of shape (n,) or None
        The weights of all samples (None: unweighted, nothing to check).
    train_rows, validation_rows : ndarray of int
        The rows of the two parts.

    Raises
    ------
    ValueError
        Naming ``sample_weight`` and ``early_stopping``.

    Examples
    --------
    >>> check_split_weights(np.array([1.0, 0.0, 0.0]), np.array([0]), np.array([1, 2]))
    Traceback (most recent call last):
    ...
    ValueError: early_stopping: all 2 held-out validation samples have sample_weight 0, so the validation score is undefined; give some of them a positive weight, change validation_fraction or random_state, or turn early_stopping off.
    """
    if sample_weight is None:
        return
    weight = np.asarray(sample_weight)
    for rows, what in ((validation_rows, "held-out validation"), (train_rows, "training")):
        if not np.any(weight[rows] > 0):
            consequence = (
                "so the validation score is undefined" if what != "training" else "so nothing would be learned"
            )
            raise ValueError(
                f"early_stopping: all {len(rows)} {what} samples have sample_weight 0, {consequence}; give some of "
                "them a positive weight, change validation_fraction or random_state, or turn early_stopping off."
            )
