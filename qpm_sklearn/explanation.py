"""The :class:`Explanation` of a prediction, its exports and the saliency upsampling it offers.

Besides the dataclass, this module holds the plain-array functions behind the
exports: naming features (:func:`resolve_feature_names`, :func:`feature_labels`),
the tidy table (:func:`explanation_frame`), the bridge to shap
(:func:`explanation_to_shap`) and the text view of a fitted model's classes
(:func:`class_summary`).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from ._utils import check_fitted


if TYPE_CHECKING:  # optional dependencies, imported where used
    import pandas
    import shap

# The fields of an Explanation that have one entry per sample (all but ``classes`` and ``feature_names``).
_PER_SAMPLE = ("prediction", "proba", "logit", "intercept", "features", "contributions", "weights", "maps")


def evidence_map(weights: ArrayLike, maps: ArrayLike) -> np.ndarray:
    """Class evidence on the grid, ``Σ_k weights[..., k] · maps[..., k, :, :]`` (docs/method.md#saliency).

    The one implementation behind :meth:`Explanation.evidence_map`, the plausibility metric
    and the explanation figure.

    Parameters
    ----------
    weights : array-like of shape (..., K)
    maps : array-like of shape (..., K, h, w)

    Returns
    -------
    evidence : ndarray of shape (..., h, w)

    Examples
    --------
    >>> evidence_map([2.0, -1.0], np.ones((2, 1, 3))).tolist()
    [[1.0, 1.0, 1.0]]
    """
    return np.einsum("...k,...khw->...hw", np.asarray(weights), np.asarray(maps))


def upsample_maps(maps: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinearly upsample maps ``(..., h, w)`` to ``size`` and min–max normalise each map.

    The saliency of docs/method.md#saliency: ``F.interpolate(mode="bilinear",
    align_corners=False)`` to the image resolution, then every map scaled to
    [0, 1] on its own (a constant map becomes all zeros).

    Parameters
    ----------
    maps : ndarray of shape (..., h, w)
    size : int or (int, int)
        Output height and width.

    Returns
    -------
    saliency : ndarray of shape (..., size_h, size_w), float32, values in [0, 1]
    """
    import torch
    import torch.nn.functional as F

    sides = np.asarray(size)
    if sides.shape not in ((), (2,)) or sides.dtype.kind not in "iu" or np.any(sides < 1):
        raise ValueError(f"size must be a positive int or (height, width); got {size!r}.")
    out_h, out_w = (int(side) for side in np.broadcast_to(sides, (2,)))
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim < 2:
        raise ValueError(f"maps must have at least 2 dimensions (..., h, w); got shape {maps.shape}.")
    lead = maps.shape[:-2]
    if 0 in maps.shape[-2:]:
        raise ValueError(f"maps must have a non-empty grid (h, w); got shape {maps.shape}.")
    if maps.size == 0:  # no maps (no samples or no features): nothing to upsample
        return np.zeros((*lead, out_h, out_w), dtype=np.float32)
    flat = torch.from_numpy(np.ascontiguousarray(maps.reshape(-1, 1, *maps.shape[-2:])))
    up = F.interpolate(flat, size=(out_h, out_w), mode="bilinear", align_corners=False)
    up = up.reshape(up.shape[0], -1)
    low = up.min(dim=1, keepdim=True).values
    span = up.max(dim=1, keepdim=True).values - low
    up = torch.where(span > 0, (up - low) / span.clamp_min(1e-12), torch.zeros_like(up))
    return up.reshape(*lead, out_h, out_w).numpy()


@dataclass(frozen=True, repr=False)  # the default repr would print every array
class Explanation:
    """Why each sample got its prediction: a sum of a few named, localised features.

    For sample ``i`` of predicted class ``c`` the predicted logit is
    ``intercept[i] + contributions[i].sum()``, where ``contributions[i, j]`` is
    ``W[c, f] * (pooled_f - mean_f) / std_f`` for the class's feature
    ``f = features[i, j]`` (an adapter channel id), and ``maps[i, j]`` is the
    raw map of that feature on the patch grid (its spatial mean is ``pooled_f``).
    Features are ordered by decreasing contribution. Where a class uses fewer
    features than the widest class (possible for the SLDD baseline), ``features``
    is padded with -1, ``contributions`` with 0 and ``maps`` with zeros.

    Each parameter is kept as the attribute of the same name.

    Parameters
    ----------
    prediction : ndarray of shape (n,)
        Predicted labels (the classifier's ``classes_`` values).
    proba : ndarray of shape (n, n_classes)
        Class probabilities (softmax of the logits).
    classes : ndarray of shape (n_classes,)
        The class labels, in the column order of ``proba``.
    logit : ndarray of shape (n,)
        The predicted class's logit.
    intercept : ndarray of shape (n,)
        The predicted class's constant term (0 for DINO-QPM, which has no bias).
    features : ndarray of shape (n, k), int
        Adapter channel ids of the predicted class's features.
    contributions : ndarray of shape (n, k)
        Each feature's additive share of the predicted logit.
    weights : ndarray of shape (n, k)
        The head weight ``W[c, f]`` of each feature (1 for DINO-QPM's binary assignment).
    maps : ndarray of shape (n, k, h, w)
        Raw (non-negative) feature maps on the patch grid.
    feature_names : dict of int to str, default=None
        Names of adapter channels (the classifier's ``feature_names``, resolved by
        :func:`resolve_feature_names`); channels without a name are called
        ``"feature <id>"``.

    Notes
    -----
    ``len(e)`` is the number of samples; ``e[i]``, ``e[a:b]`` and ``e[mask]``
    (an int, a slice, an array of ints or a boolean mask, with numpy's rules for a
    1-D array) return an :class:`Explanation` of those samples, keeping the sample
    axis (``e[3]`` holds one sample, so every shape above still reads
    ``(1, ...)``; ``e[[]]`` holds none, and every method works on it), and
    iterating yields one-sample explanations.

    Examples
    --------
    >>> import numpy as np
    >>> from qpm_sklearn import Explanation
    >>> e = Explanation(prediction=np.array([1]), proba=np.array([[0.2, 0.8]]),
    ...                 classes=np.array([0, 1]), logit=np.array([1.5]),
    ...                 intercept=np.array([0.0]), features=np.array([[7, 3]]),
    ...                 contributions=np.array([[1.0, 0.5]]), weights=np.ones((1, 2)),
    ...                 maps=np.zeros((1, 2, 4, 4)))
    >>> e.saliency(8).shape
    (1, 2, 8, 8)
    >>> e[0].to_frame()[["sample", "prediction", "feature", "feature_name", "contribution"]]
       sample  prediction  feature feature_name  contribution
    0       0           1        7    feature 7           1.0
    1       0           1        3    feature 3           0.5
    """

    prediction: np.ndarray
    proba: np.ndarray
    classes: np.ndarray
    logit: np.ndarray
    intercept: np.ndarray
    features: np.ndarray
    contributions: np.ndarray
    weights: np.ndarray
    maps: np.ndarray
    feature_names: dict[int, str] | None = None

    def __len__(self) -> int:
        return len(self.prediction)

    def __repr__(self) -> str:
        n, k = np.shape(self.features)
        h, w = np.shape(self.maps)[-2:]
        return f"Explanation({n} samples, {k} features each, {h}x{w} maps, {len(self.classes)} classes)"

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray) -> Explanation:
        """The explanation of the samples ``index`` selects (the sample axis is kept).

        ``index`` follows numpy's rules for indexing the sample axis: an int (negative
        counts from the end), a slice, a sequence or array of ints, or a boolean mask of
        one entry per sample; an empty selection gives an explanation of 0 samples, an
        int out of range raises ``IndexError``, as do float or multi-dimensional indices.
        """
        if isinstance(index, (bool, np.bool_)):
            raise IndexError(
                "an Explanation is indexed by an int, a slice, ints or a boolean mask of one entry per sample; "
                f"got the bool {index!r}."
            )
        n = len(self)
        if isinstance(index, (numbers.Integral, np.integer)) and not -n <= int(index) < n:
            raise IndexError(f"index {int(index)} is out of range for an Explanation of {n} samples.")
        if isinstance(index, (Sequence, np.ndarray)) and not isinstance(index, (str, bytes)):
            mask = np.asarray(index)
            if mask.dtype == bool and mask.shape != (n,):
                raise IndexError(f"a boolean index must have one entry per sample ({n}); got shape {mask.shape}.")
        # numpy decides what the index selects, so every other rule (and error) is numpy's own.
        try:
            positions = np.arange(n)[index]
        except IndexError as exc:
            raise IndexError(f"invalid index for an Explanation of {n} samples: {exc}") from None
        if positions.ndim == 0:  # one int: keep the sample axis
            positions = positions.reshape(1)
        elif positions.ndim != 1:
            raise IndexError(
                "an Explanation is indexed along its samples only: an int, a slice, a 1-D array of ints or a "
                f"boolean mask; got an index that selects shape {positions.shape}."
            )
        return replace(self, **{name: getattr(self, name)[positions] for name in _PER_SAMPLE})

    def saliency(self, size: int | tuple[int, int] = 224) -> np.ndarray:
        """Feature maps upsampled to image resolution, each normalised to [0, 1].

        Parameters
        ----------
        size : int or (int, int), default=224
            Image height and width (the embedder's ``image_size``).

        Returns
        -------
        saliency : ndarray of shape (n, k, size, size)
        """
        return upsample_maps(self.maps, size)

    def evidence_map(self) -> np.ndarray:
        """The predicted class's evidence on the grid (docs/method.md#saliency): ``Σ_j weights[:, j] · maps[:, j]``.

        Returns
        -------
        evidence : ndarray of shape (n, h, w)
        """
        return evidence_map(self.weights, self.maps)

    def to_frame(self) -> pandas.DataFrame:
        """One tidy row per sample and feature of its predicted class (needs pandas).

        See :func:`explanation_frame` for the columns.

        Returns
        -------
        frame : pandas.DataFrame
        """
        return explanation_frame(self)

    def to_shap(self, columns: ArrayLike | None = None, data: ArrayLike | None = None) -> shap.Explanation:
        """The contributions as a :class:`shap.Explanation` (needs shap), for shap's plots.

        See :func:`explanation_to_shap`.

        Parameters
        ----------
        columns : array-like of int, default=None
            The adapter channel ids of the columns, e.g. the classifier's
            ``selected_features_``; None: the features any sample's class uses.
        data : array-like of shape (n, len(columns)), default=None
            The pooled feature values shap colours by, e.g. ``clf.pooled_features(X)``
            with ``columns=clf.selected_features_``; None: the spatial means of the
            explanation's maps where the sample's class uses the feature, NaN elsewhere.

        Returns
        -------
        explanation : shap.Explanation
        """
        return explanation_to_shap(self, columns=columns, data=data)


def default_feature_name(feature: int) -> str:
    """The name of adapter channel ``feature`` when the user gave it none: ``"feature <id>"``.

    Parameters
    ----------
    feature : int
        Adapter channel id.

    Returns
    -------
    name : str
        ``"feature <id>"``.

    Examples
    --------
    >>> default_feature_name(12)
    'feature 12'
    """
    return f"feature {int(feature)}"


def resolve_feature_names(
    feature_names: Mapping[Any, str] | Sequence[str] | None, selected_features: np.ndarray
) -> dict[int, str]:
    """Check user-given feature names against the selected features and key them by channel id.

    Parameters
    ----------
    feature_names : dict, sequence of str or None
        A mapping adapter channel id -> name (some of the selected features, or
        all; keys are ints, or their decimal strings as JSON writes them), or a
        sequence of one name per selected feature in ``selected_features``
        order. None names nothing.
    selected_features : array-like of int
        The adapter channel ids that may be named (``selected_features_``).

    Returns
    -------
    names : dict of int to str
        Channel id -> name, for the named channels only.

    Raises
    ------
    ValueError
        When a key is not a selected feature, a sequence has the wrong length,
        a name is empty or two features share a name.
    TypeError
        When ``feature_names`` or a key or a name has the wrong type.

    Examples
    --------
    >>> resolve_feature_names({12: "red wing", "40": "beak"}, [3, 12, 40])
    {12: 'red wing', 40: 'beak'}
    >>> resolve_feature_names(["crown", "red wing", "beak"], [3, 12, 40])
    {3: 'crown', 12: 'red wing', 40: 'beak'}
    """
    selected = [int(f) for f in np.asarray(selected_features).ravel()]
    if feature_names is None:
        return {}
    if isinstance(feature_names, Mapping):
        names = {_channel_id(key): value for key, value in feature_names.items()}
        unknown = sorted(set(names) - set(selected))
        if unknown:
            raise ValueError(
                f"feature_names names adapter channels {unknown}, which are not selected features; "
                f"the selected features (selected_features_) are {selected}."
            )
    elif isinstance(feature_names, (Sequence, np.ndarray)) and not isinstance(feature_names, (str, bytes)):
        if len(feature_names) != len(selected):
            raise ValueError(
                f"feature_names as a sequence must hold one name per selected feature, in selected_features_ "
                f"order ({len(selected)} names); got {len(feature_names)}. Use a dict id -> name to name some."
            )
        names = dict(zip(selected, feature_names))
    else:
        raise TypeError(
            "feature_names must be a dict adapter channel id -> name, a sequence of names in "
            f"selected_features_ order, or None; got {type(feature_names).__name__}."
        )
    for feature, name in names.items():
        if not isinstance(name, str) or not name.strip():
            raise (ValueError if isinstance(name, str) else TypeError)(
                f"feature_names must give every feature a non-empty str name; feature {feature} got {name!r}."
            )
    seen: dict[str, int] = {}
    for feature, name in names.items():
        if name in seen:
            raise ValueError(f"feature_names gives features {seen[name]} and {feature} the same name {name!r}.")
        seen[name] = feature
    return names


def estimator_feature_names(estimator: Any) -> dict[int, str]:
    """A fitted classifier's ``feature_names``, checked and keyed by channel id (``{}`` if none).

    Parameters
    ----------
    estimator : object
        A fitted classifier with ``selected_features_`` and, optionally, ``feature_names``.

    Returns
    -------
    names : dict of int to str
        Channel id -> name, for the named channels only (see :func:`resolve_feature_names`).

    Examples
    --------
    >>> class Fitted:
    ...     feature_names, selected_features_ = ["crown", "wing"], np.array([4, 9])
    >>> estimator_feature_names(Fitted())
    {4: 'crown', 9: 'wing'}

    Raises ``sklearn.exceptions.NotFittedError`` for an unfitted classifier.
    """
    check_fitted(estimator)
    return resolve_feature_names(getattr(estimator, "feature_names", None), estimator.selected_features_)


def _channel_id(key: Any) -> int:
    if isinstance(key, (numbers.Integral, np.integer)) and not isinstance(key, bool):
        return int(key)
    if isinstance(key, str) and key.strip().isdecimal():
        return int(key)
    raise TypeError(f"feature_names keys must be adapter channel ids (int); got {key!r}.")


def feature_labels(features: np.ndarray, feature_names: Mapping[int, str] | None = None) -> np.ndarray:
    """Names of adapter channels ``features`` (any shape); padding (-1) gets ``""``.

    Parameters
    ----------
    features : ndarray of int
        Adapter channel ids, -1 for padding.
    feature_names : dict of int to str, default=None
        Names of some channels; the others get :func:`default_feature_name`.

    Returns
    -------
    labels : ndarray of object
        One name per entry of ``features``, of its shape.

    Examples
    --------
    >>> feature_labels(np.array([[12, 3, -1]]), {12: "red wing"})
    array([['red wing', 'feature 3', '']], dtype=object)
    """
    names = feature_names or {}
    features = np.asarray(features)
    labels = [names.get(int(f), default_feature_name(f)) if f >= 0 else "" for f in features.ravel()]
    return np.array(labels, dtype=object).reshape(features.shape)


def explanation_frame(explanation: Explanation) -> pandas.DataFrame:
    """An explanation as a tidy table: one row per sample and feature of its predicted class.

    Columns: ``sample`` (position in the explanation), ``prediction`` (the
    predicted class), ``rank`` (0 = largest contribution), ``feature`` (adapter
    channel id), ``feature_name``, ``contribution`` (additive share of the
    predicted logit), ``weight`` (head weight), ``peak_row`` and ``peak_col``
    (the patch-grid cell where the feature's map is highest; the first such
    cell in row-major order on ties). Padding entries (feature -1) have no row.

    Parameters
    ----------
    explanation : Explanation

    Returns
    -------
    frame : pandas.DataFrame
    """
    pd = _optional_import("pandas", "to_frame()", "pandas")
    features, samples, ranks = _used_entries(explanation)
    maps = np.asarray(explanation.maps)[samples, ranks]
    width = maps.shape[-1]
    peak = maps.reshape(len(maps), maps.shape[-2] * width).argmax(axis=1)
    return pd.DataFrame(
        {
            "sample": samples,
            "prediction": np.asarray(explanation.prediction)[samples],
            "rank": ranks,
            "feature": features[samples, ranks],
            # as str, so that pandas gives the column one dtype whether or not it is empty
            "feature_name": feature_labels(features[samples, ranks], explanation.feature_names).astype(str),
            "contribution": np.asarray(explanation.contributions)[samples, ranks],
            "weight": np.asarray(explanation.weights)[samples, ranks],
            "peak_row": peak // width,
            "peak_col": peak % width,
        }
    )


def explanation_to_shap(
    explanation: Explanation, *, columns: ArrayLike | None = None, data: ArrayLike | None = None
) -> shap.Explanation:
    """An explanation as a :class:`shap.Explanation` of each sample's predicted logit.

    Columns are adapter channel ids, ascending unless ``columns`` gives them (pass the
    classifier's ``selected_features_`` so that every explanation of one model has the
    same columns), named by :func:`feature_labels`. ``values[i, j]`` is the contribution
    of column ``j`` to sample ``i``'s predicted logit, 0 where the predicted class does
    not use the feature, and ``base_values`` is the class's constant, so
    ``values.sum(axis=1) + base_values`` equals ``logit`` (shap's additivity). Rows of
    samples predicted as different classes explain different logits; explain one chosen
    class for every sample when rows must be compared (a beeswarm over mixed classes
    mixes their features' effects).

    ``data`` holds the feature values shap colours its plots by: the pooled (spatially
    averaged) feature maps. An explanation knows them only for the features of each
    sample's predicted class (the spatial means of its ``maps``); elsewhere they are NaN
    (shap draws those points grey) unless ``data`` is passed, e.g.
    ``clf.pooled_features(X)`` with ``columns=clf.selected_features_``.

    Parameters
    ----------
    explanation : Explanation
    columns : array-like of int, default=None
        Distinct adapter channel ids; must include every feature the explanation uses.
    data : array-like of shape (n, n_columns), default=None

    Returns
    -------
    explanation : shap.Explanation

    Raises
    ------
    ValueError
        When ``columns`` misses a used feature or repeats one, or ``data`` has the wrong shape.
    """
    shap = _optional_import("shap", "to_shap()", "shap")
    features, samples, ranks = _used_entries(explanation)
    used = features[samples, ranks]
    if columns is None:
        columns = np.unique(used)
    else:
        columns = np.asarray(columns).astype(np.int64).ravel()
        missing = np.setdiff1d(used, columns)
        if len(np.unique(columns)) != len(columns) or len(missing):
            raise ValueError(
                f"columns must be distinct channel ids including every feature the explanation uses; "
                f"{'missing ' + str(missing.tolist()) if len(missing) else 'got repeated ids'}."
            )
    order = np.argsort(columns, kind="stable")
    positions = order[np.searchsorted(columns, used, sorter=order)]
    values = np.zeros((len(features), len(columns)), dtype=np.float64)
    values[samples, positions] = np.asarray(explanation.contributions)[samples, ranks]
    if data is None:
        pooled = np.full((len(features), len(columns)), np.nan)
        pooled[samples, positions] = np.asarray(explanation.maps, dtype=np.float64)[samples, ranks].mean(axis=(-2, -1))
    else:
        pooled = np.asarray(data, dtype=np.float64)
        if pooled.shape != values.shape:
            raise ValueError(f"data must have shape (n, n_columns) = {values.shape}; got {pooled.shape}.")
    return shap.Explanation(
        values=values,
        base_values=np.asarray(explanation.intercept, dtype=np.float64),
        data=pooled,
        feature_names=list(feature_labels(columns, explanation.feature_names)),
    )


def class_summary(
    classes: np.ndarray,
    selected_features: np.ndarray,
    weights: np.ndarray,
    bias: np.ndarray | None = None,
    feature_names: Mapping[int, str] | None = None,
    title: str | None = None,
) -> str:
    """A text table of each class and the features it uses, with their weights.

    Parameters
    ----------
    classes : array-like of shape (n_classes,)
    selected_features : array-like of shape (n_selected,)
        Adapter channel ids of the columns of ``weights``.
    weights : array-like of shape (n_classes, n_selected)
        Head weights; a class uses the features of its non-zero entries.
    bias : array-like of shape (n_classes,), default=None
        Constant of each class; shown as a column when any is non-zero.
    feature_names : dict of int to str, default=None
    title : str, default=None
        A first line above the table.

    Returns
    -------
    text : str
        One line per class; its features ordered by decreasing absolute weight
        (then by channel id), each written ``name (weight)``.

    Examples
    --------
    >>> print(class_summary(["cat", "dog"], [3, 12], [[1, 1], [0, 1]], feature_names={12: "ears"}))
    class  features (weight)
    -----  -------------------------
    cat    feature 3 (+1), ears (+1)
    dog    ears (+1)
    """
    classes = np.asarray(classes)
    selected = np.asarray(selected_features)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(classes), len(selected)):
        raise ValueError(
            f"weights must have shape (n_classes, n_selected) = ({len(classes)}, {len(selected)}); "
            f"got {weights.shape}."
        )
    show_bias = bias is not None and np.any(np.asarray(bias) != 0)
    header = ["class", "features (weight)"] + (["bias"] if show_bias else [])
    lines = []
    for c, row in enumerate(weights):
        used = np.flatnonzero(row)
        used = used[np.lexsort((selected[used], -np.abs(row[used])))]
        names = feature_labels(selected[used], feature_names)
        cells = [str(classes[c]), ", ".join(f"{name} ({row[j]:+.3g})" for name, j in zip(names, used)) or "(none)"]
        if show_bias:
            cells.append(f"{float(np.asarray(bias)[c]):+.3g}")
        lines.append(cells)
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    render = lambda cells: "  ".join(cell.ljust(w) for cell, w in zip(cells, widths)).rstrip()  # noqa: E731
    table = [render(header), "  ".join("-" * w for w in widths), *(render(cells) for cells in lines)]
    return "\n".join(([title] if title else []) + table)


def _used_entries(explanation: Explanation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(features, samples, ranks)``: the feature ids and the positions that are not padding."""
    features = np.asarray(explanation.features)
    samples, ranks = np.nonzero(features >= 0)
    return features, samples, ranks


def _optional_import(module: str, what: str, package: str):
    try:
        return __import__(module)
    except ImportError as exc:
        raise ImportError(f"{what} needs {package}, which is not installed; install it with `pip install {package}`.") from exc
