"""The SLDD / Q-SENN solvers against independent references (KKT, scikit-learn, brute force, planted signal)."""

import warnings

import numpy as np
import pytest
from scipy.special import logsumexp

from sklearn.linear_model import LogisticRegression

from qpm_sklearn.glm import (
    elastic_net_path,
    group_elastic_net_selection,
    lambda_path,
    max_regularisation,
    standardisation,
)


def _blobs(n=150, n_features=5, n_classes=3, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    F = rng.normal(size=(n, n_features)) + scale * np.eye(n_classes)[y] @ rng.normal(size=(n_classes, n_features))
    return F, y


def _objective(W, b, F, y, lam, l1_ratio):
    logits = F @ W.T + b
    ce = np.mean(logsumexp(logits, axis=1) - logits[np.arange(len(y)), y])
    return ce + lam * (l1_ratio * np.abs(W).sum() + 0.5 * (1 - l1_ratio) * (W**2).sum())


def _kkt_violation(W, b, F, y, lam, l1_ratio):
    """Largest violation of the elastic-net optimality conditions, computed from scratch."""
    logits = F @ W.T + b
    P = np.exp(logits - logsumexp(logits, axis=1, keepdims=True))
    R = (P - np.eye(W.shape[0])[y]) / len(y)
    g = R.T @ F + lam * (1 - l1_ratio) * W
    active = np.abs(g[W != 0] + lam * l1_ratio * np.sign(W[W != 0]))
    inactive = np.maximum(np.abs(g[W == 0]) - lam * l1_ratio, 0)
    return max(active.max(initial=0), inactive.max(initial=0), np.abs(R.sum(0)).max())


def test_lambda_path_is_log_spaced_and_ends_at_zero():
    lams = lambda_path(2.0, n_lambdas=5, lam_min_ratio=1e-2)
    np.testing.assert_allclose(lams, [2.0, 2.0 * 10**-0.5, 0.2, 2.0 * 10**-1.5, 0.02, 0.0])


def test_max_regularisation_matches_a_loop():
    F, y = _blobs()
    Yc = np.eye(3)[y] - np.eye(3)[y].mean(0)
    inner = np.array([[F[:, j] @ Yc[:, c] / len(y) for c in range(3)] for j in range(F.shape[1])])
    assert max_regularisation(F, y, group=False) == pytest.approx(np.abs(inner).max())
    assert max_regularisation(F, y, group=True) == pytest.approx(max(np.linalg.norm(r) for r in inner))


def test_standardisation_clamps_std():
    mean, std = standardisation(np.array([[1.0, 5.0], [3.0, 5.0]]))
    np.testing.assert_allclose(mean, [2.0, 5.0])
    np.testing.assert_allclose(std, [1.0, 1e-5])


@pytest.mark.parametrize("fraction", [0.5, 0.1, 0.01])
def test_path_points_are_the_optimum(fraction):
    F, y = _blobs()
    F = (F - F.mean(0)) / F.std(0)
    l1_ratio = 0.9
    lam = fraction * max_regularisation(F, y, group=False) / l1_ratio
    point = elastic_net_path(F, y, l1_ratio=l1_ratio, n_lambdas=1, lam_max=lam, tol=1e-9, max_epochs=20000)[0]
    assert point["lam"] == pytest.approx(lam) and point["converged"]
    assert _kkt_violation(point["weight"], point["bias"], F, y, lam, l1_ratio) < 1e-8
    # Independent solver: scikit-learn's SAGA minimises C·ΣCE + l1_ratio‖W‖₁ + (1−l1_ratio)/2‖W‖²,
    # i.e. our objective with λ = 1/(n·C), α = l1_ratio (intercept unpenalised).
    reference = LogisticRegression(C=1 / (len(y) * lam), l1_ratio=l1_ratio, solver="saga", tol=1e-12, max_iter=100000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # penalty-argument deprecations differ between versions
        reference.fit(F, y)
    W_ref, b_ref = reference.coef_, reference.intercept_
    ours, ref = _objective(point["weight"], point["bias"], F, y, lam, l1_ratio), _objective(W_ref, b_ref, F, y, lam, l1_ratio)
    assert ours <= ref + 1e-10
    np.testing.assert_allclose(point["weight"], W_ref, atol=1e-4)
    assert np.array_equal(point["weight"] != 0, np.abs(W_ref) > 1e-8)


def test_path_shape_sparsity_and_default_lam_max():
    F, y = _blobs(n_features=8)
    path = elastic_net_path(F, y, n_lambdas=20)
    assert len(path) == 21 and path[-1]["lam"] == 0.0
    assert [p["weight"].shape for p in path] == [(3, 8)] * 21
    assert np.abs(path[0]["weight"]).max() < 1e-8  # λ_max is the smallest all-zero λ
    nnz = [np.count_nonzero(p["weight"]) for p in path]
    assert nnz[1] > 0 and nnz[-2] > nnz[1]
    lams = [p["lam"] for p in path]
    assert lams == sorted(lams, reverse=True)


def test_path_is_deterministic():
    F, y = _blobs(seed=3)
    a, b = elastic_net_path(F, y, n_lambdas=5), elastic_net_path(F, y, n_lambdas=5)
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p["weight"], q["weight"])
        np.testing.assert_array_equal(p["bias"], q["bias"])


def test_path_warns_when_a_point_does_not_converge():
    F, y = _blobs()
    with pytest.warns(RuntimeWarning, match="did not converge"):
        elastic_net_path(F, y, n_lambdas=3, max_epochs=2, tol=1e-12)


def _planted(n=400, n_features=30, informative=(3, 11, 17, 25), seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    F = rng.gamma(2.0, 0.5, size=(n, n_features))  # raw, positive, non-unit scale
    for c, j in enumerate(informative):
        F[:, j] += 2.0 * (y == c)
    return F, y


def test_selection_finds_the_informative_features():
    F, y = _planted()
    assert group_elastic_net_selection(F, y, n_keep=4).tolist() == [3, 11, 17, 25]


def test_selection_first_feature_is_the_largest_standardised_group_gradient():
    F, y = _planted(seed=1)
    Z = (F - F.mean(0)) / F.std(0)
    Yc = np.eye(4)[y] - np.eye(4)[y].mean(0)
    expected = int(np.argmax(np.linalg.norm(Z.T @ Yc, axis=1)))
    assert group_elastic_net_selection(F, y, n_keep=1).tolist() == [expected]


def test_selection_is_sorted_unique_and_deterministic():
    F, y = _planted(seed=2)
    first = group_elastic_net_selection(F, y, n_keep=10)
    assert len(first) == 10 and np.all(np.diff(first) > 0)
    np.testing.assert_array_equal(first, group_elastic_net_selection(F, y, n_keep=10))


def test_selection_fills_with_a_warning_when_features_carry_nothing():
    F, y = _planted(n_features=6, informative=(0, 1, 2, 3))
    F[:, 4:] = 7.0  # constant: zero gradient, can never enter
    with pytest.warns(RuntimeWarning, match="filled"):
        selected = group_elastic_net_selection(F, y, n_keep=6)
    assert selected.tolist() == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"n_keep": 0}, "n_keep"), ({"n_keep": 31}, "n_keep"), ({"l1_ratio": 0.0}, "l1_ratio"), ({"tol": 0.0}, "tol")],
)
def test_selection_rejects_bad_arguments(kwargs, match):
    F, y = _planted()
    with pytest.raises(ValueError, match=match):
        group_elastic_net_selection(F, y, **{"n_keep": 4, **kwargs})


def test_inputs_are_validated():
    F, y = _blobs()
    with pytest.raises(ValueError, match="y must have shape"):
        elastic_net_path(F, y[:-1])
    with pytest.raises(ValueError, match="NaN"):
        elastic_net_path(np.where(F > 1, np.nan, F), y)
    with pytest.raises(ValueError, match="n_classes"):
        elastic_net_path(F, y, n_classes=2)
