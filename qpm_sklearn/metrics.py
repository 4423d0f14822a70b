"""Interpretability metrics of the paper's table (docs/method.md#metrics), on plain arrays.

Every metric is a fraction in [0, 1]; the paper reports them multiplied by 100.

* :func:`sid_at_k` - spatial diversity of the maps of the predicted class's top-k features.
* :func:`class_independence` - no feature's mass is concentrated in a single class.
* :func:`contrastiveness` - every feature is bimodal (on/off), 1 - mean Gaussian overlap.
* :func:`correlation` - redundancy: mean over features of their largest cosine to another feature.
* :func:`plausibility` - share of the class evidence map (GradCAM-like) on the object mask.
* :func:`evaluate` - the paper's table row for a fitted :class:`~qpm_sklearn.QPMClassifier`.
* :func:`evaluate_linear_probe` - the same row for a linear probe on CLS embeddings (docs/baselines.md).
* :func:`part_alignment` - where each feature's strongest images peak, against annotated keypoints.
* :func:`suggest_feature_names` - names for the features that align with one part.

Shapes: maps ``(n, K, h, w)``; ``weights`` ``(n, K)`` hold for every image the head-weight row of
its predicted class restricted to the used features (``V_u[c_hat_i]`` in docs/method.md#metrics); train features
``F`` ``(n_train, K)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from numbers import Integral
from statistics import NormalDist
from typing import Any, Literal, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.utils import check_random_state

from ._masks import Masks as _Masks
from ._masks import resize_masks
from ._utils import check_finite_array, check_fitted
from .explanation import evidence_map

__all__ = [
    "sid_at_k",
    "class_independence",
    "contrastiveness",
    "correlation",
    "plausibility",
    "resize_masks",
    "evaluate",
    "evaluate_linear_probe",
    "part_alignment",
    "suggest_feature_names",
]

# Images whose maps are evaluated at once (bounds memory for dense heads / raw patch tokens).
_CHUNK = 128

# Object masks: an (n, H, W) array or a sequence of n 2-D arrays (sizes may differ).


class _FittedQPM(Protocol):
    """What :func:`evaluate` reads of a fitted QPM classifier (a torch-free stand-in for QPMClassifier)."""

    classes_: np.ndarray

    def predict(self, X: npt.ArrayLike, stage: Literal["sparse", "dense"] = ...) -> np.ndarray: ...

    def feature_maps(self, X: npt.ArrayLike, stage: Literal["sparse", "dense"] = ...) -> np.ndarray: ...

    def pooled_features(self, X: npt.ArrayLike, stage: Literal["sparse", "dense"] = ...) -> np.ndarray: ...

    def class_weights(self, stage: Literal["sparse", "dense"] = ...) -> np.ndarray: ...


# ---------------------------------------------------------------------------------------------
# input checks


def _check_maps_weights(maps: npt.ArrayLike, weights: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    maps = check_finite_array(maps, "maps", ndim=4)
    weights = check_finite_array(weights, "weights", ndim=2)
    if weights.shape != maps.shape[:2]:
        raise ValueError(
            f"weights must have shape (n, K) = {maps.shape[:2]} matching maps (n, K, h, w); got {weights.shape}."
        )
    if maps.shape[0] == 0:
        raise ValueError("maps must hold at least one image; got n = 0.")
    return maps, weights


def _check_features(F: npt.ArrayLike) -> np.ndarray:
    F = check_finite_array(F, "F", ndim=2)
    if F.shape[0] < 2 or F.shape[1] < 1:
        raise ValueError(f"F must have at least 2 samples and 1 feature; got shape {F.shape}.")
    return F


# ---------------------------------------------------------------------------------------------
# SID@k (docs/method.md#sid)


def _sid_per_image(maps: np.ndarray, weights: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image ``(1/k) sum_p max_{j in T_k} P_ij(p)`` and the mask of images that count."""
    n, K = weights.shape
    # Stable sort: among tied weights (binary heads with more than k ones) the lowest ids win.
    top = np.argsort(-weights, axis=1, kind="stable")[:, : min(k, K)]
    chosen = np.take_along_axis(maps.reshape(n, K, -1), top[:, :, None], axis=1)  # (n, k, P)
    scale = np.maximum(np.abs(chosen).mean(axis=2, keepdims=True), 1e-5)
    logits = chosen / scale
    logits -= logits.max(axis=2, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=2, keepdims=True)
    values = probs.max(axis=1).sum(axis=1) / k
    counts = np.count_nonzero(weights, axis=1) >= k
    return values, counts


def sid_at_k(maps: npt.ArrayLike, weights: npt.ArrayLike, k: int = 5) -> float:
    """Spatial diversity SID@k of the predicted class's k top-weighted feature maps (docs/method.md#sid).

    Each map is divided by its mean magnitude (at least 1e-5) and turned into a distribution over
    positions with a softmax; the k features with the largest (signed) weight of the predicted
    class are taken, and the score is ``(1/k) sum_p max_j P_j(p)``, averaged over the images whose
    weight row has at least k non-zero entries. Ties: among equal weights the lower column
    (feature id) is taken first; the authors' ``torch.topk`` leaves that order unspecified.

    Parameters
    ----------
    maps : array-like of shape (n, K, h, w)
        Raw feature maps.
    weights : array-like of shape (n, K)
        For every image the head-weight row of its predicted class.
    k : int, default=5
        Number of features compared.

    Returns
    -------
    float
        In ``[1/k, 1]``: 1 when the k maps put all their mass on disjoint positions.

    Raises
    ------
    ValueError
        When no image's weight row has ``k`` non-zero entries (SID@k is undefined).

    Examples
    --------
    >>> import numpy as np
    >>> from qpm_sklearn.metrics import sid_at_k
    >>> maps = np.zeros((1, 2, 1, 2)); maps[0, 0, 0, 0] = maps[0, 1, 0, 1] = 100.0
    >>> round(sid_at_k(maps, np.ones((1, 2)), k=2), 3)  # e^2 / (1 + e^2): maps scaled by their mean
    0.881
    """
    if not isinstance(k, Integral) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}.")
    maps, weights = _check_maps_weights(maps, weights)
    values, counts = _sid_per_image(maps, weights, int(k))
    if not counts.any():
        raise ValueError(f"k={k}: no image's predicted class has at least {k} non-zero weights; SID@{k} is undefined.")
    return float(values[counts].mean())


# ---------------------------------------------------------------------------------------------
# train-feature metrics (docs/method.md#metrics)


def class_independence(F: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Class-Independence (docs/method.md#class-independence): ``1 - mean_j max_c S_cj / T_j``.

    ``F0 = F - min_i F`` per feature, ``S_cj`` = sum of ``F0[:, j]`` over the samples of class c,
    ``T_j`` = its sum over all samples (at least 1e-8).

    Parameters
    ----------
    F : array-like of shape (n_samples, K)
        Raw pooled features of the training set.
    y : array-like of shape (n_samples,)
        Ground-truth labels (any type).

    Returns
    -------
    float
        High when no feature's mass is concentrated in one class.

    Examples
    --------
    >>> from qpm_sklearn.metrics import class_independence
    >>> class_independence([[1, 1], [1, 0], [0, 1]], ["a", "a", "b"])
    0.25
    """
    F = _check_features(F)
    y = np.asarray(y)
    if y.shape != (F.shape[0],):
        raise ValueError(f"y must have shape ({F.shape[0]},) matching F; got {y.shape}.")
    shifted = F - F.min(axis=0)
    _, codes = np.unique(y, return_inverse=True)
    per_class = np.zeros((codes.max() + 1, F.shape[1]))
    np.add.at(per_class, codes, shifted)
    total = np.maximum(shifted.sum(axis=0), 1e-8)
    return float(1.0 - np.mean(per_class.max(axis=0) / total))


def contrastiveness(F: npt.ArrayLike, random_state: int | np.random.RandomState | None = None) -> float:
    """Contrastiveness (docs/method.md#contrastiveness): ``1 - mean_j OVL_j``.

    For every feature a two-component 1-D Gaussian mixture (scikit-learn defaults) is fitted to its
    values; ``OVL_j`` is the overlapping coefficient of the two component Gaussians (mixture weights
    ignored). A constant feature has two identical components (``OVL = 1``).

    Parameters
    ----------
    F : array-like of shape (n_samples, K)
        Raw pooled features of the training set.
    random_state : int, RandomState instance or None, default=None
        Seeds the mixtures' k-means initialisation (one seed drawn per feature).

    Returns
    -------
    float
        1 when every feature is perfectly bimodal (on/off), 0 when no feature separates.

    Examples
    --------
    >>> import numpy as np
    >>> from qpm_sklearn.metrics import contrastiveness
    >>> F = np.r_[np.zeros(50), np.full(50, 10.0)][:, None] + np.random.default_rng(0).normal(0, 0.1, (100, 1))
    >>> contrastiveness(F, random_state=0) > 0.99
    True
    """
    F = _check_features(F)
    rng = check_random_state(random_state)
    seeds = rng.randint(0, 2**31 - 1, size=F.shape[1])
    overlaps = np.ones(F.shape[1])
    for j, seed in enumerate(seeds):
        column = F[:, j : j + 1]
        if np.ptp(column) == 0:
            continue
        with warnings.catch_warnings():
            # Few distinct values make k-means/EM warn; the fitted components are still valid.
            warnings.simplefilter("ignore", ConvergenceWarning)
            mixture = GaussianMixture(n_components=2, random_state=int(seed)).fit(column)
        means = mixture.means_.ravel()
        sigmas = np.sqrt(mixture.covariances_.ravel())
        overlaps[j] = NormalDist(means[0], sigmas[0]).overlap(NormalDist(means[1], sigmas[1]))
    return float(1.0 - overlaps.mean())


def correlation(F: npt.ArrayLike) -> float:
    """Correlation (docs/method.md#correlation-metric): mean over features of the largest uncentred cosine to another feature.

    ``K_jl = <F_j, F_l> / (max(|F_j|, 1e-8) max(|F_l|, 1e-8))`` with a zero diagonal; the result is
    ``mean_j max_l K_jl`` (lower = less redundant; 0 for a single feature).

    Parameters
    ----------
    F : array-like of shape (n_samples, K)
        Raw pooled features of the training set.

    Returns
    -------
    float

    Examples
    --------
    >>> from qpm_sklearn.metrics import correlation
    >>> round(correlation([[1, 0, 1], [0, 1, 1]]), 4)
    0.7071
    """
    F = _check_features(F)
    norms = np.maximum(np.linalg.norm(F, axis=0), 1e-8)
    cosine = (F.T @ F) / np.outer(norms, norms)
    np.fill_diagonal(cosine, 0.0)
    return float(cosine.max(axis=1).mean())


# ---------------------------------------------------------------------------------------------
# Plausibility (docs/method.md#plausibility)


def _plausibility_per_image(maps: np.ndarray, weights: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per-image ``sum_p G m / sum_p G`` with ``G = sum_j w_j M_j - min`` (0 where ``sum G = 0``)."""
    gradcam = evidence_map(weights, maps)
    gradcam -= gradcam.min(axis=(1, 2), keepdims=True)
    total = gradcam.sum(axis=(1, 2))
    inside = (gradcam * masks).sum(axis=(1, 2))
    return np.divide(inside, total, out=np.zeros_like(total), where=total > 0)


def plausibility(maps: npt.ArrayLike, weights: npt.ArrayLike, masks: _Masks, dilate: bool = True) -> float:
    """Plausibility (docs/method.md#plausibility): share of the class evidence map that lies on the object mask.

    ``G = sum_j w_j M_j`` (the predicted class's weights on the raw maps), shifted so that its
    minimum is 0; the score of an image is ``sum_p G(p) m(p) / sum_p G(p)`` (0 when ``G`` is
    constant), averaged over all images. With ``dilate=True`` (the paper's "Plausibility",
    ``gradcam_dilated``) the mask is dilated by one grid cell first.

    Parameters
    ----------
    maps : array-like of shape (n, K, h, w)
        Raw feature maps.
    weights : array-like of shape (n, K)
        For every image the head-weight row of its predicted class (signed for dense heads).
    masks : array-like of shape (n, H, W) or sequence of n 2-D arrays
        Object masks at image or grid resolution; see :func:`resize_masks`.
    dilate : bool, default=True
        Dilate the grid masks with a 3x3 square (``gradcam_dilated``); ``False`` gives ``gradcam``.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> from qpm_sklearn.metrics import plausibility
    >>> maps = np.zeros((1, 1, 1, 4)); maps[0, 0, 0] = [0, 3, 1, 0]
    >>> plausibility(maps, np.ones((1, 1)), np.array([[[0, 1, 0, 0]]]), dilate=False)
    0.75
    """
    maps, weights = _check_maps_weights(maps, weights)
    if len(masks) != maps.shape[0]:
        raise ValueError(f"masks must hold one mask per image ({maps.shape[0]}); got {len(masks)}.")
    grid_masks = resize_masks(masks, maps.shape[2:], dilate=dilate)
    return float(_plausibility_per_image(maps, weights, grid_masks).mean())


# ---------------------------------------------------------------------------------------------
# table rows


def _class_codes(classes, labels, name):
    """Positions of ``labels`` in ``classes`` (ValueError naming ``name`` for unknown labels)."""
    classes = np.asarray(classes)
    labels = np.asarray(labels)
    order = np.argsort(classes, kind="stable")
    position = np.searchsorted(classes[order], labels)
    position = np.clip(position, 0, len(classes) - 1)
    found = classes[order][position] == labels
    if not np.all(found):
        raise ValueError(f"{name} holds labels that are not among the classes: {np.unique(labels[~found])[:5]}.")
    return order[position]


def _table_row(
    predicted: np.ndarray,
    y: np.ndarray,
    weight_matrix: np.ndarray,
    predicted_codes: np.ndarray,
    maps_of: Callable[[int, int], npt.ArrayLike],
    masks: _Masks | None,
    train_features: npt.ArrayLike,
    y_train: npt.ArrayLike,
    random_state: int | np.random.RandomState | None,
) -> dict[str, float]:
    """The shared body of :func:`evaluate` and :func:`evaluate_linear_probe`.

    ``maps_of(start, stop)`` returns the maps ``(m, K, h, w)`` of the images ``start:stop`` on all
    K columns of ``weight_matrix`` (C, K); the unused columns (all-zero weights) are dropped here.
    """
    used = np.any(weight_matrix != 0, axis=0)
    if not used.any():
        raise ValueError("the classifier has no feature with a non-zero weight; the metrics are undefined.")
    rows = weight_matrix[predicted_codes][:, used]
    n = len(predicted_codes)
    if masks is not None and len(masks) != n:
        raise ValueError(f"masks must hold one mask per test sample ({n}); got {len(masks)}.")
    value_chunks: list[np.ndarray] = []
    count_chunks: list[np.ndarray] = []
    plausible: list[np.ndarray] = []
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        maps, chunk_rows = _check_maps_weights(np.asarray(maps_of(start, stop))[:, used], rows[start:stop])
        values, counts = _sid_per_image(maps, chunk_rows, 5)
        value_chunks.append(values)
        count_chunks.append(counts)
        if masks is not None:
            grid_masks = resize_masks(masks[start:stop], maps.shape[2:], dilate=True)
            plausible.append(_plausibility_per_image(maps, chunk_rows, grid_masks))
    row = {"Accuracy": float(np.mean(np.asarray(predicted) == np.asarray(y)))}
    if masks is not None:
        row["Plausibility"] = float(np.concatenate(plausible).mean())
    sid_values, sid_counts = np.concatenate(value_chunks), np.concatenate(count_chunks)
    if sid_counts.any():
        row["SID@5"] = float(sid_values[sid_counts].mean())
    else:
        warnings.warn(
            "SID@5 is left out: no predicted class has 5 features with a non-zero weight.", UserWarning, stacklevel=3
        )
    F = np.asarray(train_features, dtype=np.float64)[:, used]
    row["Class-Independence"] = class_independence(F, y_train)
    row["Contrastiveness"] = contrastiveness(F, random_state=random_state)
    row["Correlation"] = correlation(F)
    return row


def _check_train_split(X_train, y_train, X, y, names):
    if (X_train is None) != (y_train is None):
        raise ValueError(f"{names[0]} and {names[1]} must be given together; got only one of them.")
    return (X, y) if X_train is None else (X_train, y_train)


def evaluate(
    estimator: _FittedQPM,
    X: npt.ArrayLike,
    y: npt.ArrayLike,
    masks: _Masks | None = None,
    X_train: npt.ArrayLike | None = None,
    y_train: npt.ArrayLike | None = None,
    stage: Literal["sparse", "dense"] = "sparse",
    random_state: int | np.random.RandomState | None = None,
) -> dict[str, float]:
    """The paper's table row (docs/method.md#metrics) for a fitted QPM classifier.

    Parameters
    ----------
    estimator : fitted QPMClassifier
        Read through ``predict(X, stage=)``, ``feature_maps(X, stage=)``,
        ``pooled_features(X, stage=)``, ``class_weights(stage=)`` and ``classes_``.
    X : array-like
        Test inputs (patch grids) in any form the estimator accepts.
    y : array-like of shape (n,)
        Test labels.
    masks : array-like of shape (n, H, W) or sequence of 2-D arrays, default=None
        Object masks of the test images (image or grid resolution); "Plausibility" is reported
        only when given.
    X_train, y_train : default=None
        Training split for Class-Independence, Contrastiveness and Correlation, which the paper
        computes on the training set. When omitted they are computed on ``X, y``.
    stage : {"sparse", "dense"}, default="sparse"
        Which head to evaluate: the fine-tuned sparse model or the dense stage-1 model.
    random_state : int, RandomState instance or None, default=None
        Seeds the Gaussian mixtures of Contrastiveness.

    Returns
    -------
    dict
        ``{"Accuracy", "Plausibility" (with masks), "SID@5", "Class-Independence",
        "Contrastiveness", "Correlation"}``, fractions in [0, 1]. "SID@5" is left out (with a
        warning) when no predicted class has 5 non-zero weights.

    Notes
    -----
    As in the paper (docs/method.md#metrics) the metric weight matrix ``V_u`` is the head weight (the 0/1 assignment for the
    sparse stage, the dense linear weight for the dense stage) restricted to the columns with a
    non-zero entry; maps are raw (unstandardised), train features are the raw pooled features.

    Examples
    --------
    >>> from qpm_sklearn.metrics import evaluate
    >>> row = evaluate(model, X_test, y_test, masks=masks_test, X_train=X, y_train=y)  # doctest: +SKIP
    >>> round(100 * row["Plausibility"], 1)  # doctest: +SKIP
    """
    if stage not in ("sparse", "dense"):
        raise ValueError(f"stage must be 'sparse' or 'dense'; got {stage!r}.")
    check_fitted(estimator)
    X_fit, y_fit = _check_train_split(X_train, y_train, X, y, ("X_train", "y_train"))
    X, y = np.asarray(X), np.asarray(y)
    predicted = np.asarray(estimator.predict(X, stage=stage))
    if predicted.shape != y.shape:
        raise ValueError(f"y must have shape {predicted.shape} (one label per sample of X); got {y.shape}.")
    weight_matrix = np.asarray(estimator.class_weights(stage=stage), dtype=np.float64)
    codes = _class_codes(estimator.classes_, predicted, "estimator.predict(X)")

    def maps_of(start, stop):
        return estimator.feature_maps(X[start:stop], stage=stage)

    train_features = estimator.pooled_features(X_fit, stage=stage)
    return _table_row(predicted, y, weight_matrix, codes, maps_of, masks, train_features, y_fit, random_state)


def _probe_weights(probe):
    """(C, d) effective weights of a fitted linear probe on its raw input, and its classes.

    A Pipeline may put StandardScaler steps (or "passthrough") before the linear estimator: the
    scaler's ``scale_`` is folded into the weights (``w / scale``); its mean only shifts the
    logit by a constant, which no metric reads. Other preprocessing steps are rejected.
    """
    steps = getattr(probe, "steps", None)
    final = probe[-1] if steps is not None else probe
    coef = getattr(final, "coef_", None)
    if coef is None:
        raise TypeError(
            "probe must be a fitted linear classifier with coef_ (or a Pipeline ending in one); "
            f"got {type(final).__name__}."
        )
    coef = np.atleast_2d(np.asarray(coef, dtype=np.float64))
    scale = np.ones(coef.shape[1])
    for name, step in (steps or [])[:-1]:
        if step is None or step == "passthrough":
            continue
        if type(step).__name__ != "StandardScaler":
            raise TypeError(
                f"probe: only StandardScaler steps may precede the linear classifier (their scale is folded into "
                f"the weights); got step {name!r} of type {type(step).__name__}. Apply the final estimator directly."
            )
        if getattr(step, "scale_", None) is not None:
            scale = scale * np.asarray(step.scale_, dtype=np.float64)
    classes = np.asarray(final.classes_)
    if coef.shape[0] == 1 and len(classes) == 2:
        # Binary: decision > 0 means classes_[1]; class 0's evidence is the opposite direction.
        coef = np.vstack([-coef[0], coef[0]])
    return coef / scale, classes


def evaluate_linear_probe(
    probe: BaseEstimator,
    X_cls: npt.ArrayLike,
    X_patch: npt.ArrayLike,
    y: npt.ArrayLike,
    masks: _Masks | None = None,
    X_cls_train: npt.ArrayLike | None = None,
    y_train: npt.ArrayLike | None = None,
    random_state: int | np.random.RandomState | None = None,
) -> dict[str, float]:
    """The paper's table row for a linear probe on CLS embeddings (docs/baselines.md#the-cls-linear-probe, "DINO GradCAM").

    The probe predicts from CLS embeddings; its "feature maps" are the raw patch tokens (every
    embedding dimension is a map) weighted by the predicted class's coefficients: SID@5 compares
    the 5 dimensions with the largest signed coefficients, Plausibility uses
    ``G = sum_j w_j token_j``, and the train-feature metrics read the CLS embeddings.

    Parameters
    ----------
    probe : fitted sklearn linear classifier or Pipeline
        Has ``coef_`` of shape (C, d) (or (1, d) for two classes) and ``classes_``. A Pipeline may
        put StandardScaler steps before the classifier: their ``scale_`` is folded into the
        weights (``w / scale``; the mean only shifts logits by a constant). Any other
        preprocessing step raises a TypeError.
    X_cls : array-like of shape (n, d)
        Test CLS embeddings.
    X_patch : array-like of shape (n, h, w, d)
        Test patch tokens.
    y : array-like of shape (n,)
        Test labels.
    masks : default=None
        Object masks of the test images, as in :func:`evaluate`.
    X_cls_train, y_train : default=None
        Training CLS embeddings and labels for the train-feature metrics (``X_cls, y`` when omitted).
    random_state : int, RandomState instance or None, default=None
        Seeds the Gaussian mixtures of Contrastiveness.

    Returns
    -------
    dict
        Same keys as :func:`evaluate`.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> from qpm_sklearn.metrics import evaluate_linear_probe
    >>> probe = LogisticRegression(max_iter=1000).fit(cls_train, y_train)  # doctest: +SKIP
    >>> evaluate_linear_probe(probe, cls_test, patches_test, y_test, masks=masks_test)  # doctest: +SKIP
    """
    check_fitted(probe)
    X_fit, y_fit = _check_train_split(X_cls_train, y_train, X_cls, y, ("X_cls_train", "y_train"))
    weight_matrix, classes = _probe_weights(probe)
    patches = np.asarray(X_patch)
    if patches.ndim != 4 or patches.shape[3] != weight_matrix.shape[1]:
        raise ValueError(
            f"X_patch must have shape (n, h, w, {weight_matrix.shape[1]}) (the probe's input dimension); "
            f"got {patches.shape}."
        )
    y = np.asarray(y)
    predicted = np.asarray(probe.predict(X_cls))
    if predicted.shape != y.shape or patches.shape[0] != len(y):
        raise ValueError(
            "X_cls, X_patch and y must hold the same number of samples; "
            f"got {len(predicted)}, {patches.shape[0]}, {len(y)}."
        )
    codes = _class_codes(classes, predicted, "probe.predict(X_cls)")

    def maps_of(start, stop):
        return patches[start:stop].transpose(0, 3, 1, 2)

    return _table_row(predicted, y, weight_matrix, codes, maps_of, masks, X_fit, y_fit, random_state)


# ---------------------------------------------------------------------------------------------
# part alignment


def _check_keypoints(keypoints, image_sizes, n_samples):
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.ndim != 3 or keypoints.shape[0] != n_samples or keypoints.shape[2] != 3:
        raise ValueError(
            f"keypoints must have shape (n_samples={n_samples}, n_parts, 3) holding (x, y, visible) per part; "
            f"got {keypoints.shape}."
        )
    if not np.isin(keypoints[..., 2], (0, 1)).all():
        raise ValueError("keypoints[..., 2] (visible) must be 0 or 1.")
    if not np.all(np.isfinite(keypoints[keypoints[..., 2] == 1][:, :2])):
        raise ValueError("keypoints must hold finite (x, y) for every visible part.")
    sizes = np.asarray(image_sizes, dtype=np.float64)
    if sizes.shape != (n_samples, 2):
        raise ValueError(f"image_sizes must have shape (n_samples={n_samples}, 2) holding (width, height); got {sizes.shape}.")
    if not np.all(np.isfinite(sizes)) or np.any(sizes <= 0):
        raise ValueError("image_sizes must hold positive (width, height) of every image.")
    return keypoints, sizes


def _top_peaks_of_maps(maps: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows per channel by pooled mean (ties: lower row) and the (row, col) of each one's map maximum."""
    n, n_channels, h, w = maps.shape
    pooled = maps.reshape(n, n_channels, -1).mean(axis=2)
    rows = np.lexsort((np.broadcast_to(np.arange(n)[:, None], pooled.shape).T, -pooled.T), axis=1)[:, :k]
    flat = maps.reshape(n, n_channels, -1)[rows, np.arange(n_channels)[:, None]].argmax(axis=2)
    return rows, np.stack([flat // w, flat % w], axis=-1)


def part_alignment(
    clf_or_maps: Any,
    X: npt.ArrayLike | None,
    keypoints: npt.ArrayLike,
    image_sizes: npt.ArrayLike,
    *,
    radius: float = 0.1,
    k: int = 8,
    batch_size: int = 256,
) -> np.ndarray:
    """For each feature and part, the share of the feature's top-``k`` images whose map peak lies near the part.

    For every feature, the ``k`` images with the largest pooled activation are taken (as
    :func:`qpm_sklearn.report.feature_atlas` finds them, ties by lower row). The cell of each
    one's map maximum is mapped back to the original image through the squash resize (its
    centre, in original pixels), and counts for a part when the part is visible in that image
    and within ``radius`` of it. The share is over all ``k`` images: an image where the part
    is hidden counts against it.

    Keypoint layout (any keypoint data set, CUB's ``parts/part_locs.txt`` as
    :func:`qpm_sklearn.datasets.load_cub` reads it with ``parts=True``): ``keypoints[i, j] =
    (x, y, visible)`` of part ``j`` in image ``i``, in the original image's pixels (x to the
    right, y down, from the top-left corner), ``visible`` 1 or 0 (coordinates of hidden parts
    are ignored); ``image_sizes[i] = (width, height)`` of the original image.

    Parameters
    ----------
    clf_or_maps : QPMClassifier, FeatureAtlas or array-like of shape (n, K, h, w)
        A fitted classifier (its selected features, on ``X``), an atlas already computed on
        the images (``X`` is then not read), or feature maps.
    X : array-like or None
        Patch embeddings of the images, with a classifier; None otherwise.
    keypoints : array-like of shape (n, n_parts, 3)
    image_sizes : array-like of shape (n, 2)
    radius : float, default=0.1
        Largest distance from the peak to the part, as a fraction of the image's longer side.
    k : int, default=8
        Top images per feature (an atlas's own ``k`` when an atlas is given).
    batch_size : int, default=256
        Rows per forward pass of a classifier.

    Returns
    -------
    alignment : ndarray of shape (n_features, n_parts)
        Shares in [0, 1]; rows in ``selected_features_`` (or map channel) order.

    Raises
    ------
    ValueError
        For keypoints or image sizes of the wrong shape, ``k`` larger than the number of
        images, or a negative radius.

    Examples
    --------
    >>> maps = np.zeros((2, 1, 2, 2))
    >>> maps[0, 0, 0, 1] = 1.0  # image 0 peaks in the top-right cell
    >>> keypoints = [[[75, 20, 1], [10, 80, 1]], [[0, 0, 0], [0, 0, 0]]]
    >>> part_alignment(maps, None, keypoints, [[100, 100], [100, 100]], radius=0.1, k=1).tolist()
    [[1.0, 0.0]]
    """
    if not isinstance(radius, (int, float, np.number)) or isinstance(radius, bool) or not radius >= 0:
        raise ValueError(f"radius must be a number >= 0 (a fraction of the image's longer side); got {radius!r}.")
    from .report import FeatureAtlas, feature_atlas, peak_pixels

    grid: tuple[int, int]
    if isinstance(clf_or_maps, FeatureAtlas):
        points, sizes = _check_keypoints(keypoints, image_sizes, clf_or_maps.n_samples)
        rows, peaks, grid = clf_or_maps.top_samples, clf_or_maps.peaks, clf_or_maps.grid
    elif hasattr(clf_or_maps, "feature_maps"):
        if X is None or not hasattr(X, "shape"):
            raise ValueError("part_alignment needs X (an array of the images' embeddings) with a classifier.")
        points, sizes = _check_keypoints(keypoints, image_sizes, len(X))  # type: ignore[arg-type]
        atlas = feature_atlas(clf_or_maps, X, k=k, batch_size=batch_size)
        rows, peaks, grid = atlas.top_samples, atlas.peaks, atlas.grid
    else:
        maps = np.asarray(clf_or_maps, dtype=np.float64)
        if maps.ndim != 4:
            raise ValueError(f"clf_or_maps must be a classifier, a FeatureAtlas or maps (n, K, h, w); got shape {maps.shape}.")
        points, sizes = _check_keypoints(keypoints, image_sizes, len(maps))
        if not isinstance(k, (int, np.integer)) or not 1 <= k <= len(maps):
            raise ValueError(f"k must be an int in [1, n_samples={len(maps)}]; got {k!r}.")
        rows, peaks = _top_peaks_of_maps(maps, int(k))
        grid = (maps.shape[2], maps.shape[3])
    xy = peak_pixels(peaks, grid, sizes[rows])  # (F, k, 2)
    parts = points[rows]  # (F, k, P, 3)
    distance = np.hypot(parts[..., 0] - xy[..., None, 0], parts[..., 1] - xy[..., None, 1])
    near = (parts[..., 2] == 1) & (distance <= radius * sizes[rows].max(axis=-1)[..., None])
    return near.mean(axis=1)


def suggest_feature_names(
    alignment: npt.ArrayLike, part_names: Sequence[str], min_share: float = 0.5, *, features: npt.ArrayLike
) -> dict[int, str]:
    """Names ``"<part> (<share>)"`` for the features whose top images peak on one part.

    A feature is named after the part with its largest share in ``alignment`` when that
    share is at least ``min_share`` and larger than every other part's; the other features
    stay unnamed. The result is ready for ``QPMClassifier(feature_names=...)`` and
    :func:`qpm_sklearn.report.write_report` (two features on the same part get their channel
    id appended when their names would otherwise be equal).

    Parameters
    ----------
    alignment : array-like of shape (n_features, n_parts)
        From :func:`part_alignment`.
    part_names : sequence of str
        One name per part (column).
    min_share : float, default=0.5
        Smallest share in [0, 1] for a name.
    features : array-like of shape (n_features,)
        The adapter channel id of each row (``selected_features_``), the keys of the result.

    Returns
    -------
    names : dict of int to str

    Examples
    --------
    >>> suggest_feature_names([[0.8, 0.1], [0.3, 0.3]], ["beak", "wing"], features=[12, 40])
    {12: 'beak (0.80)'}
    """
    alignment = np.asarray(alignment, dtype=np.float64)
    features = np.asarray(features)
    if alignment.ndim != 2:
        raise ValueError(f"alignment must have shape (n_features, n_parts); got {alignment.shape}.")
    if features.shape != (alignment.shape[0],) or features.dtype.kind not in "iu":
        raise ValueError(f"features must hold one int channel id per row of alignment ({alignment.shape[0]}); got {features!r}.")
    if len(part_names) != alignment.shape[1]:
        raise ValueError(f"part_names must name the {alignment.shape[1]} parts (columns) of alignment; got {len(part_names)}.")
    if not isinstance(min_share, (int, float, np.number)) or not 0 <= min_share <= 1:
        raise ValueError(f"min_share must be a number in [0, 1]; got {min_share!r}.")
    names: dict[int, str] = {}
    for feature, shares in zip(features, alignment):
        order = np.argsort(-shares, kind="stable")
        best = shares[order[0]]
        runner_up = shares[order[1]] if len(order) > 1 else -np.inf
        if best >= min_share and best > runner_up:
            names[int(feature)] = f"{part_names[order[0]]} ({best:.2f})"
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    return {feature: name if counts[name] == 1 else f"{name} #{feature}" for feature, name in names.items()}
