"""Tests of qpm_sklearn.selection against independent references (brute force, scipy, numpy)."""

import itertools
import math
import warnings

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from qpm_sklearn import selection
from qpm_sklearn.selection import _bounds, _problem, _search
from qpm_sklearn.selection import (
    feature_class_correlation,
    feature_similarity,
    redundancy_penalty,
    selection_objective,
    solve_selection,
)

# ------------------------------------------------------------------------------------------
# Independent references
# ------------------------------------------------------------------------------------------


def brute_force(A, m, k, penalty=None, bias=None):
    """Optimum by enumerating every selection; the distinct assignment by a full matching."""
    n_features, n_classes = A.shape
    alpha = 1000.0 / (k * n_classes)
    best = -np.inf
    for S in itertools.combinations(range(n_features), m):
        S = list(S)
        subsets = [list(T) for T in itertools.combinations(S, k)]
        values = np.array([[A[T, c].sum() for T in subsets] for c in range(n_classes)])
        rows, columns = linear_sum_assignment(values, maximize=True)
        value = alpha * values[rows, columns].sum()
        if penalty is not None:
            value -= sum(penalty[i, j] for i, j in itertools.combinations(S, 2))
        if bias is not None:
            value += bias[S].sum()
        best = max(best, value)
    return best


def assert_feasible(result, n_features, n_classes, m, k):
    assert result.selected.shape == (m,)
    assert np.all(np.diff(result.selected) > 0), "selected must be sorted and distinct"
    assert 0 <= result.selected.min() and result.selected.max() < n_features
    assert result.assignment.shape == (n_classes, m)
    assert set(np.unique(result.assignment)) <= {0, 1}
    assert np.all(result.assignment.sum(1) == k)
    assert len({row.tobytes() for row in result.assignment}) == n_classes, "two classes share a feature set"


def assert_objective_consistent(result, A, penalty=None, bias=None):
    recomputed = selection_objective(A, result.selected, result.assignment, penalty=penalty, bias=bias)
    assert result.objective == pytest.approx(recomputed, rel=1e-10, abs=1e-9)


def random_instance(rng, n_features, n_classes, m, k, *, penalty_scale=1.0, with_bias=False, ties=False,
                    signed_penalty=False):
    A = rng.normal(size=(n_features, n_classes))
    if ties:
        A = np.round(A)
    penalty = None
    if penalty_scale:
        penalty = rng.random((n_features, n_features)) * penalty_scale
        if signed_penalty:
            penalty -= 0.3 * penalty_scale
        penalty = np.triu(penalty, 1) + np.triu(penalty, 1).T
    bias = rng.normal(size=n_features) if with_bias else None
    return A, penalty, bias


# ------------------------------------------------------------------------------------------
# A, R, penalty
# ------------------------------------------------------------------------------------------


def test_feature_class_correlation_matches_pearson():
    rng = np.random.default_rng(0)
    F = rng.normal(size=(60, 5))
    y = rng.choice(["a", "b", "c"], size=60)
    A = feature_class_correlation(F, y)
    reference = np.array([[np.corrcoef(F[:, j], y == c)[0, 1] for c in ["a", "b", "c"]] for j in range(5)])
    np.testing.assert_allclose(A, reference / np.abs(reference).max(), atol=1e-12)
    assert np.abs(A).max() == pytest.approx(1.0)


def test_feature_class_correlation_constant_features_give_zeros_not_nan():
    A = feature_class_correlation(np.ones((6, 3)), [0, 0, 1, 1, 2, 2])
    assert A.shape == (3, 3) and np.all(A == 0)
    with pytest.raises(ValueError, match="y must have shape"):
        feature_class_correlation(np.ones((6, 3)), [0, 1])


def test_feature_similarity_is_cosine_with_zero_diagonal():
    rng = np.random.default_rng(1)
    A = rng.normal(size=(7, 4))
    A[3] = 0.0  # a zero row must not produce NaN
    R = feature_similarity(A)
    norms = np.maximum(np.linalg.norm(A, axis=1), 1e-8)
    reference = (A @ A.T) / np.outer(norms, norms)
    np.fill_diagonal(reference, 0.0)
    np.testing.assert_allclose(R, reference, atol=1e-12)
    assert np.all(np.isfinite(R)) and np.all(np.diag(R) == 0)


def test_redundancy_penalty_hand_built_groups():
    # Three groups of three features: similar within a group (0.9), dissimilar across (0.1).
    group = np.repeat(np.arange(3), 3)
    R = np.where(group[:, None] == group[None, :], 0.9, 0.1)
    np.fill_diagonal(R, 0.0)
    penalty, tau = redundancy_penalty(R, 3, rule="consistent")  # one feature per group is a dissimilar set
    assert tau == pytest.approx(0.9)
    np.testing.assert_allclose(penalty, np.where(R == 0.9, 1.0, 0.0))
    penalty, tau = redundancy_penalty(R, 4, rule="consistent")  # four need two from a group: only tau = inf works
    assert tau == math.inf and not penalty.any()


def test_redundancy_penalty_leaves_a_penalty_free_selection():
    rng = np.random.default_rng(2)
    R = feature_similarity(rng.normal(size=(10, 6)))
    m = 4
    penalty, tau = redundancy_penalty(R, m, rule="consistent")
    assert np.allclose(penalty, penalty.T) and np.all(np.diag(penalty) == 0)
    assert penalty.min() >= 0 and penalty.max() <= 1
    off = ~np.eye(10, dtype=bool)
    assert np.all(penalty[off & (R < tau)] == 0)
    assert np.all(penalty[off & (R >= tau) & (R > R[off].min())] > 0)
    free = [S for S in itertools.combinations(range(10), m) if penalty[np.ix_(S, S)].sum() == 0]
    assert free, "tau* must leave at least one set of n_selected mutually unpenalised features"


# ------------------------------------------------------------------------------------------
# Internals against recomputation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m,k", [(5, 2), (4, 4), (6, 1)])
def test_swap_gains_equal_recomputed_objective_changes(m, k):
    rng = np.random.default_rng(3)
    A, penalty, bias = random_instance(rng, 9, 3 if k < m else 1, m, k, with_bias=True, ties=True)
    problem = _problem.build_problem(A, m, k, penalty, bias)
    S = np.sort(rng.choice(9, size=m, replace=False))
    gains = _search._swap_gains(problem, S)
    _, base, _ = _problem.evaluate(problem, S)
    for j in range(9):
        for i in range(m):
            if j in S:
                assert gains[j, i] == -np.inf
                continue
            trial = np.sort(np.concatenate([np.delete(S, i), [j]]))
            _, value, _ = _problem.evaluate(problem, trial)
            assert gains[j, i] == pytest.approx(value - base, abs=1e-9)


@pytest.mark.parametrize("m,k", [(6, 2), (3, 3), (4, 3)])
def test_swap_state_updates_match_a_fresh_computation(m, k):
    rng = np.random.default_rng(5)
    A, penalty, _ = random_instance(rng, 14, min(5, math.comb(m, k)), m, k, ties=True)
    problem = _problem.build_problem(A, m, k, penalty, None)
    state = _search._SwapState(problem, np.sort(rng.choice(14, size=m, replace=False)))
    for _ in range(40):
        outside = np.setdiff1d(np.arange(14), state.S)
        state.swap(int(rng.integers(m)), int(rng.choice(outside)))
        np.testing.assert_allclose(state.gains(), _search._swap_gains(problem, state.S.copy()), atol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_assign_is_the_best_distinct_assignment(seed):
    rng = np.random.default_rng(seed)
    m, k = 5, 2
    n_classes = int(rng.integers(2, math.comb(m, k) + 1))
    WS = np.round(rng.normal(size=(m, n_classes)))  # ties provoke duplicate top-k sets
    assignment, value, free_value = _problem._assign(WS, k)
    subsets = list(itertools.combinations(range(m), k))
    values = np.array([[WS[list(T), c].sum() for T in subsets] for c in range(n_classes)])
    rows, columns = linear_sum_assignment(values, maximize=True)
    assert value == pytest.approx(values[rows, columns].sum())
    assert value == pytest.approx((WS.T * assignment).sum())
    assert free_value == pytest.approx(values.max(1).sum())
    assert len({row.tobytes() for row in assignment}) == n_classes and np.all(assignment.sum(1) == k)


@pytest.mark.parametrize("signed", [False, True])
def test_certified_bound_holds_at_any_point(signed):
    rng = np.random.default_rng(4)
    A, penalty, bias = random_instance(rng, 7, 3, 3, 2, penalty_scale=5.0, with_bias=True, signed_penalty=signed)
    optimum = brute_force(A, 3, 2, penalty, bias)
    problem = _problem.build_problem(A, 3, 2, penalty, bias)
    shift = _bounds.concave_shift(problem.Q)
    for _ in range(20):
        s = rng.random(7)
        assert _bounds.certified_bound(problem, s, shift) >= optimum - 1e-9
        u = rng.normal(size=3) * 100  # any thresholds, any target: every value is a bound
        bound = _bounds.clique_bound(problem, u, optimum - rng.random() * 50, deadline=math.inf, n_rounds=30)
        assert bound >= optimum - 1e-9


def brute_force_cover_value(cover, value, m):
    """max over |S| = m of value(S) - sum over cliques of L(|S & clique|), by enumeration."""
    blocks = np.split(cover.members, np.flatnonzero(np.diff(cover.owner)) + 1)
    steps = np.split(cover.penalty_step, np.flatnonzero(np.diff(cover.owner)) + 1)
    best = -np.inf
    for S in itertools.combinations(range(value.size), m):
        total = value[list(S)].sum()
        for block, step in zip(blocks, steps):
            total -= step[: np.isin(block, S).sum()].sum()
        best = max(best, total)
    return best


@pytest.mark.parametrize("seed", range(4))
def test_clique_cover_best_is_exact_and_its_penalty_a_lower_bound(seed):
    rng = np.random.default_rng(300 + seed)
    n, m = 9, 4
    Q = np.triu(np.where(rng.random((n, n)) < 0.5, rng.random((n, n)), 0.0), 1)
    Q = Q + Q.T
    value = rng.normal(size=n) * 3
    cover = _bounds._CliqueCover.build(Q, value)
    blocks = np.split(cover.members, np.flatnonzero(np.diff(cover.owner)) + 1)
    assert sorted(cover.members.tolist()) == list(range(n))  # a partition
    for block in blocks:  # of cliques of the positive-penalty graph
        inside = Q[np.ix_(block, block)] + np.eye(block.size)
        assert np.all(inside > 0)
    inner, S = cover.best(value, m)
    assert inner == pytest.approx(brute_force_cover_value(cover, value, m), abs=1e-9)
    for T in itertools.combinations(range(n), m):  # the clique terms never exceed the true penalty
        forced = sum(step[: np.isin(block, T).sum()].sum()
                     for block, step in zip(blocks, np.split(cover.penalty_step, np.flatnonzero(np.diff(cover.owner)) + 1)))
        assert forced <= 0.5 * Q[np.ix_(T, T)].sum() + 1e-12


BOUND_CASES = [
    # (n_features, n_classes, m, k, penalty_scale, with_bias, signed_penalty)
    (8, 4, 4, 2, 1.0, False, False),
    (8, 5, 4, 2, 30.0, True, False),
    (7, 3, 5, 3, 1.0, True, True),
    (9, 6, 5, 2, 3.0, False, False),
]


@pytest.mark.parametrize("case", BOUND_CASES)
@pytest.mark.parametrize("seed", range(3))
def test_reported_bound_is_valid_against_brute_force(case, seed):
    n_features, n_classes, m, k, scale, with_bias, signed = case
    rng = np.random.default_rng(400 + seed)
    A, penalty, bias = random_instance(rng, n_features, n_classes, m, k, penalty_scale=scale,
                                       with_bias=with_bias, signed_penalty=signed)
    optimum = brute_force(A, m, k, penalty, bias)
    problem = _problem.build_problem(A, m, k, penalty, bias)
    u = _bounds.class_thresholds(problem.W, np.full(n_features, m / n_features), k)
    assert _bounds.clique_bound(problem, u, optimum, deadline=math.inf) >= optimum - 1e-9
    result = solve_selection(A, n_selected=m, n_per_class=k, penalty=penalty, bias=bias, random_state=seed)
    assert result.upper_bound >= optimum - 1e-9
    assert result.bound_method in {"clique", "relaxation", "objective"}
    assert result.gap == pytest.approx((result.upper_bound - result.objective) / abs(result.objective))


# ------------------------------------------------------------------------------------------
# The solvers against brute force
# ------------------------------------------------------------------------------------------

SMALL_CASES = [
    # (n_features, n_classes, m, k, penalty_scale, with_bias, ties, signed_penalty)
    (7, 4, 4, 2, 1.0, False, False, False),
    (8, 5, 4, 2, 30.0, True, False, False),
    (8, 6, 4, 2, 0.3, False, True, False),  # every 2-subset of the 4 features is used
    (7, 3, 5, 3, 1.0, True, False, True),  # some penalties are rewards
    (8, 5, 5, 1, 1.0, False, False, False),
    (6, 3, 3, 2, 0.0, False, True, False),
]


@pytest.mark.parametrize("case", SMALL_CASES)
@pytest.mark.parametrize("seed", range(3))
def test_default_solver_reaches_brute_force_optimum(case, seed):
    n_features, n_classes, m, k, scale, with_bias, ties, signed = case
    rng = np.random.default_rng(100 + seed)
    A, penalty, bias = random_instance(rng, n_features, n_classes, m, k, penalty_scale=scale,
                                       with_bias=with_bias, ties=ties, signed_penalty=signed)
    result = solve_selection(A, n_selected=m, n_per_class=k, penalty=penalty, bias=bias, random_state=seed)
    optimum = brute_force(A, m, k, penalty, bias)
    assert_feasible(result, n_features, n_classes, m, k)
    assert_objective_consistent(result, A, penalty, bias)
    assert result.objective == pytest.approx(optimum, rel=1e-9, abs=1e-9)
    assert result.upper_bound >= optimum - 1e-9
    assert result.gap >= 0 and result.status in {"optimal", "feasible"}


@pytest.mark.parametrize("case", SMALL_CASES[:4])
def test_exact_solver_reaches_brute_force_optimum(case):
    n_features, n_classes, m, k, scale, with_bias, ties, signed = case
    rng = np.random.default_rng(7)
    A, penalty, bias = random_instance(rng, n_features, n_classes, m, k, penalty_scale=scale,
                                       with_bias=with_bias, ties=ties, signed_penalty=signed)
    result = solve_selection(A, n_selected=m, n_per_class=k, penalty=penalty, bias=bias, solver="exact",
                             time_limit=60)
    assert_feasible(result, n_features, n_classes, m, k)
    assert_objective_consistent(result, A, penalty, bias)
    optimum = brute_force(A, m, k, penalty, bias)
    assert result.status == "optimal"
    assert result.objective == pytest.approx(optimum, rel=1e-7, abs=1e-7)
    assert result.upper_bound >= optimum - 1e-6 * abs(optimum)


@pytest.mark.parametrize("seed", range(2))
def test_default_solver_matches_exact_milp_on_larger_instances(seed):
    rng = np.random.default_rng(200 + seed)
    F = rng.normal(size=(300, 24)) + np.repeat(rng.normal(size=(10, 24)), 30, axis=0)
    A = feature_class_correlation(F, np.repeat(np.arange(10), 30))
    penalty, _ = redundancy_penalty(feature_similarity(A), 8, rule="consistent")
    exact = solve_selection(A, n_selected=8, n_per_class=2, penalty=penalty, solver="exact", time_limit=60)
    default = solve_selection(A, n_selected=8, n_per_class=2, penalty=penalty, random_state=seed)
    assert exact.status == "optimal"
    assert_feasible(default, 24, 10, 8, 2)
    assert default.objective == pytest.approx(exact.objective, rel=1e-7)
    assert default.upper_bound >= exact.objective - 1e-6


EDGE_CASES = {
    "one feature per class": dict(A=np.random.default_rng(5).normal(size=(7, 4)), m=4, k=1),
    "n_selected equals n_per_class": dict(A=np.random.default_rng(6).normal(size=(6, 1)), m=3, k=3),
    "every subset needed": dict(A=np.random.default_rng(7).normal(size=(6, 10)), m=5, k=2),
    "all-equal A": dict(A=np.full((6, 6), 0.5), m=4, k=2),
    "zero penalty": dict(A=np.random.default_rng(8).normal(size=(7, 3)), m=4, k=2, penalty=np.zeros((7, 7))),
    "dominating penalty": dict(A=np.random.default_rng(9).normal(size=(7, 3)), m=4, k=2,
                               penalty=1e4 * (np.ones((7, 7)) - np.eye(7)) * np.arange(1, 8)[:, None]
                               * np.arange(1, 8)[None, :]),
    "negative A": dict(A=-np.abs(np.random.default_rng(10).normal(size=(7, 4))), m=4, k=2),
}


@pytest.mark.parametrize("name", EDGE_CASES)
@pytest.mark.parametrize("solver", ["osqp", "exact"])
def test_edge_cases_are_feasible_and_optimal(name, solver):
    case = EDGE_CASES[name]
    A, m, k, penalty = case["A"], case["m"], case["k"], case.get("penalty")
    result = solve_selection(A, n_selected=m, n_per_class=k, penalty=penalty, solver=solver, random_state=0,
                             time_limit=60)
    assert_feasible(result, *A.shape, m, k)
    assert_objective_consistent(result, A, penalty)
    optimum = brute_force(A, m, k, penalty)
    assert result.objective == pytest.approx(optimum, rel=1e-9, abs=1e-9)
    assert np.isfinite(result.upper_bound) and result.upper_bound >= optimum - 1e-6 * max(1.0, abs(optimum))


def test_dominating_penalty_selects_the_least_penalised_features():
    case = EDGE_CASES["dominating penalty"]
    result = solve_selection(case["A"], n_selected=4, n_per_class=2, penalty=case["penalty"], random_state=0)
    np.testing.assert_array_equal(result.selected, [0, 1, 2, 3])


# ------------------------------------------------------------------------------------------
# Interface
# ------------------------------------------------------------------------------------------


def test_same_random_state_same_result_and_plain_dict():
    rng = np.random.default_rng(11)
    A, penalty, _ = random_instance(rng, 40, 12, 10, 3)
    first = solve_selection(A, n_selected=10, n_per_class=3, penalty=penalty, random_state=3)
    second = solve_selection(A, n_selected=10, n_per_class=3, penalty=penalty, random_state=3)
    np.testing.assert_array_equal(first.selected, second.selected)
    np.testing.assert_array_equal(first.assignment, second.assignment)
    info = first.as_dict()
    assert set(info) == {"objective", "upper_bound", "gap", "seconds", "cpu_seconds", "status", "bound_method"}
    assert all(type(info[key]) is float for key in ("objective", "upper_bound", "gap", "seconds", "cpu_seconds"))
    assert type(info["status"]) is str and type(info["bound_method"]) is str
    assert info["upper_bound"] >= info["objective"] and info["gap"] >= 0


def test_time_limit_still_returns_a_feasible_selection():
    rng = np.random.default_rng(12)
    A, penalty, _ = random_instance(rng, 60, 15, 12, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # OSQP has no time to run
        result = solve_selection(A, n_selected=12, n_per_class=3, penalty=penalty, time_limit=1e-6)
    assert_feasible(result, 60, 15, 12, 3)
    assert result.status == "time_limit"
    assert result.upper_bound >= result.objective
    # anytime: the best selection so far comes with its certified gap
    assert result.bound_method in {"clique", "relaxation", "objective"}
    assert result.gap == pytest.approx((result.upper_bound - result.objective) / abs(result.objective))
    full = solve_selection(A, n_selected=12, n_per_class=3, penalty=penalty, random_state=0)
    assert full.status in {"feasible", "optimal"} and full.objective >= result.objective - 1e-9


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(n_selected=3, n_per_class=1), "n_selected=3"),  # 4 classes, only 3 singletons
        (dict(n_selected=4, n_per_class=5), "n_per_class"),
        (dict(n_selected=9, n_per_class=2), "n_selected"),
        (dict(n_selected=4, n_per_class=2, penalty=np.zeros((3, 3))), "penalty must have shape"),
        (dict(n_selected=4, n_per_class=2, bias=np.zeros(2)), "bias must have shape"),
        (dict(n_selected=4, n_per_class=2, solver="gurobi"), "solver"),
        (dict(n_selected=4, n_per_class=2, algebra="gpu"), "algebra"),
        (dict(n_selected=4, n_per_class=2, time_limit=0), "time_limit"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs, match):
    A = np.random.default_rng(13).normal(size=(8, 4))
    with pytest.raises(ValueError, match=match):
        solve_selection(A, **kwargs)


def test_non_finite_A_raises():
    A = np.ones((5, 2))
    A[1, 1] = np.nan
    with pytest.raises(ValueError, match="A must contain only finite"):
        solve_selection(A, n_selected=3, n_per_class=1)
    with pytest.raises(TypeError, match="n_selected must be an int"):
        solve_selection(np.ones((5, 2)), n_selected=2.5, n_per_class=1)


def test_unavailable_osqp_algebra_warns_and_uses_builtin():
    osqp = pytest.importorskip("osqp")
    if osqp.algebra_available("cuda"):
        pytest.skip("OSQP's CUDA algebra loads here")
    A = np.random.default_rng(14).normal(size=(8, 3))
    with pytest.warns(RuntimeWarning, match="algebra 'cuda'"):
        result = solve_selection(A, n_selected=4, n_per_class=2, algebra="cuda", random_state=0)
    assert_feasible(result, 8, 3, 4, 2)


# ------------------------------------------------------------------------------------------
# Shared helpers (the classifier validates with them before training)
# ------------------------------------------------------------------------------------------


def test_assignment_scale_is_the_objective_factor():
    assert selection.assignment_scale(5, 200) == 1.0
    assert selection.assignment_scale(5, 196) == pytest.approx(1000 / 980)
    A = np.array([[1.0, 0.0], [0.5, 2.0], [0.0, 1.0]])
    # rows with different counts: k cannot be inferred, it must be given
    with pytest.raises(ValueError, match="Pass n_per_class"):
        selection_objective(A, [0, 1, 2], [[1, 1, 0], [0, 1, 0]])
    value = selection_objective(A, [0, 1, 2], [[1, 1, 0], [0, 1, 0]], n_per_class=2)
    assert value == pytest.approx(1000 / (2 * 2) * (1.0 + 0.5 + 2.0))


def test_check_selection_budget_is_the_distinct_sets_rule():
    selection.check_selection_budget(5, 2, 10)  # comb(5, 2) = 10 sets: enough
    with pytest.raises(ValueError, match=r"n_selected=5 features allow only 10 distinct sets of n_per_class=2, "
                                         r"fewer than the 11 classes"):
        selection.check_selection_budget(5, 2, 11)
    with pytest.raises(ValueError, match="allow only 10 distinct sets"):  # the solver raises the same error
        solve_selection(np.zeros((6, 11)), n_selected=5, n_per_class=2)


@pytest.mark.parametrize(
    "options,error,match",
    [
        ({"n_iteration": 5}, ValueError, r"'n_iteration' is unknown; valid options for solver='osqp': solver, "
                                         r"time_limit, algebra, eps, max_iter, candidates_per_class, n_iterations"),
        ({"solver": "exact", "eps": 1e-3}, ValueError, r"'eps' belongs to solver='osqp', not solver='exact'"),
        ({"mip_rel_gap": 1e-3}, ValueError, r"'mip_rel_gap' belongs to solver='exact', not solver='osqp'"),
        ({"random_state": 0}, ValueError, "may not set 'random_state'"),
        ({"solver": "gurobi"}, ValueError, "solver must be one of"),
        ({"time_limit": -1}, ValueError, "time_limit must be None or a positive"),
        ({"n_iterations": 2.5}, TypeError, "n_iterations must be an int"),
        ({"eps": 0}, ValueError, "eps must be a positive"),
        ([("eps", 1e-3)], TypeError, "solver_options must be a dict"),
    ],
)
def test_check_solver_options_rejects_what_cannot_apply(options, error, match):
    with pytest.raises(error, match=match):
        selection.check_solver_options(options)


def test_check_solver_options_passes_valid_options_to_the_solver():
    assert selection.check_solver_options(None) == {}
    options = selection.check_solver_options({"solver": "osqp", "time_limit": 5.0, "n_iterations": 20, "eps": 1e-3})
    A = np.random.default_rng(15).normal(size=(10, 4))
    result = solve_selection(A, n_selected=5, n_per_class=2, random_state=0, **options)
    assert_feasible(result, 10, 4, 5, 2)
    assert selection.check_solver_options({"solver": "exact", "mip_rel_gap": 0.0}) == {"solver": "exact",
                                                                                       "mip_rel_gap": 0.0}


def test_verbose_levels(caplog, capfd):
    A, penalty, _ = random_instance(np.random.default_rng(16), 20, 6, 6, 2)
    with caplog.at_level("INFO", logger="qpm_sklearn"):
        result = solve_selection(A, n_selected=6, n_per_class=2, penalty=penalty, random_state=0, verbose=1)
    messages = [record.getMessage() for record in caplog.records]
    assert any("objective" in text and "bound" in text and "gap" in text for text in messages)
    assert "OSQP" not in capfd.readouterr().out  # solver logs only from level 2
    # level 2: the solver's summary through logging, nothing on stdout
    caplog.clear()
    with caplog.at_level("INFO", logger="qpm_sklearn"):
        again = solve_selection(A, n_selected=6, n_per_class=2, penalty=penalty, random_state=0, verbose=2)
    assert "OSQP" not in capfd.readouterr().out
    assert any("OSQP" in record.getMessage() for record in caplog.records)
    np.testing.assert_array_equal(again.selected, result.selected)
    with pytest.raises(ValueError, match="verbose must be in"):
        solve_selection(A, n_selected=6, n_per_class=2, verbose=-1)


def test_exact_solver_under_a_tiny_time_limit_returns_a_feasible_selection():
    rng = np.random.default_rng(17)
    A, penalty, _ = random_instance(rng, 40, 12, 10, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = solve_selection(A, n_selected=10, n_per_class=3, penalty=penalty, solver="exact", time_limit=1e-3,
                                 random_state=0)
    assert_feasible(result, 40, 12, 10, 3)
    assert result.status in {"time_limit", "time_limit_heuristic"}
    assert result.upper_bound >= result.objective
    if result.status == "time_limit_heuristic":
        assert any("returned no solution" in str(w.message) for w in caught)
        assert result.bound_method in {"milp", "clique", "relaxation"}
