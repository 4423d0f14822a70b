"""Explanation: indexing, the tidy frame, the shap bridge, feature names and the class summary."""

import sys

import numpy as np
import pytest

from qpm_sklearn import Explanation
from qpm_sklearn.explanation import class_summary, feature_labels, resolve_feature_names


def _explanation(n=5, k=3, grid=(3, 4), seed=0, feature_names=None):
    """A hand-built explanation; sample 1 uses one feature fewer (padding), as SLDD classes may."""
    rng = np.random.default_rng(seed)
    features = rng.choice(np.arange(20, 40), size=(n, k))
    features[1, -1] = -1
    contributions = np.where(features >= 0, rng.normal(size=(n, k)), 0.0)
    weights = np.where(features >= 0, rng.uniform(0.5, 2.0, size=(n, k)), 0.0)
    maps = np.where((features >= 0)[:, :, None, None], rng.uniform(size=(n, k, *grid)), 0.0)
    intercept = rng.normal(size=n)
    proba = rng.dirichlet(np.ones(4), size=n)
    return Explanation(
        prediction=np.array(list("abcd"))[proba.argmax(axis=1)],
        proba=proba,
        classes=np.array(list("abcd")),
        logit=intercept + contributions.sum(axis=1),
        intercept=intercept,
        features=features,
        contributions=contributions,
        weights=weights,
        maps=maps,
        feature_names=feature_names,
    )


def _assert_samples(part, whole, rows):
    for name in ("prediction", "proba", "logit", "intercept", "features", "contributions", "weights", "maps"):
        np.testing.assert_array_equal(getattr(part, name), getattr(whole, name)[rows], err_msg=name)
    np.testing.assert_array_equal(part.classes, whole.classes)
    assert part.feature_names == whole.feature_names


def test_indexing_keeps_the_sample_axis():
    e = _explanation(feature_names={21: "wing"})
    assert len(e) == 5
    _assert_samples(e[2], e, [2])
    _assert_samples(e[-1], e, [4])
    _assert_samples(e[np.int64(0)], e, [0])
    _assert_samples(e[1:4], e, [1, 2, 3])
    _assert_samples(e[::-2], e, [4, 2, 0])
    _assert_samples(e[[3, 0]], e, [3, 0])
    mask = np.array([True, False, False, True, True])
    _assert_samples(e[mask], e, [0, 3, 4])
    assert e[2].saliency(6).shape == (1, 3, 6, 6) and e[2:4].evidence_map().shape == (2, 3, 4)
    parts = list(e)  # __len__ + __getitem__ raising IndexError make it iterable
    assert len(parts) == 5 and all(len(p) == 1 for p in parts)
    _assert_samples(parts[3], e, [3])


def test_repr_is_short():
    assert repr(_explanation()[1:3]) == "Explanation(2 samples, 3 features each, 3x4 maps, 4 classes)"


@pytest.mark.parametrize("index", [5, -6])
def test_index_out_of_range(index):
    with pytest.raises(IndexError, match="out of range"):
        _explanation()[index]


@pytest.mark.parametrize("index", ["a", 1.5, [[0, 1]], True])
def test_index_of_a_wrong_type(index):
    with pytest.raises((TypeError, IndexError), match="index|boolean"):
        _explanation()[index]


def test_boolean_mask_of_the_wrong_length():
    with pytest.raises(IndexError, match="one entry per sample"):
        _explanation()[np.array([True, False])]


def test_to_frame_matches_a_loop_over_samples_and_features():
    pd = pytest.importorskip("pandas")
    e = _explanation(feature_names={int(f): f"name {f}" for f in np.unique(_explanation().features[0])})
    frame = e.to_frame()
    expected = []
    for i in range(len(e)):
        for j in range(e.features.shape[1]):
            feature = int(e.features[i, j])
            if feature < 0:
                continue
            grid = e.maps[i, j]
            best = max((grid[r, c], -r, -c) for r in range(grid.shape[0]) for c in range(grid.shape[1]))
            expected.append(
                {
                    "sample": i,
                    "prediction": e.prediction[i],
                    "rank": j,
                    "feature": feature,
                    "feature_name": e.feature_names.get(feature, f"feature {feature}"),
                    "contribution": e.contributions[i, j],
                    "weight": e.weights[i, j],
                    "peak_row": -best[1],
                    "peak_col": -best[2],
                }
            )
    expected = pd.DataFrame(expected)
    assert len(frame) == 5 * 3 - 1  # the padded entry has no row
    pd.testing.assert_frame_equal(frame, expected, check_dtype=False)


def test_to_frame_of_a_slice_numbers_samples_from_zero():
    pytest.importorskip("pandas")
    frame = _explanation()[3:5].to_frame()
    assert sorted(set(frame["sample"])) == [0, 1]


def test_to_frame_without_pandas_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        _explanation().to_frame()


def test_to_shap_is_additive_per_predicted_logit():
    shap = pytest.importorskip("shap")
    e = _explanation(feature_names={25: "beak"})
    sv = e.to_shap()
    assert isinstance(sv, shap.Explanation)
    columns = sorted({int(f) for f in e.features.ravel() if f >= 0})
    assert list(sv.feature_names) == [("beak" if f == 25 else f"feature {f}") for f in columns]
    np.testing.assert_allclose(sv.values.sum(axis=1) + sv.base_values, e.logit)
    for i in range(len(e)):
        for j, f in enumerate(columns):
            uses = [r for r in range(e.features.shape[1]) if e.features[i, r] == f]
            assert sv.values[i, j] == (e.contributions[i, uses[0]] if uses else 0.0)
    assert sv[0].values.shape == (len(columns),)  # shap's own indexing works on the result


def test_to_shap_without_shap_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "shap", None)
    with pytest.raises(ImportError, match="pip install shap"):
        _explanation().to_shap()


def test_resolve_feature_names_forms_and_errors():
    selected = np.array([3, 12, 40])
    assert resolve_feature_names(None, selected) == {}
    assert resolve_feature_names({np.int64(12): "wing", "3": "crown"}, selected) == {12: "wing", 3: "crown"}
    assert resolve_feature_names(("a", "b", "c"), selected) == {3: "a", 12: "b", 40: "c"}
    assert resolve_feature_names(np.array(["a", "b", "c"]), selected) == {3: "a", 12: "b", 40: "c"}
    with pytest.raises(ValueError, match=r"channels \[7\].*selected features .*\[3, 12, 40\]"):
        resolve_feature_names({7: "x"}, selected)
    with pytest.raises(ValueError, match="3 names.*got 2"):
        resolve_feature_names(["a", "b"], selected)
    with pytest.raises(ValueError, match="same name 'a'"):
        resolve_feature_names({3: "a", 40: "a"}, selected)
    with pytest.raises(ValueError, match="non-empty"):
        resolve_feature_names({3: " "}, selected)
    with pytest.raises(TypeError, match="non-empty str"):
        resolve_feature_names({3: 5}, selected)
    with pytest.raises(TypeError, match="channel ids"):
        resolve_feature_names({"wing": "x"}, selected)
    with pytest.raises(TypeError, match="got str"):
        resolve_feature_names("abc", selected)


def test_feature_labels_default_and_padding():
    labels = feature_labels(np.array([[5, -1], [6, 5]]), {6: "six"})
    assert labels.tolist() == [["feature 5", ""], ["six", "feature 5"]]


def test_class_summary_orders_by_weight_and_shows_a_bias():
    text = class_summary(
        np.array([10, 20]),
        np.array([4, 9, 30]),
        np.array([[0.5, -2.0, 0.0], [1.0, 1.0, 1.0]]),
        bias=np.array([0.25, 0.0]),
        feature_names={30: "tail"},
        title="model",
    )
    assert text.splitlines() == [
        "model",
        "class  features (weight)                          bias",
        "-----  -----------------------------------------  -----",
        "10     feature 9 (-2), feature 4 (+0.5)           +0.25",
        "20     feature 4 (+1), feature 9 (+1), tail (+1)  +0",
    ]
    with pytest.raises(ValueError, match=r"shape \(n_classes, n_selected\) = \(2, 3\)"):
        class_summary([1, 2], [4, 9, 30], np.ones((2, 2)))


def test_upsample_maps_is_half_pixel_bilinear_then_min_max():
    from qpm_sklearn.explanation import upsample_maps

    grid = np.array([[0.0, 1.0], [2.0, 3.0]])
    # align_corners=False at scale 2: source coordinates (i + 0.5) / 2 - 0.5, clamped to the grid
    coords = np.clip((np.arange(4) + 0.5) / 2 - 0.5, 0, 1)
    reference = np.array([[(1 - y) * ((1 - x) * grid[0, 0] + x * grid[0, 1]) + y * ((1 - x) * grid[1, 0] + x * grid[1, 1])
                           for x in coords] for y in coords])  # fmt: skip
    reference = (reference - reference.min()) / (reference.max() - reference.min())
    np.testing.assert_allclose(upsample_maps(grid[None], 4)[0], reference, atol=1e-6)
    assert upsample_maps(np.ones((3, 2, 2)), (5, 7)).shape == (3, 5, 7)
    assert not upsample_maps(np.ones((2, 2)), np.int64(3)).any()  # a constant map becomes zeros
    for bad in (0, (4,), (4, 0), 2.5, "8", (2, 3, 4)):
        with pytest.raises(ValueError, match="size must be a positive int"):
            upsample_maps(grid, bad)


def test_figures_use_the_explanations_feature_names():
    pytest.importorskip("matplotlib")
    from qpm_sklearn.plotting import plot_explanation

    e = _explanation()
    named = int(e.features[0, 0])
    e = _explanation(feature_names={named: "red crown"})
    titles = [ax.get_title() for ax in plot_explanation(e, index=0).axes]
    assert any(title.startswith("red crown\n") for title in titles)
    titles = [ax.get_title() for ax in plot_explanation(e, index=0, feature_names={}).axes]  # explicit names win
    assert not any("red crown" in title for title in titles)
