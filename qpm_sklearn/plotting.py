"""Figures of explanations, class comparisons and the global assignment (needs matplotlib).

matplotlib is an optional dependency (``pip install qpm_sklearn[plot]``). The functions build
:class:`matplotlib.figure.Figure` objects directly (no pyplot state), so they work from a plain
script and save with ``fig.savefig("file.png")`` on any backend, Agg included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ._utils import check_fitted
from .explanation import Explanation, estimator_feature_names, evidence_map, upsample_maps

if TYPE_CHECKING:
    import matplotlib.figure

    from . import classifier
    from .counterfactual import Counterfactual
    from .report import FeatureAtlas

__all__ = [
    "plot_explanation",
    "plot_class_comparison",
    "plot_assignment",
    "plot_feature",
    "plot_class",
    "plot_counterfactual",
]

_OVERLAY_ALPHA = 0.55
_PIXELS_PER_CELL = 14  # a ViT-B/14 patch: the blank canvas has the size of the image the grid came from


def _figure(**kwargs):
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "qpm_sklearn.plotting needs matplotlib; install it with `pip install qpm_sklearn[plot]`."
        ) from exc
    return Figure(**kwargs)


def _name(key, names, default):
    """``names[key]`` for a mapping or sequence of names, else ``default``."""
    if names is None:
        return default
    if isinstance(names, dict):
        return str(names.get(key, default))
    try:
        return str(names[int(key)])
    except (IndexError, TypeError, ValueError):
        return default


def _class_name(label, classes, class_names):
    """Name of class ``label``: ``class_names`` is a mapping label -> name or a sequence in ``classes`` order."""
    if isinstance(class_names, dict):
        return _name(label, class_names, str(label))
    position = np.flatnonzero(np.asarray(classes) == label)
    return _name(position[0], class_names, str(label)) if len(position) else str(label)


def _feature_name(feature, feature_names):
    """Name of adapter channel ``feature``: mapping id -> name or sequence indexed by channel id."""
    return _name(feature, feature_names, f"feature {int(feature)}")


def _check_image(image, name="image"):
    image = np.asarray(image)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"{name} must be an array of shape (H, W), (H, W, 3) or (H, W, 4); got shape {image.shape}.")
    if image.size == 0:
        raise ValueError(f"{name} is empty: shape {image.shape}; expected an image of at least 1 x 1 pixels.")
    if image.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers (uint8, or floats in [0, 1]); got dtype {image.dtype}.")
    if image.dtype.kind == "f":
        image = np.clip(image, 0.0, 1.0)
    return image


def _canvas(image, grid):
    """The background (image or blank canvas) and its (H, W)."""
    if image is None:
        size = (grid[0] * _PIXELS_PER_CELL, grid[1] * _PIXELS_PER_CELL)
        return np.ones((*size, 3)), size
    image = _check_image(image)
    return image, image.shape[:2]


def _overlay(ax, background, heat, title):
    ax.imshow(background, cmap="gray" if background.ndim == 2 else None)
    ax.imshow(heat, cmap="jet", alpha=_OVERLAY_ALPHA, vmin=0.0, vmax=1.0)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_explanation(
    explanation: Explanation,
    index: int = 0,
    image: npt.ArrayLike | None = None,
    class_names: Sequence[str] | dict[Any, str] | None = None,
    feature_names: Sequence[str] | dict[int, str] | None = None,
    true_label: object = None,
) -> matplotlib.figure.Figure:
    """Figure of one explained prediction: image, class evidence and each feature's saliency.

    Panels, left to right: the image (a blank canvas when none is given); the class evidence
    ``sum_j w_j map_j`` (the GradCAM-like map that Plausibility scores, min-shifted and
    normalised); then one panel per feature of the predicted class, largest contribution first,
    with its saliency (bilinear upsampling, min-max normalised per map) and its contribution to
    the logit. The title gives the predicted class, its probability, the true class when
    ``true_label`` is given (and says "misclassified" when they differ) and the logit
    decomposition. A footnote recalls that a contribution compares the feature with its value on
    an average training image (the features are standardised), so a prediction of low confidence
    can have only negative contributions.

    Parameters
    ----------
    explanation : Explanation
        From :meth:`QPMClassifier.explain`.
    index : int, default=0
        Which sample of the explanation.
    image : array-like of shape (H, W) or (H, W, 3), default=None
        The sample's image (uint8 or floats in [0, 1]), squashed the way the embedder saw it.
    class_names : sequence or dict, default=None
        Names in ``explanation.classes`` order, or a mapping label -> name.
    feature_names : sequence or dict, default=None
        Names indexed by adapter channel id, or a mapping id -> name; by default the
        explanation's own ``feature_names`` (the classifier's).
    true_label : label, default=None
        The sample's true class, if known: shown in the title.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plot_explanation(clf.explain(X[:1]), true_label=y[0])  # doctest: +SKIP
    >>> fig.savefig("explanation.png")  # doctest: +SKIP
    """
    if feature_names is None:
        feature_names = explanation.feature_names
    n = len(explanation.prediction)
    if not isinstance(index, (int, np.integer)) or not -n <= index < n:
        raise ValueError(f"index must be an integer in [{-n}, {n}); got {index!r}.")
    features = np.asarray(explanation.features[index])
    valid = features >= 0
    maps = np.asarray(explanation.maps[index])[valid]
    contributions = np.asarray(explanation.contributions[index])[valid]
    weights = np.asarray(explanation.weights[index])[valid]
    background, size = _canvas(image, maps.shape[-2:])

    evidence = evidence_map(weights, maps)
    panels = 2 + len(maps)
    fig = _figure(figsize=(2.3 * panels, 2.9), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    axes[0].imshow(background, cmap="gray" if background.ndim == 2 else None)
    axes[0].set_title("image" if image is not None else "(no image)", fontsize=9)
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    _overlay(axes[1], background, upsample_maps(evidence, size), "class evidence\nΣ w·map")
    saliency = upsample_maps(maps, size)
    for ax, feature, contribution, heat in zip(axes[2:], features[valid], contributions, saliency):
        _overlay(ax, background, heat, f"{_feature_name(feature, feature_names)}\ncontribution {contribution:+.2f}")

    label = explanation.prediction[index]
    probability = float(np.max(explanation.proba[index]))  # the prediction is the arg-max class
    verdict = ""
    if true_label is not None:
        correct = label == true_label
        verdict = f"; true {_class_name(true_label, explanation.classes, class_names)}" + (
            "" if correct else " (misclassified)"
        )
    fig.suptitle(
        f"predicted {_class_name(label, explanation.classes, class_names)} (p = {probability:.2f}){verdict}\n"
        f"logit {float(explanation.logit[index]):.2f} = {float(explanation.intercept[index]):.2f} "
        f"+ Σ contributions {contributions.sum():.2f}",
        fontsize=10,
    )
    fig.supxlabel(
        "contribution = weight × (feature − its training mean) / its training std:\n"
        "+ stronger, − weaker than on an average training image",
        fontsize=8,
    )
    return fig


def plot_class_comparison(
    estimator: classifier.QPMClassifier,
    a: object,
    b: object,
    X: npt.ArrayLike | None = None,
    images: Sequence[npt.ArrayLike] | None = None,
    class_names: Sequence[str] | dict[Any, str] | None = None,
    feature_names: Sequence[str] | dict[int, str] | None = None,
) -> matplotlib.figure.Figure:
    """Figure of the features two classes share and those that tell them apart.

    The top panel marks, for each feature used by class ``a`` or ``b`` (shared ones first), which
    of the two classes uses it. With example inputs ``X`` (one sample of each class), a row per
    class below shows where each of its features fires on its example.

    Parameters
    ----------
    estimator : fitted QPMClassifier
        Read through ``compare_classes(a, b)``, ``classes_``, ``selected_features_`` and, with
        ``X``, ``feature_maps``.
    a, b : labels
        The two classes.
    X : array-like of shape (2, ...), default=None
        One example input of class ``a`` then one of class ``b`` (as ``estimator`` takes them).
    images : sequence of 2 images, default=None
        The examples' images, under the maps (a blank canvas when omitted).
    class_names, feature_names : sequence or dict, default=None
        As in :func:`plot_explanation`; feature names default to the estimator's ``feature_names``.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plot_class_comparison(clf, 0, 1, X=X[[i_0, i_1]])  # doctest: +SKIP
    """
    check_fitted(estimator)
    if feature_names is None:
        feature_names = estimator_feature_names(estimator)
    comparison = estimator.compare_classes(a, b)
    groups = [("shared", comparison["shared"]), ("only_a", comparison["only_a"]), ("only_b", comparison["only_b"])]
    columns = [(int(f), group) for group, ids in groups for f in np.asarray(ids)]
    if not columns:
        raise ValueError(f"classes {a!r} and {b!r} use no features; nothing to compare.")
    name_a = _class_name(a, estimator.classes_, class_names)
    name_b = _class_name(b, estimator.classes_, class_names)
    # 0 = unused, 1 = distinguishing, 2 = shared.
    usage = np.zeros((2, len(columns)))
    for j, (_, group) in enumerate(columns):
        if group == "shared":
            usage[:, j] = 2
        else:
            usage[0 if group == "only_a" else 1, j] = 1

    with_maps = X is not None
    fig = _figure(figsize=(max(1.9 * len(columns), 5.0), 2.2 + (4.4 if with_maps else 0)), layout="constrained")
    grid = fig.add_gridspec(3 if with_maps else 1, len(columns), height_ratios=[0.8, 1, 1] if with_maps else None)
    top = fig.add_subplot(grid[0, :])
    top.imshow(usage, cmap="Greens", vmin=0, vmax=2, aspect="auto")
    top.set_yticks([0, 1], [name_a, name_b])
    top.set_xticks(range(len(columns)), [_feature_name(f, feature_names) for f, _ in columns], rotation=30, fontsize=8)
    for j, (_, group) in enumerate(columns):
        for row in range(2):
            if usage[row, j]:
                top.text(j, row, "shared" if group == "shared" else "only", ha="center", va="center", fontsize=8)
    top.set_title(
        f"{name_a} vs {name_b}: {len(comparison['shared'])} shared, {len(comparison['only_a'])} only {name_a}, "
        f"{len(comparison['only_b'])} only {name_b}",
        fontsize=10,
    )
    if X is not None:
        maps = np.asarray(estimator.feature_maps(X))
        if maps.shape[0] != 2:
            raise ValueError(f"X must hold exactly 2 examples (one of {a!r}, one of {b!r}); got {maps.shape[0]}.")
        if images is not None and len(images) != 2:
            raise ValueError(f"images must hold 2 images (one per example); got {len(images)}.")
        channel = {int(f): k for k, f in enumerate(estimator.selected_features_)}
        for row in range(2):
            background, size = _canvas(None if images is None else images[row], maps.shape[-2:])
            for j, (feature, _) in enumerate(columns):
                ax = fig.add_subplot(grid[1 + row, j])
                if usage[row, j]:
                    heat = upsample_maps(maps[row, channel[feature]], size)
                    _overlay(ax, background, heat, f"{(name_a, name_b)[row]}: {_feature_name(feature, feature_names)}")
                else:
                    ax.set_axis_off()
    return fig


def plot_assignment(
    estimator: classifier.QPMClassifier,
    class_names: Sequence[str] | dict[Any, str] | None = None,
    feature_names: Sequence[str] | dict[int, str] | None = None,
) -> matplotlib.figure.Figure:
    """Figure of the global class x feature assignment (``assignment_``).

    Rows are classes, columns the selected features (``selected_features_`` order); a filled cell
    means the class uses the feature. Tick labels are written when there are at most 60 rows or
    columns.

    Parameters
    ----------
    estimator : fitted QPMClassifier
    class_names, feature_names : sequence or dict, default=None
        As in :func:`plot_explanation`; feature names default to the estimator's ``feature_names``.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> plot_assignment(clf).savefig("assignment.png")  # doctest: +SKIP
    """
    check_fitted(estimator)
    if feature_names is None:
        feature_names = estimator_feature_names(estimator)
    assignment = np.asarray(estimator.assignment_)
    selected = np.asarray(estimator.selected_features_)
    classes = np.asarray(estimator.classes_)
    if assignment.shape != (len(classes), len(selected)):
        raise ValueError(
            f"estimator.assignment_ must have shape (n_classes, n_selected) = {(len(classes), len(selected))}; "
            f"got {assignment.shape}."
        )
    n_classes, n_selected = assignment.shape
    # At least 4.5 inches wide, so that the title of a small model is not cut.
    width = min(max(2 + 0.3 * n_selected, 4.5), 20)
    fig = _figure(figsize=(width, min(1.5 + 0.3 * n_classes, 20)), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(assignment != 0, cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    if n_selected <= 60:
        ax.set_xticks(range(n_selected), [_feature_name(f, feature_names) for f in selected], rotation=90, fontsize=7)
    if n_classes <= 60:
        ax.set_yticks(range(n_classes), [_class_name(c, classes, class_names) for c in classes], fontsize=7)
    ax.set_xlabel("selected feature")
    ax.set_ylabel("class")
    per_class = np.count_nonzero(assignment, axis=1)
    ax.set_title(
        f"assignment: {n_classes} classes x {n_selected} features\n{per_class.min()}-{per_class.max()} per class",
        fontsize=10,
    )
    return fig


def _atlas_images(atlas, images, rows, image_size, preprocessing):
    """The images of ``rows`` squash-resized as the embedder saw them (checked against the atlas)."""
    from .images import check_images
    from .report import load_report_images

    checked = check_images(images)
    if len(checked) != atlas.n_samples:
        raise ValueError(
            f"images must hold one image per row of the X the atlas was computed on ({atlas.n_samples}); "
            f"got {len(checked)}."
        )
    return load_report_images(checked, rows, atlas.grid, image_size, preprocessing)


def _blank_axis(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def plot_feature(
    clf_or_atlas: classifier.QPMClassifier | FeatureAtlas,
    feature: int,
    images: Any,
    *,
    X: npt.ArrayLike | None = None,
    k: int | None = None,
    image_size: int | None = None,
    preprocessing: str = "imagenet",
    feature_names: Sequence[str] | dict[int, str] | None = None,
    class_names: Sequence[str] | dict[Any, str] | None = None,
) -> matplotlib.figure.Figure:
    """Figure of one feature: its top-k images with the map overlaid, and a crop around each peak.

    Top row: the images where the feature's pooled activation is largest (strongest first),
    squash-resized as the embedder saw them, with the feature's map (bilinear, min-max
    normalised per image) overlaid and the peak cell outlined. Bottom row: a crop of five
    grid cells around the peak. The title names the feature and the classes that use it.

    Parameters
    ----------
    clf_or_atlas : QPMClassifier or FeatureAtlas
        A :func:`qpm_sklearn.report.feature_atlas`, or a fitted classifier (then ``X`` is
        required and the atlas is computed).
    feature : int
        Adapter channel id (one of ``selected_features_``).
    images : sequence of paths / PIL images / uint8 arrays, or uint8 array (n, H, W[, 3])
        One image per row of the atlas's ``X``.
    X : array-like, default=None
        Patch embeddings, with a classifier.
    k : int, default=None
        Images shown; None: all the atlas keeps (8 when the atlas is computed here).
    image_size : int, default=None
        The embedder's ``image_size``; None: 14 pixels per grid cell.
    preprocessing : str, default="imagenet"
        The embedder's ``preprocessing`` (its resampling filter).
    feature_names, class_names : sequence or dict, default=None
        As in :func:`plot_explanation`; feature names default to the atlas's.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> atlas = feature_atlas(clf, X_test, y=y_test)  # doctest: +SKIP
    >>> plot_feature(atlas, atlas.features[0], test_paths).savefig("feature.png")  # doctest: +SKIP
    """
    from matplotlib.patches import Rectangle

    from .report import FeatureAtlas, crop_box, feature_atlas

    if isinstance(clf_or_atlas, FeatureAtlas):
        atlas = clf_or_atlas
    else:
        if X is None:
            raise ValueError("plot_feature needs X (the embeddings of images) when given a classifier, not an atlas.")
        atlas = feature_atlas(clf_or_atlas, X, k=8 if k is None else k)
    index = atlas.feature_index(feature)
    shown = atlas.k if k is None else k
    if not isinstance(shown, (int, np.integer)) or not 1 <= shown <= atlas.k:
        raise ValueError(f"k must be an int in [1, {atlas.k}] (the atlas keeps {atlas.k}); got {k!r}.")
    if feature_names is None:
        feature_names = atlas.feature_names
    rows = atlas.top_samples[index, :shown]
    pixels = _atlas_images(atlas, images, rows, image_size, preprocessing)
    side = pixels.shape[1]
    heat = upsample_maps(atlas.top_maps[index, :shown], side)
    cell = side / atlas.grid[0]
    fig = _figure(figsize=(1.9 * shown, 4.2), layout="constrained")
    axes = fig.subplots(2, shown, squeeze=False)
    for rank in range(shown):
        peak = atlas.peaks[index, rank]
        _overlay(axes[0, rank], pixels[rank], heat[rank], f"#{rank + 1} row {int(rows[rank])}\n{atlas.top_scores[index, rank]:.3g}")
        axes[0, rank].add_patch(Rectangle((peak[1] * cell - 0.5, peak[0] * cell - 0.5), cell, cell, fill=False,
                                          edgecolor="white", linewidth=1.5))  # fmt: skip
        top, left, bottom, right = crop_box(peak, atlas.grid, side)
        axes[1, rank].imshow(pixels[rank][top:bottom, left:right])
        _blank_axis(axes[1, rank])
    axes[1, 0].set_ylabel("around the peak", fontsize=8)
    users = [_class_name(c, atlas.classes, class_names) for c in atlas.classes[atlas.classes_of[index]]]
    listed = ", ".join(users[:8]) + (f" and {len(users) - 8} more" if len(users) > 8 else "")
    fig.suptitle(f"{_feature_name(feature, feature_names)} (channel {int(feature)}): top {shown} of "
                 f"{atlas.n_samples} images\nused by {listed or 'no class'}", fontsize=10)  # fmt: skip
    return fig


def plot_class(
    clf: classifier.QPMClassifier,
    label: object,
    atlas: FeatureAtlas,
    images: Any,
    *,
    n_images: int | None = 4,
    image_size: int | None = None,
    preprocessing: str = "imagenet",
    feature_names: Sequence[str] | dict[int, str] | None = None,
    class_names: Sequence[str] | dict[Any, str] | None = None,
) -> matplotlib.figure.Figure:
    """The per-class panel: each of the class's features (named, with its weight) on the class's typical images.

    Rows are the class's features, largest absolute weight first; columns its most typical
    correctly classified images (largest margin, from ``feature_atlas(..., y=y)``), each
    with the row's feature map overlaid.

    Parameters
    ----------
    clf : QPMClassifier
        The fitted classifier the atlas was computed for.
    label : class label
        One of ``classes_``.
    atlas : FeatureAtlas
        From :func:`qpm_sklearn.report.feature_atlas` with ``y``.
    images : sequence of paths / PIL images / uint8 arrays, or uint8 array (n, H, W[, 3])
        One image per row of the atlas's ``X``.
    n_images : int or None, default=4
        Typical images shown (at most the atlas's ``k``); None: all.
    image_size : int, default=None
        The embedder's ``image_size``; None: 14 pixels per grid cell.
    preprocessing : str, default="imagenet"
    feature_names, class_names : sequence or dict, default=None
        As in :func:`plot_explanation`; feature names default to the classifier's.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> atlas = feature_atlas(clf, X_test, y=y_test)  # doctest: +SKIP
    >>> plot_class(clf, "Brewer_Blackbird", atlas, test_paths).savefig("class.png")  # doctest: +SKIP
    """
    if atlas.class_examples is None or atlas.class_maps is None:
        raise ValueError("atlas has no class examples: compute it with feature_atlas(clf, X, y=y).")
    if not np.array_equal(atlas.features, clf.selected_features_) or not np.array_equal(atlas.classes, clf.classes_):
        raise ValueError("atlas was not computed for this classifier (other features or classes).")
    matches = np.flatnonzero(atlas.classes == label)
    if len(matches) != 1:
        raise ValueError(f"label must be one of classes_ {atlas.classes.tolist()}; got {label!r}.")
    c = int(matches[0])
    limit = atlas.k if n_images is None else n_images
    if not isinstance(limit, (int, np.integer)) or limit < 1:
        raise ValueError(f"n_images must be a positive int or None; got {n_images!r}.")
    if feature_names is None:
        feature_names = estimator_feature_names(clf)
    examples = [int(r) for r in atlas.class_examples[c, :limit] if r >= 0]
    used = [int(i) for i in atlas.class_features[c] if i >= 0]
    name = _class_name(label, atlas.classes, class_names)
    if not examples:
        raise ValueError(f"class {name!r} has no correctly classified row in the atlas's X: nothing to show.")
    pixels = _atlas_images(atlas, images, examples, image_size, preprocessing)
    side = pixels.shape[1]
    fig = _figure(figsize=(1.9 * len(examples) + 0.6, 1.9 * len(used) + 0.8), layout="constrained")
    axes = fig.subplots(len(used), len(examples), squeeze=False)
    for j, i in enumerate(used):
        heat = upsample_maps(atlas.class_maps[c, : len(examples), j], side)
        feature = int(atlas.features[i])
        for e in range(len(examples)):
            title = f"row {examples[e]}" if j == 0 else ""
            _overlay(axes[j, e], pixels[e], heat[e], title)
        axes[j, 0].set_ylabel(f"{_feature_name(feature, feature_names)}\nweight {atlas.class_weights[c, i]:+.3g}",
                              fontsize=8)  # fmt: skip
    fig.suptitle(f"class {name}: its {len(used)} features on its most typical images", fontsize=10)
    return fig


def plot_counterfactual(counterfactual: Counterfactual, index: int = 0, *, standardised: bool = True) -> matplotlib.figure.Figure:
    """Bar chart of one sample's counterfactual: the change each target feature would need on its own.

    Bars are the changes (in training standard deviations, or raw pooled units); features that
    cannot make the target win on their own are listed as impossible, and the smallest change is
    highlighted.

    Parameters
    ----------
    counterfactual : Counterfactual
        From :meth:`QPMClassifier.counterfactual <qpm_sklearn.QPMClassifier.counterfactual>`.
    index : int, default=0
        The sample to draw.
    standardised : bool, default=True
        Changes in standard deviations (``delta_standardised``) or raw (``delta``).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> plot_counterfactual(clf.counterfactual(X, target=3), index=0).savefig("cf.png")  # doctest: +SKIP
    """
    n = len(counterfactual)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not -n <= index < n:
        raise ValueError(f"index must be an int in [{-n}, {n}); got {index!r}.")
    features = np.asarray(counterfactual.features[index])
    used = features >= 0
    values = np.asarray((counterfactual.delta_standardised if standardised else counterfactual.delta)[index])[used]
    features = features[used]
    names = [_feature_name(int(f), counterfactual.feature_names) for f in features]
    finite = np.isfinite(values)
    best = int(counterfactual.best[index])
    fig = _figure(figsize=(5.5, 1.2 + 0.4 * max(len(features), 1)), layout="constrained")
    ax = fig.add_subplot()
    colours = ["tab:orange" if position == best else "tab:blue" for position in range(len(features))]
    ax.barh(range(len(features)), np.where(finite, values, 0.0), color=colours)
    labels = [name if ok else f"{name} (impossible)" for name, ok in zip(names, finite)]
    ax.set_yticks(range(len(features)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("change needed (standard deviations)" if standardised else "change needed (raw pooled activation)")
    ax.set_title(
        f"sample {index}: predicted {counterfactual.prediction[index]!r}, to become {counterfactual.target[index]!r}",
        fontsize=10,
    )
    return fig
