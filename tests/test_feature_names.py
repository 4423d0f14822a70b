"""QPMClassifier(feature_names=...) and summary(): names given after fitting, used everywhere."""

import numpy as np
import pytest
from sklearn.base import clone

from qpm_sklearn import QPMClassifier


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(45, 3, 3, 6)).astype(np.float32)
    y = np.repeat(["ant", "bee", "cat"], 15)
    X[y == "bee", :2] += 2.0
    X[y == "cat", 1:] += 2.0
    clf = QPMClassifier(n_features=10, n_selected=5, n_per_class=2, hidden_size=8, n_layers=1, dense_epochs=2,
                        sparse_epochs=1, device="cpu", random_state=0)  # fmt: skip
    return clf.fit(X, y), X


def _expected_summary_lines(clf, names):
    """Each class's row, built independently from assignment_ and sparse_weight_."""
    lines = {}
    for c, label in enumerate(clf.classes_):
        columns = np.flatnonzero(clf.assignment_[c])
        columns = sorted(columns, key=lambda j: (-abs(clf.sparse_weight_[c, j]), clf.selected_features_[j]))
        lines[label] = [f"{names.get(int(clf.selected_features_[j]), f'feature {clf.selected_features_[j]}')} "
                        f"({clf.sparse_weight_[c, j]:+.3g})" for j in columns]  # fmt: skip
    return lines


def test_names_reach_explanations_frames_and_the_summary(fitted):
    clf, X = fitted
    first, second = (int(f) for f in clf.selected_features_[:2])
    named = clone(clf).set_params(feature_names={first: "red crown", str(second): "long tail"})
    named.__dict__.update({k: v for k, v in vars(clf).items() if k.endswith("_")})  # same fitted state
    explanation = named.explain(X[:6])
    assert explanation.feature_names == {first: "red crown", second: "long tail"}
    frame = explanation.to_frame()
    for feature, name in zip(frame["feature"], frame["feature_name"]):
        assert name == {first: "red crown", second: "long tail"}.get(feature, f"feature {feature}")
    text = named.summary()
    assert text.splitlines()[0].startswith("QPMClassifier(selection='qpm'): 3 classes, 5 selected features, 2 per class")
    expected = _expected_summary_lines(named, explanation.feature_names)
    rows = {line.split()[0]: line for line in text.splitlines()[3:]}
    assert sorted(rows) == ["ant", "bee", "cat"]
    for label, parts in expected.items():
        assert rows[label].split(None, 1)[1] == ", ".join(parts)
    # predictions do not depend on names
    np.testing.assert_array_equal(named.predict(X), clf.predict(X))


def test_a_sequence_names_the_selected_features_in_order(fitted):
    clf, X = fitted
    names = [f"part {i}" for i in range(5)]
    clf = clone(clf).set_params(feature_names=names).fit(X, np.repeat(["ant", "bee", "cat"], 15))
    assert clf.explain(X[:2]).feature_names == dict(zip(clf.selected_features_.tolist(), names))
    assert "part " in clf.summary() and "feature " not in clf.summary().split("\n", 1)[1]


def test_names_of_unselected_features_are_refused_when_used(fitted):
    clf, X = fitted
    unselected = int(np.setdiff1d(np.arange(10), clf.selected_features_)[0])
    bad = clone(clf).set_params(feature_names={unselected: "nothing"})
    bad.__dict__.update({k: v for k, v in vars(clf).items() if k.endswith("_")})
    for call in (lambda: bad.explain(X[:1]), bad.summary):
        with pytest.raises(ValueError, match=rf"channels \[{unselected}\].*selected_features_"):
            call()


def test_feature_names_survive_save_and_load(fitted, tmp_path):
    clf, X = fitted
    feature = int(clf.selected_features_[-1])
    named = clone(clf).set_params(feature_names={feature: "wing bar"})
    named.__dict__.update({k: v for k, v in vars(clf).items() if k.endswith("_")})
    loaded = QPMClassifier.load(named.save(tmp_path / "model"))
    assert loaded.explain(X[:3]).feature_names == {feature: "wing bar"}
    assert loaded.summary() == named.summary()


def test_summary_needs_a_fitted_model():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        QPMClassifier().summary()


def test_shap_values_of_a_fitted_model_add_up_to_its_logits(fitted):
    pytest.importorskip("shap")
    clf, X = fitted
    explanation = clf.explain(X)
    sv = explanation.to_shap()
    logits = clf.decision_function(X)  # three classes: one column per class
    predicted = np.searchsorted(clf.classes_, explanation.prediction)
    np.testing.assert_allclose(sv.values.sum(axis=1) + sv.base_values, logits[np.arange(len(X)), predicted], atol=1e-4)
