"""contribution_importance and to_shap's columns and data, against hand computations."""

import numpy as np
import pytest

from qpm_sklearn.inspection import contribution_importance
from qpm_sklearn.testing import fitted_toy_classifier


@pytest.fixture(scope="module")
def toy():
    return fitted_toy_classifier()


def test_contribution_importance_against_a_loop_over_samples_and_classes(toy):
    clf, X, _ = toy
    result = contribution_importance(clf, X)
    pooled = clf.pooled_features(X).astype(np.float64)
    z = (pooled - clf.feature_mean_) / np.maximum(clf.feature_std_, 1e-6)
    W, predicted = clf.sparse_weight_, np.searchsorted(clf.classes_, clf.predict(X))
    per_class = np.zeros_like(W, dtype=np.float64)
    to_predicted = np.zeros_like(z)
    for i in range(len(X)):
        for c in range(W.shape[0]):
            for j in range(W.shape[1]):
                per_class[c, j] += abs(W[c, j] * z[i, j]) / len(X)
        to_predicted[i] = np.abs(W[predicted[i]] * z[i])
    np.testing.assert_allclose(result.per_class, per_class, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.importances_mean, to_predicted.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.importances_std, to_predicted.std(0), rtol=1e-4, atol=1e-6)
    assert (result.per_class[clf.assignment_ == 0] == 0).all()
    # the same numbers as the per-sample explanations of the predicted class
    e = clf.explain(X)
    from_explanations = np.zeros_like(z)
    for i in range(len(X)):
        for feature, contribution in zip(e.features[i], e.contributions[i]):
            if feature >= 0:
                from_explanations[i, np.searchsorted(clf.selected_features_, feature)] = abs(contribution)
    np.testing.assert_allclose(result.importances_mean, from_explanations.mean(0), rtol=1e-4, atol=1e-5)


def test_to_shap_columns_are_consistent_and_data_is_the_pooled_features(toy):
    shap = pytest.importorskip("shap")
    clf, X, _ = toy
    e = clf.explain(X[:10])
    sv = e.to_shap(columns=clf.selected_features_)
    other = e[:1].to_shap(columns=clf.selected_features_)
    assert isinstance(sv, shap.Explanation) and sv.feature_names == other.feature_names
    assert len(sv.feature_names) == len(clf.selected_features_)
    np.testing.assert_allclose(sv.values.sum(axis=1) + sv.base_values, e.logit, rtol=1e-5, atol=1e-5)
    pooled = clf.pooled_features(X[:10])
    used = sv.values != 0
    # default data: the pooled value where the predicted class uses the feature, NaN elsewhere
    np.testing.assert_allclose(sv.data[used], pooled[used], rtol=1e-5, atol=1e-6)
    unused = np.array([[clf.assignment_[np.searchsorted(clf.classes_, p), j] == 0 for j in range(pooled.shape[1])]
                       for p in e.prediction])  # fmt: skip
    assert np.isnan(sv.data[unused]).all() and not np.isnan(sv.data[~unused]).any()
    full = e.to_shap(columns=clf.selected_features_, data=pooled)
    np.testing.assert_array_equal(full.data, pooled)
    with pytest.raises(ValueError, match="missing"):
        e.to_shap(columns=clf.selected_features_[:1])
    with pytest.raises(ValueError, match="shape"):
        e.to_shap(columns=clf.selected_features_, data=pooled[:, :2])
