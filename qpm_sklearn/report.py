"""Global explanations: what every selected feature responds to, across a whole data set.

:func:`feature_atlas` streams once over the embeddings and keeps, for every selected feature,
the rows where it fires most (with the cell of each map's peak), a histogram of its pooled
activation, and for every class its most typical correctly classified rows.
:func:`write_report` turns an atlas and the images into one self-contained static HTML page
(thumbnails embedded as data URIs, no network); ``qpm-sklearn report`` writes it for a saved model.

The atlas reads the classifier through its public methods and fitted attributes only
(``feature_maps`` per batch, ``class_weights``, ``feature_mean_``, ``feature_std_``,
``sparse_bias_``, ``dense_head_state_``), so any object with that interface works.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from ._atomic import replace_atomically

if TYPE_CHECKING:
    import pandas

__all__ = [
    "FeatureAtlas",
    "HISTOGRAM_BINS",
    "feature_atlas",
    "load_report_images",
    "peak_pixels",
    "write_report",
]

#: Bins of each feature's activation histogram: ``HISTOGRAM_BINS`` bins of equal width
#: ``2**e`` on ``[-HISTOGRAM_BINS/2 * 2**e, HISTOGRAM_BINS/2 * 2**e)``, ``e`` the smallest
#: exponent whose range holds the largest absolute activation.
HISTOGRAM_BINS = 128
_HALF_BINS = HISTOGRAM_BINS // 2
_SMALLEST_EXPONENT = -60  # the range of a feature that is zero everywhere
_DEFAULT_BATCH_SIZE = 256
_PATCH = 14  # Dinov2Embedder's patch: image_size = 14 * grid side by default


# --------------------------------------------------------------------------------------------
# The atlas
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)  # the default repr would print every array
class FeatureAtlas:
    """Where every selected feature fires across a data set, from :func:`feature_atlas`.

    Parameters
    ----------
    features : ndarray of shape (n_selected,)
        Adapter channel ids, in ``selected_features_`` order.
    top_samples : ndarray of shape (n_selected, k), int64
        Rows of ``X`` with the largest pooled activation of each feature, strongest
        first; equal activations are ordered by row index, lower first.
    top_scores : ndarray of shape (n_selected, k), float64
        Their pooled activations (the spatial mean of the map, as ``pooled_features``).
    peaks : ndarray of shape (n_selected, k, 2), int64
        The (row, col) grid cell of each top sample's map maximum (the first in
        row-major order when several cells share it).
    mean, std, maximum : ndarray of shape (n_selected,)
        Statistics of each feature's pooled activation over all rows of ``X``.
    hist_counts : ndarray of shape (n_selected, HISTOGRAM_BINS), int64
        Counts of the pooled activation in the bins of ``hist_edges``.
    hist_edges : ndarray of shape (n_selected, HISTOGRAM_BINS + 1)
        Bin edges of every feature (equal-width bins, see :data:`HISTOGRAM_BINS`); they
        depend on the data only, never on the batch size.
    classes_of : ndarray of shape (n_selected, n_classes), bool
        Which classes use each feature (the columns of ``assignment_``).
    class_weights : ndarray of shape (n_classes, n_selected)
        The head weights of the atlas's stage on these features.
    classes : ndarray of shape (n_classes,)
        ``classes_`` of the classifier.
    top_maps : ndarray of shape (n_selected, k, h, w), float32
        The feature's map on each of its top samples (for the figures and the report).
    class_features : ndarray of shape (n_classes, m), int64
        Positions in :attr:`features` of the features each class uses (``assignment_``),
        largest absolute weight first; ``-1`` pads classes with fewer than ``m``, the most
        any class uses.
    class_examples : ndarray of shape (n_classes, k), int64, or None
        With ``y``: each class's correctly classified rows with the largest margin
        (its logit minus the largest other logit), largest first, ties by row index;
        ``-1`` pads classes with fewer than ``k`` such rows.
    class_margins : ndarray of shape (n_classes, k), or None
        Their margins (``nan`` at the padding).
    class_maps : ndarray of shape (n_classes, k, m, h, w), float32, or None
        The maps of each class's features (:attr:`class_features`) on its examples
        (zeros at the padding).
    accuracy : float or None
        With ``y``: the share of rows whose predicted class (largest logit) is ``y``.
    grid : tuple of int
        ``(h, w)`` of the feature maps.
    n_samples : int
    stage : {"sparse", "dense"}
    feature_names : dict of int to str
        The classifier's feature names by channel id (``feature_names``; unnamed channels absent).
    """

    features: np.ndarray
    top_samples: np.ndarray
    top_scores: np.ndarray
    peaks: np.ndarray
    top_maps: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    maximum: np.ndarray
    hist_counts: np.ndarray
    hist_edges: np.ndarray
    classes_of: np.ndarray
    class_weights: np.ndarray
    classes: np.ndarray
    class_features: np.ndarray
    grid: tuple[int, int]
    n_samples: int
    stage: str
    class_examples: np.ndarray | None = None
    class_margins: np.ndarray | None = None
    class_maps: np.ndarray | None = None
    accuracy: float | None = None
    feature_names: dict[int, str] = field(default_factory=dict)

    @property
    def k(self) -> int:
        """Top samples kept per feature."""
        return int(self.top_samples.shape[1])

    def __repr__(self) -> str:
        with_y = "" if self.class_examples is None else ", with class examples"
        return (
            f"FeatureAtlas({len(self.features)} features x k={self.k} over {self.n_samples} samples, "
            f"grid {self.grid}, stage={self.stage!r}{with_y})"
        )

    def feature_index(self, feature: int) -> int:
        """Position of adapter channel ``feature`` in :attr:`features`.

        Parameters
        ----------
        feature : int
            An adapter channel id of :attr:`features`.

        Returns
        -------
        int
        """
        matches = np.flatnonzero(self.features == feature)
        if len(matches) != 1:
            raise ValueError(f"feature must be one of the atlas's features {self.features.tolist()}; got {feature!r}.")
        return int(matches[0])

    def share_below(self, values: npt.ArrayLike, feature: int) -> np.ndarray:
        """Share of all rows whose pooled activation of ``feature`` lies in a lower histogram bin than each value.

        A top score's share near 1 says the example is rare: almost every image
        activates the feature less.

        Parameters
        ----------
        values : array-like of float
            Pooled activations of ``feature``.
        feature : int
            An adapter channel id of :attr:`features`.

        Returns
        -------
        ndarray of float, same shape as ``values``
            Shares in [0, 1].
        """
        index = self.feature_index(feature)
        edges, counts = self.hist_edges[index], self.hist_counts[index]
        bins = np.clip(np.searchsorted(edges, np.asarray(values, dtype=np.float64), side="right") - 1, 0, len(counts))
        below = np.concatenate([[0], np.cumsum(counts)])
        return below[bins] / max(self.n_samples, 1)

    def to_frame(self) -> pandas.DataFrame:
        """One row per feature and rank: feature, name, rank, sample, score, peak_row, peak_col, classes.

        ``classes`` is the tuple of class labels that use the feature.

        Returns
        -------
        frame : pandas.DataFrame
            ``n_selected * k`` rows.
        """
        import pandas

        n_features, k = self.top_samples.shape
        users = [tuple(self.classes[self.classes_of[i]].tolist()) for i in range(n_features)]
        names = [self.feature_names.get(int(f), f"feature {int(f)}") for f in self.features]
        return pandas.DataFrame({
            "feature": np.repeat(self.features, k),
            "name": np.repeat(np.asarray(names, dtype=object), k),
            "rank": np.tile(np.arange(k), n_features),
            "sample": self.top_samples.ravel(),
            "score": self.top_scores.ravel(),
            "peak_row": self.peaks[..., 0].ravel(),
            "peak_col": self.peaks[..., 1].ravel(),
            "classes": [users[i] for i in range(n_features) for _ in range(k)],
        })  # fmt: skip


def _check_fitted(clf) -> None:
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(clf)
    except NotFittedError as exc:
        raise NotFittedError(f"clf must be a fitted classifier: {exc}") from None
    except TypeError as exc:
        raise TypeError(f"clf must be a fitted QPMClassifier; got {type(clf).__name__}.") from exc


def _check_k(k: object, n_samples: int) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int; got {k!r}.")
    if k > n_samples:
        raise ValueError(f"k={k} is larger than the number of samples in X ({n_samples}).")
    return int(k)


def _check_batch_size(batch_size: object) -> int:
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")
    return int(batch_size)


def _n_rows(X: object) -> int:
    shape = getattr(X, "shape", None)
    if shape is None or len(shape) not in (3, 4):
        raise ValueError(
            "X must be an array of patch embeddings of shape (n, h, w, d) or (n, p, d) (a numpy array or "
            f"memmap); got {type(X).__name__}" + ("" if shape is None else f" of shape {tuple(shape)}") + "."
        )
    return int(shape[0])


def _label_codes(y: npt.ArrayLike, classes: np.ndarray, n_samples: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n_samples:
        raise ValueError(f"y must be 1-D with one label per row of X ({n_samples}); got shape {y.shape}.")
    order = np.argsort(classes, kind="stable")
    position = np.searchsorted(classes, y, sorter=order)
    position = np.clip(position, 0, len(classes) - 1)
    codes = order[position]
    unknown = classes[codes] != y
    if np.any(unknown):
        raise ValueError(f"y holds labels that are not in classes_ {classes.tolist()}: {np.unique(y[unknown])[:5].tolist()}.")
    return codes.astype(np.int64)


def _stage_head(clf, stage: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Weights (C, K_stage), bias (C,), standardisation or None, and the map channels of the selected features.

    The logits of a batch are ``standardise(pooled) @ weight.T + bias`` -- the head of
    ``decision_function`` evaluated on the pooled maps, so one forward pass gives both.
    """
    selected = np.asarray(clf.selected_features_)
    weight = np.asarray(clf.class_weights(stage), dtype=np.float64)
    if stage == "sparse":
        return (weight, np.asarray(clf.sparse_bias_, dtype=np.float64), np.asarray(clf.feature_mean_, np.float64),
                np.asarray(clf.feature_std_, np.float64), np.arange(len(selected)))  # fmt: skip
    bias = np.asarray(clf.dense_head_state_["linear.bias"], dtype=np.float64)
    return weight, bias, None, None, selected


def _merge_top(scores, rows, new_scores, new_rows, k):
    """The k best of two candidate sets per line: largest score first, ties by lower row; -inf never beats a row."""
    scores = np.concatenate([scores, new_scores], axis=1)
    rows = np.concatenate([rows, new_rows], axis=1)
    # Padding (row -1, score -inf) must sort after every real row of equal score.
    tie_key = np.where(rows < 0, np.iinfo(np.int64).max, rows)
    order = np.lexsort((tie_key, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1), order


def _exponent_for(largest: np.ndarray) -> np.ndarray:
    """Smallest e with largest < _HALF_BINS * 2**e (per feature)."""
    _, exponent = np.frexp(largest / _HALF_BINS)
    return np.where(largest > 0, exponent, _SMALLEST_EXPONENT).astype(np.int64)


def _coarsen(counts: np.ndarray, exponent: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Re-bin each line of counts from bins of width 2**exponent to 2**target (aligned, so exact)."""
    out = counts.copy()
    offsets = np.arange(HISTOGRAM_BINS) - _HALF_BINS
    for i in np.flatnonzero(target > exponent):
        shift = int(target[i] - exponent[i])
        new_bins = np.floor_divide(offsets, 2**shift) + _HALF_BINS if shift < 62 else np.where(offsets < 0, _HALF_BINS - 1, _HALF_BINS)
        out[i] = np.bincount(new_bins, weights=counts[i], minlength=HISTOGRAM_BINS).astype(np.int64)
    return out


def feature_atlas(
    clf: Any,
    X: npt.ArrayLike,
    *,
    y: npt.ArrayLike | None = None,
    k: int = 8,
    batch_size: int = _DEFAULT_BATCH_SIZE,
    stage: Literal["sparse", "dense"] = "sparse",
) -> FeatureAtlas:
    """Top-activating samples, peaks and activation statistics of every selected feature, in one pass.

    ``X`` is read once, ``batch_size`` rows at a time (a float16 ``np.memmap`` of a whole data
    set works): besides one batch's maps, memory holds the kept rows' maps,
    ``O(n_selected * k * h * w)`` numbers (plus ``O(n_classes * k * m * h * w)`` with ``y``,
    ``m`` the features per class), never all maps and nothing that grows with ``n``.

    Parameters
    ----------
    clf : QPMClassifier
        A fitted classifier (any ``selection``).
    X : array-like of shape (n, h, w, d) or (n, p, d)
        Patch embeddings, as ``clf`` takes them; ``np.memmap`` is read batch by batch.
    y : array-like of shape (n,), default=None
        True labels; adds each class's most typical correctly classified rows
        (:attr:`FeatureAtlas.class_examples`) and the accuracy.
    k : int, default=8
        Rows kept per feature (and per class); at most ``n``.
    batch_size : int, default=256
        Rows per forward pass. The result's indices do not depend on it.
    stage : {"sparse", "dense"}, default="sparse"
        Maps of the fine-tuned model, or of the dense stage (the same selected channels
        before fine-tuning; margins from the dense head).

    Returns
    -------
    atlas : FeatureAtlas

    Raises
    ------
    ValueError
        For ``k`` larger than the number of rows, a bad ``batch_size`` or ``stage``,
        ``y`` of the wrong length or with unknown labels.
    sklearn.exceptions.NotFittedError
        For an unfitted classifier.

    Examples
    --------
    >>> import numpy as np
    >>> from qpm_sklearn import QPMClassifier
    >>> from qpm_sklearn.report import feature_atlas
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(40, 4, 4, 8)).astype(np.float32)
    >>> y = np.repeat([0, 1], 20)
    >>> clf = QPMClassifier(n_features=6, n_selected=3, n_per_class=2, hidden_size=8, n_layers=1,
    ...                     dense_epochs=2, sparse_epochs=1, random_state=0).fit(X, y)
    >>> atlas = feature_atlas(clf, X, y=y, k=3, batch_size=16)
    >>> atlas.top_samples.shape, atlas.peaks.shape, atlas.class_examples.shape
    ((3, 3), (3, 3, 2), (2, 3))
    """
    _check_fitted(clf)
    if stage not in ("sparse", "dense"):
        raise ValueError(f'stage must be "sparse" or "dense"; got {stage!r}.')
    n_samples = _n_rows(X)
    k = _check_k(k, n_samples)
    batch_size = _check_batch_size(batch_size)
    classes = np.asarray(clf.classes_)
    codes = None if y is None else _label_codes(y, classes, n_samples)
    weight, bias, mean, std, channels = _stage_head(clf, stage)
    features = np.asarray(clf.selected_features_)
    n_selected, n_classes = len(features), len(classes)

    top_scores = np.full((n_selected, k), -np.inf)
    top_rows = np.full((n_selected, k), -1, dtype=np.int64)
    top_peaks = np.zeros((n_selected, k), dtype=np.int64)  # flat cell index
    top_maps: np.ndarray | None = None  # (n_selected, k, h*w), allocated with the first batch
    assignment = np.asarray(clf.assignment_) != 0  # (C, n_selected)
    class_features = _class_features(assignment, weight[:, channels])  # (C, m)
    class_maps: np.ndarray | None = None  # (C, k, m, h*w)
    best_margin = np.full((n_classes, k), -np.inf)
    best_rows = np.full((n_classes, k), -1, dtype=np.int64)
    total = np.zeros(n_selected)
    total_sq = np.zeros(n_selected)
    maximum = np.full(n_selected, -np.inf)
    exponent = np.full(n_selected, _SMALLEST_EXPONENT, dtype=np.int64)
    counts = np.zeros((n_selected, HISTOGRAM_BINS), dtype=np.int64)
    n_correct = 0
    grid: tuple[int, int] | None = None

    for start in range(0, n_samples, batch_size):
        stop = min(start + batch_size, n_samples)
        maps = np.asarray(clf.feature_maps(X[start:stop], stage=stage))  # type: ignore[index]  # (B, K_stage, h, w)
        if not np.all(np.isfinite(maps)):
            raise ValueError(f"the feature maps of rows {start}..{stop - 1} of X are not all finite.")
        grid = (int(maps.shape[2]), int(maps.shape[3]))
        flat = maps.reshape(maps.shape[0], maps.shape[1], -1)
        pooled_all = flat.mean(axis=2, dtype=np.float64)  # (B, K_stage), accumulated in float64
        mine = np.asarray(flat if stage == "sparse" else flat[:, channels], dtype=np.float32)  # (B, n_selected, h*w)
        if top_maps is None:
            top_maps = np.zeros((n_selected, k, mine.shape[2]), dtype=np.float32)
            class_maps = np.zeros((n_classes, k, class_features.shape[1], mine.shape[2]), dtype=np.float32)
        pooled = pooled_all[:, channels].T  # (n_selected, B)
        peak = mine.argmax(axis=2).T  # (n_selected, B)
        rows = np.broadcast_to(np.arange(start, stop), pooled.shape)

        top_scores, top_rows, order = _merge_top(top_scores, top_rows, pooled, rows, k)
        top_peaks = np.take_along_axis(np.concatenate([top_peaks, peak], axis=1), order, axis=1)
        top_maps = _merge_maps(top_maps, mine, order, np.arange(n_selected)[:, None])

        total += pooled.sum(axis=1)
        total_sq += (pooled**2).sum(axis=1)
        maximum = np.maximum(maximum, pooled.max(axis=1))
        needed = np.maximum(exponent, _exponent_for(np.abs(pooled).max(axis=1)))
        counts = _coarsen(counts, exponent, needed)
        exponent = needed
        bins = np.floor(pooled / np.exp2(exponent)[:, None]).astype(np.int64) + _HALF_BINS
        for i in range(n_selected):
            counts[i] += np.bincount(bins[i], minlength=HISTOGRAM_BINS)

        if codes is not None:
            logits = _logits(pooled_all, weight, bias, mean, std)  # (B, C)
            batch_codes = codes[start:stop]
            truth = logits[np.arange(len(logits)), batch_codes]
            rivals = logits.copy()
            rivals[np.arange(len(logits)), batch_codes] = -np.inf
            margin = truth - rivals.max(axis=1) if n_classes > 1 else truth
            correct = np.argmax(logits, axis=1) == batch_codes
            n_correct += int(correct.sum())
            candidates = np.full((n_classes, stop - start), -np.inf)
            candidate_rows = np.full((n_classes, stop - start), -1, dtype=np.int64)
            hits = np.flatnonzero(correct)
            candidates[batch_codes[hits], hits] = margin[hits]
            candidate_rows[batch_codes[hits], hits] = start + hits
            best_margin, best_rows, order = _merge_top(best_margin, best_rows, candidates, candidate_rows, k)
            assert class_maps is not None  # allocated with the batch's maps above
            class_maps = _merge_maps(class_maps, mine, order, np.maximum(class_features, 0)[:, None, :])

    assert grid is not None and top_maps is not None and class_maps is not None  # n_samples >= k >= 1
    n_cols = grid[1]
    mean_activation = total / n_samples
    edges = (np.arange(HISTOGRAM_BINS + 1) - _HALF_BINS)[None, :] * np.exp2(exponent)[:, None]
    class_examples = class_margins = None
    accuracy = None
    if codes is not None:
        class_examples = np.where(np.isfinite(best_margin), best_rows, -1)
        class_margins = np.where(class_examples >= 0, best_margin, np.nan)
        keep = (class_examples >= 0)[:, :, None, None] & (class_features >= 0)[:, None, :, None]
        class_maps = np.where(keep, class_maps, 0.0).reshape(*class_maps.shape[:3], *grid).astype(np.float32)
        accuracy = n_correct / n_samples
    from .explanation import estimator_feature_names

    return FeatureAtlas(
        features=features.copy(),
        top_samples=top_rows,
        top_scores=top_scores,
        peaks=np.stack([top_peaks // n_cols, top_peaks % n_cols], axis=-1),
        top_maps=top_maps.reshape(n_selected, k, *grid),
        mean=mean_activation,
        std=np.sqrt(np.maximum(total_sq / n_samples - mean_activation**2, 0.0)),
        maximum=maximum,
        hist_counts=counts,
        hist_edges=edges,
        classes_of=assignment.T.copy(),
        class_weights=weight[:, channels].copy(),
        classes=classes.copy(),
        class_features=class_features,
        grid=grid,
        n_samples=n_samples,
        stage=stage,
        class_examples=class_examples,
        class_margins=class_margins,
        class_maps=class_maps if codes is not None else None,
        accuracy=accuracy,
        feature_names=estimator_feature_names(clf),
    )


def _class_features(assignment: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Positions of each class's features (``assignment_``), largest absolute weight first (ties: position); -1 pads."""
    width = max(int(assignment.sum(axis=1).max()), 1)
    out = np.full((len(weight), width), -1, dtype=np.int64)
    for c, row in enumerate(weight):
        used = np.flatnonzero(assignment[c])
        used = used[np.argsort(-np.abs(row[used]), kind="stable")]
        out[c, : len(used)] = used
    return out


def _merge_maps(kept: np.ndarray, batch: np.ndarray, order: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """The maps that go with a :func:`_merge_top` selection.

    ``kept`` (L, k, P) or (L, k, m, P) are the maps of the previous best, ``batch`` (B,
    n_selected, P) the batch's; ``order`` (L, k) indexes the concatenation [previous k |
    batch B]; ``channels`` is (L, 1) (one channel per line) or (L, 1, m) (m per line).
    """
    k = kept.shape[1]
    rows = np.clip(order - k, 0, len(batch) - 1)
    if kept.ndim == 4:
        rows = rows[:, :, None]
    from_batch = batch[rows, channels]
    extra = (1,) * (kept.ndim - 2)
    previous = np.take_along_axis(kept, np.clip(order, 0, k - 1).reshape(*order.shape, *extra), axis=1)
    return np.where((order >= k).reshape(*order.shape, *extra), from_batch, previous)


def _logits(pooled, weight, bias, mean, std):
    if mean is not None:
        pooled = (pooled - mean) / np.maximum(std, 1e-6)
    return pooled @ weight.T + bias


# --------------------------------------------------------------------------------------------
# Images as the model saw them
# --------------------------------------------------------------------------------------------


def _image_side(grid: tuple[int, int], image_size: int | None) -> int:
    h, w = grid
    if h != w:
        raise ValueError(
            f"the feature maps' grid {grid} is not square; images squash-resized to a square cannot match it."
        )
    if image_size is None:
        return _PATCH * h
    if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or image_size < h:
        raise ValueError(f"image_size must be an int >= the grid side {h}; got {image_size!r}.")
    if image_size % h:
        raise ValueError(
            f"image_size={image_size} is not a multiple of the grid side {h}: the embedder's patches tile the "
            f"image, so image_size must be {h} * patch (e.g. {h * _PATCH})."
        )
    return int(image_size)


def load_report_images(
    images: Any, rows: npt.ArrayLike, grid: tuple[int, int], image_size: int | None = None,
    preprocessing: str = "imagenet",
) -> np.ndarray:  # fmt: skip
    """``images[rows]`` squash-resized exactly as the embedder resized them: uint8 ``(len(rows), S, S, 3)``.

    Parameters
    ----------
    images : sequence of paths / PIL images / uint8 arrays, or uint8 array (n, H, W[, 3])
        One image per row of ``X``.
    rows : array-like of int
    grid : (h, w)
        The feature maps' grid; it must be square.
    image_size : int, default=None
        The embedder's ``image_size``; None: 14 pixels per grid cell (Dinov2Embedder's patch).
    preprocessing : str, default="imagenet"
        The embedder's ``preprocessing`` ("imagenet": bicubic, "paper": bilinear), or a PIL
        filter name (for ``preprocessing="auto"``, the one the model's image processor names).

    Returns
    -------
    pixels : ndarray of shape (len(rows), S, S, 3), uint8
    """
    from .images import PREPROCESSING_FILTERS, RESAMPLING_FILTERS, check_images, load_resized

    side = _image_side(tuple(grid), image_size)  # type: ignore[arg-type]
    resample = PREPROCESSING_FILTERS.get(preprocessing, preprocessing)
    if resample not in RESAMPLING_FILTERS:
        raise ValueError(
            f"preprocessing must be the embedder's {tuple(PREPROCESSING_FILTERS)}, or a PIL filter name "
            f"{tuple(RESAMPLING_FILTERS)} (for 'auto', the filter its image processor names); got {preprocessing!r}."
        )
    checked = check_images(images)
    rows = np.asarray(rows, dtype=np.int64).ravel()
    if len(rows) == 0:
        return np.zeros((0, side, side, 3), dtype=np.uint8)
    return np.stack([load_resized(checked[int(r)], int(r), side, resample) for r in rows])


def peak_pixels(peaks: npt.ArrayLike, grid: tuple[int, int], image_sizes: npt.ArrayLike) -> np.ndarray:
    """Centres of peak cells in original image pixels, through the squash resize.

    Parameters
    ----------
    peaks : array-like of shape (..., 2)
        (row, col) grid cells.
    grid : (h, w)
    image_sizes : array-like of shape (..., 2)
        (width, height) of each original image (PIL's ``Image.size`` order), broadcast
        against ``peaks``.

    Returns
    -------
    xy : ndarray of shape (..., 2)
        (x, y) in the original image's pixels.

    Examples
    --------
    >>> peak_pixels([[0, 3]], (4, 4), [[400, 200]]).tolist()
    [[350.0, 25.0]]
    """
    peaks = np.asarray(peaks, dtype=np.float64)
    sizes = np.asarray(image_sizes, dtype=np.float64)
    h, w = grid
    x = (peaks[..., 1] + 0.5) / w * sizes[..., 0]
    y = (peaks[..., 0] + 0.5) / h * sizes[..., 1]
    return np.stack([x, y], axis=-1)


def _check_images_length(images: Any, n_samples: int) -> Any:
    from .images import check_images

    checked = check_images(images)
    if len(checked) != n_samples:
        raise ValueError(f"images must hold one image per row of X ({n_samples}); got {len(checked)}.")
    return checked


# --------------------------------------------------------------------------------------------
# Thumbnails
# --------------------------------------------------------------------------------------------


def _heat_colours(values: np.ndarray) -> np.ndarray:
    """A jet-like colour ramp (blue → cyan → yellow → red) of values in [0, 1]; float (…, 3)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    red = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    green = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    blue = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return np.concatenate([red, green, blue], axis=-1)


def overlay_image(pixels: np.ndarray, grid_map: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """``pixels`` (S, S, 3) uint8 with a colour ramp of ``grid_map`` (h, w) laid over it; uint8.

    The map is upsampled to S (bilinear, min-max normalised) and its colour is mixed in with
    opacity ``alpha * heat``: where the feature is silent the image shows unchanged.
    """
    from .explanation import upsample_maps

    heat = upsample_maps(np.asarray(grid_map, dtype=np.float32), pixels.shape[:2])[..., None]
    opacity = alpha * heat
    blended = (1 - opacity) * pixels.astype(np.float32) + opacity * 255 * _heat_colours(heat[..., 0])
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def crop_box(peak: Sequence[int], grid: tuple[int, int], side: int, cells: int = 5) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` pixels of a square of ``cells`` grid cells around ``peak``, inside the image."""
    h, w = grid
    cell = side / h
    size = min(side, int(round(cells * cell)))
    centre_y, centre_x = (peak[0] + 0.5) * cell, (peak[1] + 0.5) * side / w
    top = int(np.clip(round(centre_y - size / 2), 0, side - size))
    left = int(np.clip(round(centre_x - size / 2), 0, side - size))
    return top, left, top + size, left + size


def _resized(pixels: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    if pixels.shape[:2] == (side, side):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((side, side), Image.Resampling.BILINEAR))


def _data_uri(pixels: np.ndarray, quality: int) -> str:
    """A JPEG data URI of ``pixels`` (JPEG: every browser decodes it and Pillow always writes it, fast)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --------------------------------------------------------------------------------------------
# The HTML report
# --------------------------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fff}
header{position:sticky;top:0;background:#f4f4f4;border-bottom:1px solid #ccc;padding:.5em 1em;z-index:2}
main{padding:0 1em 2em}
h1{font-size:1.3em;margin:.2em 0}
h2{font-size:1.1em;margin:1.2em 0 .3em}
h3{font-size:1em;margin:.8em 0 .2em}
section{border-top:1px solid #ddd;padding-top:.3em}
table{border-collapse:collapse;font-size:.8em}
td,th{border:1px solid #ddd;padding:1px 4px;text-align:center}
.matrix td{width:.9em;height:.9em;padding:0}
.matrix td.on{background:#3a6ea5}
.matrix td.on a{display:block;width:100%;height:100%}
.matrix th.col{writing-mode:vertical-rl;font-weight:normal}
.strip{display:flex;flex-wrap:wrap;gap:4px;align-items:flex-start}
figure{margin:0;font-size:.7em;text-align:center}
figure img{display:block}
.muted{color:#777;font-size:.85em}
#count{margin-left:1em;font-size:.85em;color:#555}
"""

_SCRIPT = """
(function(){
  var box=document.getElementById('search'), count=document.getElementById('count');
  var items=document.querySelectorAll('[data-search]');
  function filter(){
    var q=box.value.trim().toLowerCase(), shown=0;
    items.forEach(function(el){
      var hit=!q||el.getAttribute('data-search').indexOf(q)>=0;
      el.hidden=!hit; if(hit){shown++;}
    });
    count.textContent=shown+' of '+items.length+' sections';
  }
  box.addEventListener('input',filter); filter();
})();
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _histogram_svg(atlas: FeatureAtlas, index: int, width: int = 260, height: int = 60) -> str:
    """Inline SVG of a feature's activation histogram (log counts), top-k scores marked in red."""
    counts, edges = atlas.hist_counts[index], atlas.hist_edges[index]
    used = np.flatnonzero(counts)
    if len(used) == 0:
        return ""
    first, last = int(used[0]), int(used[-1]) + 1
    counts, edges = counts[first:last], edges[first : last + 1]
    heights = np.log1p(counts) / np.log1p(counts.max())
    bar = width / len(counts)
    lo, hi = float(edges[0]), float(edges[-1])
    parts = [f'<svg width="{width}" height="{height + 14}" role="img" aria-label="activation histogram">']
    for i, value in enumerate(heights):
        bar_height = value * height
        parts.append(
            f'<rect x="{i * bar:.1f}" y="{height - bar_height:.1f}" width="{max(bar - 0.5, 0.5):.1f}" '
            f'height="{bar_height:.1f}" fill="#889"></rect>'
        )
    for score in atlas.top_scores[index]:
        x = (float(score) - lo) / max(hi - lo, 1e-300) * width
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{height}" stroke="#d22" stroke-width="1"></line>')
    parts.append(f'<text x="0" y="{height + 12}" font-size="10">{lo:.3g}</text>')
    parts.append(f'<text x="{width}" y="{height + 12}" font-size="10" text-anchor="end">{hi:.3g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _feature_anchor(feature: int) -> str:
    return f"feature-{int(feature)}"


def _class_anchor(index: int) -> str:
    return f"class-{int(index)}"


def _check_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"path: the folder {str(path.parent)!r} of the report {str(path)!r} does not exist.")
    if path.is_dir():
        raise IsADirectoryError(f"path: {str(path)!r} is a folder; give the report's file name.")
    return path


def _check_alignment(alignment: npt.ArrayLike | None, part_names: Sequence[str] | None, n_selected: int):
    if alignment is None:
        return None, None
    alignment = np.asarray(alignment, dtype=np.float64)
    if alignment.ndim != 2 or alignment.shape[0] != n_selected:
        raise ValueError(f"alignment must have shape (n_selected={n_selected}, n_parts); got {alignment.shape}.")
    if part_names is None:
        part_names = [f"part {j}" for j in range(alignment.shape[1])]
    if len(part_names) != alignment.shape[1]:
        raise ValueError(f"part_names must name the {alignment.shape[1]} parts of alignment; got {len(part_names)}.")
    return alignment, [str(name) for name in part_names]


def write_report(
    clf: Any,
    X: npt.ArrayLike,
    images: Any,
    path: str | os.PathLike[str],
    *,
    y: npt.ArrayLike | None = None,
    k: int = 8,
    feature_names: Mapping[Any, str] | Sequence[str] | None = None,
    class_names: Mapping[Any, str] | Sequence[str] | None = None,
    atlas: FeatureAtlas | None = None,
    alignment: npt.ArrayLike | None = None,
    part_names: Sequence[str] | None = None,
    image_size: int | None = None,
    preprocessing: str = "imagenet",
    class_images: int = 4,
    thumbnail: int = 96,
    quality: int = 70,
    batch_size: int = _DEFAULT_BATCH_SIZE,
    title: str | None = None,
) -> Path:
    """Write a self-contained static HTML report of the whole model to ``path``.

    The page holds an overview (budgets, ``selection_info_``, accuracy of both stages with
    ``y``, the assignment matrix whose cells link to the class and feature), one section
    per class (its features with weights, each shown on the class's most typical images)
    and one per feature (its top-``k`` images with the map overlaid and a crop around the
    peak, its activation histogram, the classes that use it, its name and part
    alignment), and a search box. Images are embedded as compressed thumbnails (JPEG data
    URIs) and loaded lazily; the file refers to nothing
    outside itself, so it opens from ``file://`` without a network. It is written
    atomically: an interrupted write leaves no partial file.

    Parameters
    ----------
    clf : QPMClassifier
        A fitted classifier.
    X : array-like of shape (n, h, w, d) or (n, p, d)
        Patch embeddings of ``images`` (read in one streamed pass unless ``atlas`` is given).
    images : sequence of paths / PIL images / uint8 arrays, or uint8 array (n, H, W[, 3])
        One image per row of ``X``, squash-resized as the embedder resized them.
    path : str or path-like
        The HTML file to write; its folder must exist.
    y : array-like of shape (n,), default=None
        True labels: adds the accuracies and the class panels' typical images.
    k : int, default=8
        Top images per feature (and typical images kept per class).
    feature_names : dict or sequence of str, default=None
        Names of the selected features (as ``QPMClassifier(feature_names=...)``); None: the
        classifier's own. :func:`qpm_sklearn.metrics.suggest_feature_names` gives some.
    class_names : dict label -> name or sequence in ``classes_`` order, default=None
    atlas : FeatureAtlas, default=None
        A precomputed :func:`feature_atlas` of ``X`` (and ``y``) to reuse.
    alignment : array-like of shape (n_selected, n_parts), default=None
        :func:`qpm_sklearn.metrics.part_alignment` of the features, shown per feature.
    part_names : sequence of str, default=None
        Names of ``alignment``'s columns.
    image_size : int, default=None
        The embedder's ``image_size``; None: 14 pixels per grid cell.
    preprocessing : str, default="imagenet"
        The embedder's ``preprocessing`` (its resampling filter).
    class_images : int, default=4
        Typical images each class panel shows its features on (at most ``k``).
    thumbnail : int, default=96
        Side of the thumbnails in pixels.
    quality : int, default=70
        Compression quality of the thumbnails (1..100).
    batch_size : int, default=256
        Rows per forward pass of the atlas.
    title : str, default=None

    Returns
    -------
    path : pathlib.Path

    Raises
    ------
    ValueError
        For ``images`` of another length than ``X``, a grid that images cannot match,
        ``k`` larger than the number of rows, misshapen ``alignment``.
    FileNotFoundError
        When the folder of ``path`` does not exist.

    Examples
    --------
    >>> from qpm_sklearn.report import write_report
    >>> write_report(clf, X_test, test_paths, "report.html", y=y_test)  # doctest: +SKIP
    PosixPath('report.html')
    """
    from .explanation import resolve_feature_names

    _check_fitted(clf)
    path = _check_path(path)
    n_samples = _n_rows(X)
    k = _check_k(k, n_samples)
    checked_images = _check_images_length(images, n_samples)
    for name, value, low, high in (("class_images", class_images, 1, None), ("thumbnail", thumbnail, 8, 1024),
                                   ("quality", quality, 1, 100)):  # fmt: skip
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low or (high and value > high):
            raise ValueError(f"{name} must be an int in [{low}, {high or 'inf'}]; got {value!r}.")
    if atlas is None:
        atlas = feature_atlas(clf, X, y=y, k=k, batch_size=batch_size)
    elif not isinstance(atlas, FeatureAtlas):
        raise TypeError(f"atlas must be a FeatureAtlas from feature_atlas; got {type(atlas).__name__}.")
    elif atlas.n_samples != n_samples or not np.array_equal(atlas.features, clf.selected_features_):
        raise ValueError("atlas was not computed from this classifier and X (other features or number of rows).")
    side = _image_side(atlas.grid, image_size)
    names = resolve_feature_names(feature_names, atlas.features) if feature_names is not None else dict(atlas.feature_names)
    alignment, part_names = _check_alignment(alignment, part_names, len(atlas.features))

    page = _render(clf, X, atlas, checked_images, y, names, class_names, alignment, part_names, side, preprocessing,
                   class_images, thumbnail, quality, title)  # fmt: skip
    content = page.encode("utf-8")
    written = replace_atomically(path, lambda handle: handle.write(content))
    _respect_umask(written)
    return written


def _respect_umask(path: Path) -> None:
    """Give the new file the permissions an ordinary ``open`` would (mkstemp creates it 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    try:
        os.chmod(path, 0o666 & ~mask)
    except OSError:  # pragma: no cover - e.g. a filesystem without permissions
        pass


def _class_label(label, index, classes, class_names) -> str:
    if class_names is None:
        return str(label)
    if isinstance(class_names, Mapping):
        return str(class_names.get(label, label))
    return str(class_names[index])


def _render(clf, X, atlas, images, y, names, class_names, alignment, part_names, side, preprocessing, class_images,
            thumbnail, quality, title) -> str:  # fmt: skip
    classes = atlas.classes
    features = atlas.features
    if class_names is not None and not isinstance(class_names, Mapping) and len(class_names) != len(classes):
        raise ValueError(f"class_names must name the {len(classes)} classes in classes_ order; got {len(class_names)}.")
    labels = [_class_label(label, i, classes, class_names) for i, label in enumerate(classes)]
    feature_label = {int(f): names.get(int(f), f"feature {int(f)}") for f in features}
    n_examples = 0 if atlas.class_examples is None else min(class_images, atlas.k)

    # All rows any panel shows: read each image and compute its maps once.
    feature_rows = atlas.top_samples.ravel()
    class_rows = atlas.class_examples[:, :n_examples].ravel() if n_examples else np.zeros(0, np.int64)
    needed = np.unique(np.concatenate([feature_rows, class_rows[class_rows >= 0]]))
    position = {int(r): i for i, r in enumerate(needed)}
    pixels = load_report_images(images, needed, atlas.grid, side, preprocessing)

    small = np.stack([_resized(picture, thumbnail) for picture in pixels])  # overlays are drawn at thumbnail size

    def thumb(row: int, grid_map: np.ndarray, crop_peak=None) -> str:
        p = position[int(row)]
        if crop_peak is None:
            picture = overlay_image(small[p], grid_map)
        else:
            top, left, bottom, right = crop_box(crop_peak, atlas.grid, side)
            picture = _resized(pixels[p][top:bottom, left:right], thumbnail)
        uri = _data_uri(picture, quality)
        return f'<img loading="lazy" decoding="async" width="{thumbnail}" height="{thumbnail}" alt="row {int(row)}" src="{uri}">'

    out: list[str] = []
    heading = title or f"{type(clf).__name__} report"
    out.append(f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(heading)}</title>')
    out.append('<meta name="viewport" content="width=device-width, initial-scale=1">')
    out.append(f"<style>{_STYLE}</style></head><body>")
    out.append(f'<header><h1>{_e(heading)}</h1><label>Search classes and features: <input id="search" type="search" '
               f'placeholder="name or id" autocomplete="off"></label><span id="count"></span> '
               f'<a href="#overview">overview</a> · <a href="#classes">classes</a> · '
               f'<a href="#features">features</a></header><main>')  # fmt: skip

    # ---------------------------------------------------------------- overview
    out.append('<section id="overview"><h2>Overview</h2><ul>')
    params = clf.get_params() if hasattr(clf, "get_params") else {}
    for key in ("selection", "n_features", "n_selected", "n_per_class"):
        if key in params:
            out.append(f"<li>{_e(key)}: {_e(params[key])}</li>")
    out.append(f"<li>classes: {len(classes)}; rows of X: {atlas.n_samples}; grid {atlas.grid[0]}×{atlas.grid[1]}; "
               f"maps of the {atlas.stage} stage</li>")  # fmt: skip
    info = getattr(clf, "selection_info_", None) or {}
    shown = {key: value for key, value in info.items() if isinstance(value, (int, float, str, bool, np.number))}
    if shown:
        items = ", ".join(f"{_e(key)}={_e(_short(value))}" for key, value in shown.items())
        out.append(f"<li>selection: {items}</li>")
    if y is not None:
        accuracies = {}
        for stage in ("sparse", "dense"):
            if stage == atlas.stage and atlas.accuracy is not None:
                accuracies[stage] = atlas.accuracy
            else:
                accuracies[stage] = float(np.mean(np.asarray(clf.predict(X, stage=stage)) == np.asarray(y)))
        text = ", ".join(f"{stage} {accuracies[stage]:.3f}" for stage in ("sparse", "dense"))
        out.append(f"<li>accuracy on these rows: {text}</li>")
    out.append("</ul>")
    out.append(_assignment_table(atlas, labels, feature_label))
    out.append("</section>")

    # ---------------------------------------------------------------- classes
    out.append('<section id="classes"><h2>Classes</h2>')
    for c, label in enumerate(labels):
        used = [int(i) for i in atlas.class_features[c] if i >= 0]
        search = " ".join([label.lower(), *[feature_label[int(features[i])].lower() for i in used]])
        out.append(f'<section id="{_class_anchor(c)}" data-search="{_e(search)}"><h3>{_e(label)}</h3>')
        rows = [] if not n_examples else [int(r) for r in atlas.class_examples[c, :n_examples] if r >= 0]
        slot = {int(i): j for j, i in enumerate(atlas.class_features[c]) if i >= 0}
        if n_examples and not rows:
            out.append('<p class="muted">no correctly classified row of this class in X.</p>')
        elif not n_examples:
            out.append('<p class="muted">typical images need y.</p>')
        out.append("<table><tr><th>feature</th><th>weight</th>" + "".join(
            f"<th>row {r}</th>" for r in rows) + "</tr>")  # fmt: skip
        for i in used:
            feature = int(features[i])
            cells = "".join(f"<td>{thumb(r, atlas.class_maps[c, e, slot[int(i)]])}</td>" for e, r in enumerate(rows))
            out.append(
                f'<tr id="{_class_anchor(c)}-{_feature_anchor(feature)}"><td><a href="#{_feature_anchor(feature)}">'
                f"{_e(feature_label[feature])}</a></td><td>{atlas.class_weights[c, i]:+.3g}</td>{cells}</tr>"
            )
        out.append("</table></section>")
    out.append("</section>")

    # ---------------------------------------------------------------- features
    out.append('<section id="features"><h2>Features</h2>')
    for i, feature in enumerate(int(f) for f in features):
        users = np.flatnonzero(atlas.classes_of[i])
        label = feature_label[feature]
        search = " ".join([label.lower(), f"feature {feature}", *[labels[c].lower() for c in users]])
        out.append(f'<section id="{_feature_anchor(feature)}" data-search="{_e(search)}"><h3>{_e(label)} '
                   f'<span class="muted">(channel {feature})</span></h3>')  # fmt: skip
        out.append(f'<p class="muted">mean activation {atlas.mean[i]:.3g}, std {atlas.std[i]:.3g}, '
                   f"max {atlas.maximum[i]:.3g}. Used by: " + (", ".join(
                       f'<a href="#{_class_anchor(int(c))}">{_e(labels[c])}</a>' for c in users) or "no class") + "</p>")  # fmt: skip
        if alignment is not None:
            order = np.argsort(-alignment[i], kind="stable")[:3]
            parts = ", ".join(f"{_e(part_names[j])} {alignment[i, j]:.2f}" for j in order)
            out.append(f'<p class="muted">part alignment (share of top images peaking near the part): {parts}</p>')
        out.append(_histogram_svg(atlas, i))
        share = atlas.share_below(atlas.top_scores[i], feature)
        out.append('<div class="strip">')
        for rank in range(atlas.k):
            row, score = int(atlas.top_samples[i, rank]), float(atlas.top_scores[i, rank])
            peak = atlas.peaks[i, rank]
            grid_map = atlas.top_maps[i, rank]
            out.append(f"<figure>{thumb(row, grid_map)}{thumb(row, grid_map, crop_peak=peak)}<figcaption>#{rank + 1} row {row}<br>"
                       f"{score:.3g} (above {100 * share[rank]:.0f}%)</figcaption></figure>")  # fmt: skip
        out.append("</div></section>")
    out.append("</section></main>")
    out.append(f"<script>{_SCRIPT}</script></body></html>\n")
    return "".join(out)


def _short(value) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    return str(value)


def _assignment_table(atlas: FeatureAtlas, labels: list[str], feature_label: dict[int, str]) -> str:
    features = atlas.features
    head = "".join(
        f'<th class="col"><a href="#{_feature_anchor(f)}" title="{_e(feature_label[int(f)])}">{int(f)}</a></th>'
        for f in features
    )
    rows = [f'<h3>Assignment</h3><table class="matrix"><tr><th>class</th>{head}</tr>']
    for c, label in enumerate(labels):
        cells = []
        for i, f in enumerate(features):
            if atlas.classes_of[i, c]:
                target = f"{_class_anchor(c)}-{_feature_anchor(int(f))}"
                name = _e(f"{label}: {feature_label[int(f)]}")
                cells.append(f'<td class="on"><a href="#{target}" title="{name}" aria-label="{name}"></a></td>')
            else:
                cells.append("<td></td>")
        rows.append(f'<tr><th><a href="#{_class_anchor(int(c))}">{_e(label)}</a></th>{"".join(cells)}</tr>')
    rows.append("</table>")
    return "".join(rows)
