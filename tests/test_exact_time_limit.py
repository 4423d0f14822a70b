"""``solver="exact"`` under a wall-clock ``time_limit`` (docs/selection.md#the-exact-path-under-a-time-limit):
the limit holds whatever HiGHS does, and the result is never worse than the default solver's."""

import time
import warnings

import numpy as np
import pytest
from scipy.optimize import OptimizeResult

from qpm_sklearn.selection import feature_class_correlation, feature_similarity, redundancy_penalty, solve_selection
from qpm_sklearn import selection
from qpm_sklearn.selection import _exact


def _instance(n_features, n_classes, n_selected, seed=0):
    rng = np.random.default_rng(seed)
    F = rng.normal(size=(10 * n_classes, n_features)) + np.repeat(rng.normal(size=(n_classes, n_features)), 10, axis=0)
    A = feature_class_correlation(F, np.repeat(np.arange(n_classes), 10))
    penalty, _ = redundancy_penalty(feature_similarity(A), n_selected, rule="consistent")
    return A, penalty


def _feasible(result, n_classes, m, k):
    assert result.selected.shape == (m,) and len(set(result.selected.tolist())) == m
    assert result.assignment.shape == (n_classes, m) and (result.assignment.sum(1) == k).all()
    assert len({row.tobytes() for row in result.assignment}) == n_classes


def test_exact_path_returns_within_its_wall_time_limit_on_an_instance_highs_cannot_finish():
    # 300 x 100 -> 40 x 4 with a dense penalty: HiGHS needs far longer than 3 s here. Generous slack
    # (process start, a loaded machine): the point is that the limit is not exceeded many times over.
    A, penalty = _instance(300, 100, 40)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = solve_selection(A, n_selected=40, n_per_class=4, penalty=penalty, solver="exact", time_limit=3,
                                 random_state=0)
    assert time.perf_counter() - started < 3 + 15
    _feasible(result, 100, 40, 4)
    assert result.status in {"time_limit", "time_limit_heuristic"}
    assert result.upper_bound >= result.objective


@pytest.mark.parametrize("case", [(60, 20, 12, 3), (120, 40, 20, 3)])
def test_exact_path_is_never_worse_than_the_default_solver(case):
    # The default solver needs about 0.15 CPU s here, so beside HiGHS under a 3 s limit it finishes
    # and returns what it returns without a limit; the exact path then returns that or better (HiGHS
    # needs 20-40 s to prove these, so it is stopped at the limit).
    n_features, n_classes, m, k = case
    A, penalty = _instance(n_features, n_classes, m, seed=1)
    default = solve_selection(A, n_selected=m, n_per_class=k, penalty=penalty, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        exact = solve_selection(A, n_selected=m, n_per_class=k, penalty=penalty, solver="exact", time_limit=3,
                                random_state=0)
    _feasible(exact, n_classes, m, k)
    assert exact.objective >= default.objective - 1e-9 * abs(default.objective)
    assert exact.upper_bound >= exact.objective
    if exact.status == "optimal":
        assert exact.upper_bound <= default.upper_bound + 1e-9 * abs(default.upper_bound)


@pytest.mark.filterwarnings("ignore:OSQP stopped")  # the default solver's limit is tiny too
def test_no_time_for_the_worker_returns_the_default_solvers_selection_with_a_warning():
    A, penalty = _instance(40, 12, 10)
    with pytest.warns(RuntimeWarning, match=r"returned no solution \(less than 1 s of the limit was left"):
        result = solve_selection(A, n_selected=10, n_per_class=3, penalty=penalty, solver="exact", time_limit=0.05,
                                 random_state=0)
    _feasible(result, 12, 10, 3)
    assert result.status == "time_limit_heuristic" and result.bound_method != "milp"


def test_worker_that_cannot_fit_the_model_ends_and_the_default_selection_is_returned(monkeypatch):
    # A 64 MiB address-space cap (below what the worker already holds): HiGHS's model does not fit, the
    # worker ends with an error and the exact path returns the default solver's selection.
    monkeypatch.setattr(_exact, "MILP_MEMORY_BYTES", 64 * 2**20)
    A, penalty = _instance(40, 12, 10)
    with pytest.warns(RuntimeWarning, match=r"returned no solution \(the HiGHS worker process ended with exit status"):
        result = solve_selection(A, n_selected=10, n_per_class=3, penalty=penalty, solver="exact", time_limit=20,
                                 random_state=0)
    _feasible(result, 12, 10, 3)
    assert result.status == "time_limit_heuristic"


def _recording_worker_starts(monkeypatch):
    started = []
    start = _exact._MilpWorker.start

    def recording_start(*args):
        worker = start(*args)
        started.append(worker)
        return worker

    monkeypatch.setattr(_exact._MilpWorker, "start", recording_start)
    return started


def test_the_default_solver_runs_beside_highs_under_the_whole_limit(monkeypatch):
    started, deadlines = _recording_worker_starts(monkeypatch), []
    solve_default = selection._solve_default

    def recording_solve_default(problem, *, deadline, **options):
        deadlines.append(deadline)
        assert started and started[0].process.poll() is None, "HiGHS must already be running"
        return solve_default(problem, deadline=deadline, **options)

    monkeypatch.setattr(selection, "_solve_default", recording_solve_default)
    A, penalty = _instance(40, 12, 10)
    before = time.perf_counter()
    result = solve_selection(A, n_selected=10, n_per_class=3, penalty=penalty, solver="exact", time_limit=20,
                             random_state=0)
    _feasible(result, 12, 10, 3)
    assert len(deadlines) == 1 and before + 20 <= deadlines[0] <= time.perf_counter() + 20
    assert started[0].process.poll() is not None and not started[0].folder.exists()


def test_an_interrupted_default_solver_stops_the_worker_and_removes_its_files(monkeypatch):
    started = _recording_worker_starts(monkeypatch)

    def interrupted(problem, **options):
        raise KeyboardInterrupt

    monkeypatch.setattr(selection, "_solve_default", interrupted)
    A, penalty = _instance(300, 100, 40)  # HiGHS is still working when the interrupt comes
    with pytest.raises(KeyboardInterrupt):
        solve_selection(A, n_selected=40, n_per_class=4, penalty=penalty, solver="exact", time_limit=60)
    assert started[0].process.poll() is not None, "the worker must not outlive the solve"
    assert not started[0].folder.exists()


def test_highs_ending_without_a_selection_is_named_in_the_warning(monkeypatch):
    # HiGHS out of memory, as at 4096 x 2000 under the worker's cap: scipy wraps the status it does not
    # know, and the warning names HiGHS's own text instead of blaming the time limit.
    from qpm_sklearn.selection import _milp

    def out_of_memory(*args, **kwargs):
        return OptimizeResult(x=None, status=4, mip_dual_bound=None,
                              message="The HiGHS status code was not recognized. (HiGHS Status 18: Memory limit "
                                      "reached)")

    monkeypatch.setattr(_milp, "milp", out_of_memory)
    A, penalty = _instance(40, 12, 10)
    with pytest.warns(RuntimeWarning, match=r"returned no solution \(HiGHS: Memory limit reached\); returning "
                                            r"the default solver's selection \(run after it\)"):
        result = solve_selection(A, n_selected=10, n_per_class=3, penalty=penalty, solver="exact", random_state=0)
    _feasible(result, 12, 10, 3)
    assert result.status == "time_limit_heuristic" and result.bound_method != "milp"
