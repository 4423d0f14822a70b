"""Constrained selection (exclude, include, fixed, per-class budgets) against brute force and HiGHS."""

import itertools
import math

import numpy as np
import pytest

from qpm_sklearn.selection import selection_objective, solve_selection


def brute_force(A, penalty, m, budgets, exclude=(), include=(), fixed=None):
    """Best objective over every selection and every assignment meeting the constraints (or -inf)."""
    n_features, n_classes = A.shape
    fixed = fixed or {}
    best = -math.inf
    allowed = [f for f in range(n_features) if f not in set(exclude)]
    for S in itertools.combinations(allowed, m):
        if not set(include) <= set(S) or any(not set(v) <= set(S) for v in fixed.values()):
            continue
        options = [
            [T for T in itertools.combinations(S, budgets[c]) if set(fixed.get(c, ())) <= set(T)]
            for c in range(n_classes)
        ]
        for sets in itertools.product(*options):
            if len(set(sets)) < n_classes:
                continue
            assignment = np.array([[f in T for f in S] for T in sets], dtype=float)
            value = selection_objective(A, list(S), assignment, penalty=penalty, n_per_class=list(budgets))
            best = max(best, value)
    return best


def check_result(result, A, penalty, m, budgets, exclude=(), include=(), fixed=None):
    selected, assignment = result.selected, result.assignment.astype(bool)
    assert len(selected) == m and len(set(selected.tolist())) == m
    assert not set(selected.tolist()) & set(exclude)
    assert set(include) <= set(selected.tolist())
    assert assignment.sum(1).tolist() == list(budgets)
    assert len({row.tobytes() for row in assignment}) == A.shape[1]
    for c, features in (fixed or {}).items():
        used = set(selected[assignment[c]].tolist())
        assert set(features) <= used
    value = selection_objective(A, selected, assignment, penalty=penalty, n_per_class=list(budgets))
    assert value == pytest.approx(result.objective, rel=1e-9, abs=1e-9)


def instance(seed, n_features=7, n_classes=3):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n_features, n_classes))
    penalty = np.abs(rng.normal(size=(n_features, n_features))) * rng.uniform(0, 80)
    penalty = (penalty + penalty.T) / 2 * (rng.uniform(size=(n_features, n_features)) < 0.5)
    return A, penalty


CASES = [
    dict(budgets=(2, 2, 2), exclude=(0, 3)),
    dict(budgets=(2, 2, 2), include=(1, 6)),
    dict(budgets=(2, 2, 2), fixed={0: (4,), 2: (1, 5)}),
    dict(budgets=(1, 2, 3)),
    dict(budgets=(2, 1, 2), exclude=(2,), include=(0,), fixed={1: (5,)}),
    dict(budgets=(3, 3, 2), fixed={0: (1, 2), 1: (1, 2)}),  # two classes share two pins
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_constrained_solves_match_brute_force_and_highs(case, seed):
    spec = dict(CASES[case])
    budgets = spec.pop("budgets")
    A, penalty = instance(seed)
    m = 4
    optimum = brute_force(A, penalty, m, budgets, **spec)
    assert np.isfinite(optimum)
    n_per_class = list(budgets) if len(set(budgets)) > 1 else budgets[0]
    for solver in ("osqp", "exact"):
        result = solve_selection(A, n_selected=m, n_per_class=n_per_class, penalty=penalty, random_state=seed,
                                 solver=solver, **spec)
        check_result(result, A, penalty, m, budgets, **spec)
        assert result.objective == pytest.approx(optimum, rel=1e-7, abs=1e-7), solver
        assert result.upper_bound >= optimum - 1e-7 * abs(optimum)


def test_per_class_budgets_use_alpha_over_the_budget_sum():
    A, _ = instance(3)
    result = solve_selection(A, n_selected=4, n_per_class={0: 1, 1: 2, 2: 3}, random_state=0, solver="exact")
    expected = 1000.0 / 6 * float((A[result.selected].T * result.assignment).sum())
    assert result.objective == pytest.approx(expected)


def test_equal_budgets_given_as_an_array_solve_the_unconstrained_problem():
    A, penalty = instance(4)
    plain = solve_selection(A, n_selected=4, n_per_class=2, penalty=penalty, random_state=0)
    as_array = solve_selection(A, n_selected=4, n_per_class=[2, 2, 2], penalty=penalty, random_state=0)
    assert np.array_equal(plain.selected, as_array.selected)
    assert np.array_equal(plain.assignment, as_array.assignment)
    assert plain.objective == as_array.objective


def test_larger_constrained_instance_keeps_constraints_and_a_valid_bound():
    rng = np.random.default_rng(5)
    A = rng.normal(size=(40, 6))
    penalty = np.abs(rng.normal(size=(40, 40))) * 5 * (rng.uniform(size=(40, 40)) < 0.2)
    budgets = [2, 3, 2, 4, 2, 3]
    spec = dict(exclude=[0, 1, 2], include=[10], fixed={3: [11, 12], 0: [13]})
    exact = solve_selection(A, n_selected=8, n_per_class=budgets, penalty=penalty, solver="exact", **spec)
    default = solve_selection(A, n_selected=8, n_per_class=budgets, penalty=penalty, random_state=0, **spec)
    for result in (exact, default):
        check_result(result, A, penalty, 8, budgets, **spec)
    assert exact.status == "optimal"
    assert default.upper_bound >= exact.objective - 1e-6
    assert default.objective <= exact.upper_bound + 1e-6


def test_warm_start_keeps_an_optimal_initial_selection():
    A, penalty = instance(6, n_features=12, n_classes=4)
    first = solve_selection(A, n_selected=5, n_per_class=2, penalty=penalty, random_state=0, solver="exact")
    again = solve_selection(A, n_selected=5, n_per_class=2, penalty=penalty, random_state=1,
                            initial=first.selected)
    assert np.array_equal(again.selected, first.selected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(exclude=[99]), "exclude holds feature ids \\[99\\]"),
        (dict(include=[-1]), "include holds feature ids"),
        (dict(include=[1], exclude=[1]), "include and exclude contradict"),
        (dict(fixed={0: [2]}, exclude=[2]), "fixed\\[0\\] pins features \\[2\\] that exclude removes"),
        (dict(include=[0, 1, 2, 3, 4]), "more than n_selected=4"),
        (dict(fixed={0: [0, 1, 2]}), "fixed\\[0\\] pins 3 features, more than class 0's budget"),
        (dict(fixed={5: [0]}), "fixed maps class indices"),
        (dict(n_per_class=[1, 1, 1, 1, 1]), "one budget per class"),
        (dict(n_per_class={0: 2}), "classes \\[1, 2\\] have none"),
        (dict(n_per_class=[4, 4, 1]), "2 classes with a budget of 4"),
        (dict(fixed={0: [0, 1], 1: [0, 1]}), "n_per_class: .*|fixed pins 2 classes"),
        (dict(exclude=[0, 1, 2, 3]), "leaving fewer than n_selected=4"),
    ],
)
def test_infeasible_constraints_are_named(kwargs, message):
    A, penalty = instance(0)
    kwargs = dict(kwargs)
    n_per_class = kwargs.pop("n_per_class", 2)
    with pytest.raises(ValueError, match=message):
        solve_selection(A, n_selected=4, n_per_class=n_per_class, penalty=penalty, **kwargs)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_certified_bounds_hold_at_any_point_under_constraints(case):
    """The tangent-plane and clique bounds of the constrained problem, at random points s, never fall
    below the brute-force optimum (the solver clips a bound below its objective, so test them directly)."""
    from qpm_sklearn.selection._bounds import certified_bound, clique_bound, concave_shift, dual_thresholds
    from qpm_sklearn.selection._constraints import check_constraints, constrained_problem

    spec = dict(CASES[case])
    budgets = spec.pop("budgets")
    for seed in range(3):
        A, penalty = instance(seed)
        optimum = brute_force(A, penalty, 4, budgets, **spec)
        constraints = check_constraints(7, 3, 4, list(budgets), **spec)
        problem = constrained_problem(A, 4, penalty, None, constraints).problem
        shift = concave_shift(problem.Q)
        rng = np.random.default_rng(seed)
        for _ in range(5):
            s = rng.uniform(size=problem.W.shape[0])
            s *= 4 / s.sum()
            assert certified_bound(problem, s, shift) >= optimum - 1e-7
            bound = clique_bound(problem, dual_thresholds(problem, np.clip(s, 0, 1)), optimum, deadline=math.inf)
            assert bound >= optimum - 1e-7
