"""Editing a fitted model, interventions, counterfactuals and explain(target=) on tiny models."""

import json
import pickle

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from qpm_sklearn import QPMClassifier
from qpm_sklearn.counterfactual import head_logits, single_feature_counterfactuals

SETTINGS = dict(n_features=12, n_selected=6, n_per_class=2, hidden_size=16, n_layers=2, dense_epochs=4,
                sparse_epochs=2, random_state=0, device="cpu")


def data(seed=0, n_per=20):
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(3 * n_per, 3, 3, 8)).astype(np.float32)
    y = np.repeat(np.array(["a", "b", "c"]), n_per)
    X[y == "b", :2] += 2.0
    X[y == "c", 2:] += 2.0
    return X, y


@pytest.fixture(scope="module")
def fitted():
    X, y = data()
    return QPMClassifier(**SETTINGS).fit(X, y), X, y


def hand_logits(clf, pooled):
    """The head by hand: W (f - mean) / max(std, 1e-6) + b, in float64."""
    standardised = (pooled - clf.feature_mean_.astype(np.float64)) / np.maximum(clf.feature_std_.astype(np.float64), 1e-6)
    return standardised @ clf.sparse_weight_.astype(np.float64).T + clf.sparse_bias_


def test_edit_without_constraints_keeps_the_selection_and_leaves_the_original(fitted, count_stages):
    clf, X, y = fitted
    before = {name: np.copy(getattr(clf, name)) for name in ("selected_features_", "sparse_weight_", "feature_mean_")}
    params = clf.get_params()
    edited = clf.edit(X, y)
    assert edited is not clf
    assert "dense" not in count_stages and count_stages == ["sparse"]
    assert np.array_equal(edited.selected_features_, clf.selected_features_)
    assert np.array_equal(edited.assignment_, clf.assignment_)
    for name, value in before.items():
        assert np.array_equal(getattr(clf, name), value)
    assert clf.get_params() == params
    for name in ("dense_mlp_state_", "dense_head_state_"):
        for key, value in getattr(clf, name).items():
            assert np.array_equal(getattr(edited, name)[key], value)
    record = edited.selection_info_["edit"]
    assert record["objective_after"] == pytest.approx(record["objective_before"], rel=1e-6)
    assert record["removed"] == [] and record["added"] == []


def test_edit_excluding_a_feature_never_selects_it_and_trains_no_dense_stage(fitted, count_stages):
    clf, X, y = fitted
    dropped = [int(clf.selected_features_[0]), int(clf.selected_features_[3])]
    edited = clf.edit(X, y, exclude=dropped)
    assert count_stages == ["sparse"]
    assert not set(dropped) & set(edited.selected_features_.tolist())
    assert edited.exclude == dropped and clf.exclude is None
    record = edited.selection_info_["edit"]
    assert record["constraints"]["exclude"] == dropped
    assert record["objective_after"] <= record["upper_bound"] + 1e-9
    assert set(record["removed"]) >= set(dropped)
    assert edited.score(X, y) > 0.5


def test_edit_with_zero_sparse_epochs_uses_the_dense_mlp_unchanged(fitted):
    clf, X, y = fitted
    edited = clf.edit(X, y, exclude=[int(clf.selected_features_[1])], sparse_epochs=0)
    for key, value in clf.dense_mlp_state_.items():
        assert np.array_equal(edited.sparse_mlp_state_[key], value)
    dense_pooled = clf.pooled_features(X, stage="dense")[:, edited.selected_features_]
    assert np.allclose(edited.pooled_features(X), dense_pooled, atol=1e-5)


def test_edit_pins_a_class_and_changes_budgets(fitted):
    clf, X, y = fitted
    pin = int(clf.class_features("a")[0])
    other = int(np.setdiff1d(np.arange(12), clf.selected_features_)[0])
    edited = clf.edit(X, y, fixed={"b": [pin, other]}, n_per_class={"c": 3}, sparse_epochs=0)
    assert edited.assignment_.sum(1).tolist() == [2, 2, 3]
    assert {pin, other} <= set(edited.class_features("b").tolist())
    assert len({row.tobytes() for row in edited.assignment_}) == 3
    assert edited.n_per_class == {"a": 2, "b": 2, "c": 3}


def test_edited_model_saves_loads_pickles_and_explains(fitted, tmp_path):
    clf, X, y = fitted
    edited = clf.set_params(feature_names={int(clf.selected_features_[0]): "first"}).edit(
        X, y, exclude=[int(clf.selected_features_[0])], n_per_class={"a": 3}, sparse_epochs=0)
    clf.set_params(feature_names=None)
    assert edited.feature_names is None  # the only named channel was dropped
    loaded = QPMClassifier.load(edited.save(tmp_path / "edited"))
    assert loaded.exclude == edited.exclude and loaded.n_per_class == edited.n_per_class
    assert loaded.selection_info_["edit"] == edited.selection_info_["edit"]
    assert np.allclose(loaded.predict_proba(X), edited.predict_proba(X), atol=1e-6)
    unpickled = pickle.loads(pickle.dumps(edited))
    assert np.array_equal(unpickled.predict(X), edited.predict(X))
    explanation = loaded.explain(X[:4])
    assert explanation.features.shape == (4, 3)


def test_model_file_without_the_constraint_parameters_still_loads(fitted, tmp_path):
    clf, X, _ = fitted
    path = clf.save(tmp_path / "model")
    with np.load(path, allow_pickle=False) as contents:
        arrays = {name: contents[name] for name in contents.files}
    meta = json.loads(str(arrays["__meta__.json"]))
    for name in ("exclude", "include", "fixed"):
        del meta["params"][name]
    arrays["__meta__.json"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "old.npz", **arrays)
    loaded = QPMClassifier.load(tmp_path / "old.npz")
    assert loaded.exclude is None and np.array_equal(loaded.predict(X), clf.predict(X))
    meta["params"]["unknown"] = 1
    arrays["__meta__.json"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="unknown \\['unknown'\\]"):
        QPMClassifier.load(tmp_path / "bad.npz")


def test_fit_with_the_edit_parameters_reuses_the_cached_dense_stage(tmp_path, count_stages):
    X, y = data(1)
    clf = QPMClassifier(**SETTINGS, memory=str(tmp_path)).fit(X, y)
    edited = clf.edit(X, y, exclude=[int(clf.selected_features_[2])])
    count_stages.clear()
    refit = clone(edited).fit(X, y)
    assert count_stages == ["sparse"]
    assert int(clf.selected_features_[2]) not in refit.selected_features_
    assert refit.selection_info_["objective"] == pytest.approx(edited.selection_info_["objective"], rel=1e-6)


def test_per_class_budgets_in_fit():
    X, y = data(2)
    clf = QPMClassifier(**dict(SETTINGS, n_per_class={"a": 1, "b": 2, "c": 3})).fit(X, y)
    assert clf.assignment_.sum(1).tolist() == [1, 2, 3]
    assert clf.selection_info_["constraints"]["n_per_class"] == [1, 2, 3]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(exclude=[99]), ValueError, "exclude holds feature ids \\[99\\]"),
        (dict(include=[12]), ValueError, "include holds feature ids \\[12\\] outside the 12 features"),
        (dict(include=[1], exclude=[1]), ValueError, "include and exclude contradict"),
        (dict(n_per_class={"a": 7}), ValueError, "n_per_class\\[0\\]"),
        (dict(n_per_class=6), ValueError, "only 1 distinct sets of n_per_class=6"),
        (dict(fixed={"zebra": [1]}), ValueError, "fixed names class 'zebra'"),
        (dict(exclude="three"), ValueError, "'exclude' parameter"),
        (dict(exclude=[1.5]), TypeError, "exclude must be a list of int"),
    ],
)
def test_edit_bad_input_names_the_argument(fitted, kwargs, error, message):
    clf, X, y = fitted
    with pytest.raises(error, match=message):
        clf.edit(X, y, **kwargs)


def test_edit_needs_a_fitted_qpm_model(fitted):
    _, X, y = fitted
    with pytest.raises(NotFittedError):
        QPMClassifier(**SETTINGS).edit(X, y, exclude=[1])
    sldd = QPMClassifier(**dict(SETTINGS, selection="sldd")).fit(X, y)
    with pytest.raises(ValueError, match="selection='sldd'"):
        sldd.edit(X, y, exclude=[1])
    clf = fitted[0]
    with pytest.raises(ValueError, match="y holds labels \\['zebra'\\]"):
        clf.edit(X, np.where(y == "a", "zebra", y))


def test_interventions_equal_the_head_by_hand(fitted):
    clf, X, _ = fitted
    pooled = clf.pooled_features(X).astype(np.float64)
    f0, f1, f2 = (int(f) for f in clf.selected_features_[:3])
    edited = pooled.copy()
    edited[:, 0] = 0.0
    edited[:, 1] = clf.feature_mean_[1]
    edited[:, 2] = 2.5
    expected = softmax(hand_logits(clf, edited), axis=1)
    assert np.allclose(clf.intervene(X, {f0: "off", f1: "mean", f2: 2.5}), expected, rtol=1e-10, atol=1e-12)
    assert np.allclose(clf.intervene(X, {}), clf.predict_proba(X), atol=1e-5)
    missing = int(np.setdiff1d(np.arange(12), clf.selected_features_)[0])
    with pytest.raises(ValueError, match=f"interventions names channel {missing}"):
        clf.intervene(X, {missing: "off"})
    with pytest.raises(ValueError, match="must be 'off', 'mean' or a finite number"):
        clf.intervene(X, {f0: "zero"})


def flips(pooled, column, change, target, head):
    shifted = pooled.copy()
    shifted[column] += change
    return int(np.argmax(head_logits(shifted[None], *head)[0])) == target


@pytest.mark.parametrize("seed", range(5))
def test_counterfactual_thresholds_are_exact_on_random_heads(seed):
    rng = np.random.default_rng(seed)
    n_classes, n_selected, n = 5, 7, 40
    weight = (rng.uniform(size=(n_classes, n_selected)) < 0.4) * rng.choice([1.0, 2.0, -1.0], size=(n_classes, n_selected))
    weight[np.arange(n_classes), rng.integers(0, n_selected, n_classes)] = 1.0
    bias = rng.normal(size=n_classes)
    mean, std = rng.uniform(0.5, 2, n_selected), rng.uniform(0.1, 1, n_selected)
    pooled = rng.uniform(0, 3, size=(n, n_selected))
    target = rng.integers(0, n_classes, n)
    head = (weight, bias, mean, std)
    columns, delta = single_feature_counterfactuals(pooled, target, *head)
    checked = impossible = 0
    for i in range(n):
        for position, column in enumerate(columns[i]):
            if column < 0:
                continue
            d = delta[i, position]
            if d == 0:
                assert np.argmax(head_logits(pooled[i][None], *head)[0]) == target[i]
                continue
            if not np.isfinite(d):
                impossible += 1
                # no change on a fine grid (activation kept non-negative) makes the target win
                grid = np.linspace(-pooled[i, column], 50, 2001)
                assert not any(flips(pooled[i], column, g, target[i], head) for g in grid)
                continue
            eps = 1e-7 * (1 + abs(d))
            assert flips(pooled[i], column, d + np.sign(d) * eps, target[i], head)
            assert not flips(pooled[i], column, d - np.sign(d) * eps, target[i], head)
            # nothing smaller works: a grid between 0 and the threshold never flips
            assert not any(flips(pooled[i], column, g, target[i], head) for g in np.linspace(0, d, 50)[:-1])
            assert pooled[i, column] + d >= -1e-12
            checked += 1
    assert checked > 10 and impossible > 0


def test_counterfactual_on_a_fitted_model_agrees_with_interventions(fitted):
    clf, X, _ = fitted
    cf = clf.counterfactual(X[:10], target="b")
    pooled = clf.pooled_features(X[:10]).astype(np.float64)
    assert cf.features.shape == (10, 2) and set(cf.features[0].tolist()) == set(clf.class_features("b").tolist())
    frame = cf.to_frame()
    assert len(frame) == 20 and frame["best"].sum() == int(cf.possible.sum())
    for i in np.flatnonzero(cf.possible & (cf.prediction != "b")):
        column = cf.best[i]
        channel = int(cf.features[i, column])
        j = int(np.flatnonzero(clf.selected_features_ == channel)[0])
        d = cf.delta[i, column]
        assert cf.delta_standardised[i, column] == pytest.approx(d / max(clf.feature_std_[j], 1e-6))
        eps = 1e-6 * (1 + abs(d))
        after = clf.intervene(X[i : i + 1], {channel: float(pooled[i, j] + d + np.sign(d) * eps)})
        before = clf.intervene(X[i : i + 1], {channel: float(pooled[i, j] + d - np.sign(d) * eps)})
        assert clf.classes_[after.argmax()] == "b" and clf.classes_[before.argmax()] != "b"


def test_explain_target_explains_that_class(fitted):
    clf, X, _ = fitted
    explanation = clf.explain(X[:6], target="c")
    pooled = clf.pooled_features(X[:6]).astype(np.float64)
    logits = hand_logits(clf, pooled)
    c = 2
    assert (explanation.prediction == "c").all()
    for i in range(6):
        assert set(explanation.features[i].tolist()) == set(clf.class_features("c").tolist())
        assert explanation.contributions[i].sum() + explanation.intercept[i] == pytest.approx(logits[i, c], abs=1e-4)
    per_row = clf.explain(X[:3], target=["a", "b", "c"])
    assert per_row.prediction.tolist() == ["a", "b", "c"]
    with pytest.raises(ValueError, match="label must be one of"):
        clf.explain(X[:2], target="zebra")


def test_plot_counterfactual_draws_one_bar_per_target_feature(fitted):
    pytest.importorskip("matplotlib")
    from qpm_sklearn.plotting import plot_counterfactual

    clf, X, _ = fitted
    cf = clf.counterfactual(X[:3], target="b")
    figure = plot_counterfactual(cf, index=1)
    assert len(figure.axes[0].patches) == int((cf.features[1] >= 0).sum())
    with pytest.raises(ValueError, match="index must be an int"):
        plot_counterfactual(cf, index=3)


def test_constraint_parameters_need_selection_qpm():
    X, y = data()
    with pytest.raises(ValueError, match="apply to selection='qpm' only"):
        QPMClassifier(**dict(SETTINGS, selection="sldd", exclude=[1])).fit(X, y)
    with pytest.raises(ValueError, match="n_per_class names class 'zebra'"):
        QPMClassifier(**dict(SETTINGS, n_per_class={"zebra": 2})).fit(X, y)
