"""The QPM feature-selection problem (docs/method.md#selection): the public API.

Problem (docs/method.md#problem, :func:`solve_selection`), with ``k = n_per_class``, ``m = n_selected`` and
``alpha = 1000 / (k * C)``::

    maximise  alpha * sum_{f,c} A[f,c] E[f,c] - sum_{i<j} penalty[i,j] s_i s_j + sum_f bias[f] s_f
    over      s in {0,1}^N, E in {0,1}^{N x C}
    s.t.      sum(s) = m,  E <= s,  every column of E has exactly k ones,  no two columns equal.

The package follows the maths, one file per piece (imports run down this list):

- ``_problem``: the instance (:class:`~qpm_sklearn.selection._problem.Problem`), its objective and,
  for a fixed selection, the exact best assignment with no two classes sharing a set.
- ``_redundancy``: the problem data ``A``, ``R`` and the pair penalty under either threshold rule.
- ``_search``: swap local search and the seeded tabu search.
- ``_bounds``: the OSQP relaxation (concave by a diagonal shift, exact on binary points) and the two
  certified upper bounds (tangent plane; Lagrangian bound over clique covers of the penalty).
- ``_milp``: ``solver="exact"``, the linearised MILP solved by HiGHS (``scipy.optimize.milp``).

This module holds the public entry point :func:`solve_selection` (the default solver relaxes, rounds,
improves by local and tabu search and reports the smaller certified bound), its options
(:func:`check_solver_options`) and its result (:class:`SelectionResult`).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from sklearn.utils import check_random_state
from threadpoolctl import threadpool_limits

from .._utils import check_int as _check_int
from ..exceptions import ConvergenceWarning
from ._bounds import (
    OSQP_ALGEBRAS,
    certified_bound,
    dual_thresholds,
    clique_bound,
    concave_shift,
    osqp_algebra,
    solve_relaxation,
)
from ._constraints import check_constraints, constrained_problem
from ._exact import solve_exact
from ._problem import assignment_scale, build_problem, check_selection_budget, evaluate, selection_objective
from ._redundancy import feature_class_correlation, feature_similarity, redundancy_penalty
from ._search import LocalSearch, log_progress, round_relaxation, tabu_search, warm_start


__all__ = [
    "SelectionResult",
    "assignment_scale",
    "check_constraints",
    "check_selection_budget",
    "check_solver_options",
    "feature_class_correlation",
    "feature_similarity",
    "redundancy_penalty",
    "selection_objective",
    "solve_selection",
]


@dataclass
class SelectionResult:
    """Outcome of :func:`solve_selection`.

    Parameters
    ----------
    selected : ndarray of shape (n_selected,)
        Sorted ids of the selected features.
    assignment : ndarray of shape (n_classes, n_selected), dtype uint8
        ``assignment[c, j] = 1`` when class ``c`` uses feature ``selected[j]``; exactly
        ``n_per_class`` ones per row and no two rows equal.
    objective : float
        Objective of the returned solution (the formula of docs/method.md#problem, :func:`selection_objective`).
    upper_bound : float
        A valid upper bound on the optimum.
    gap : float
        ``(upper_bound - objective) / |objective|`` (Gurobi's relative MIP gap).
    seconds : float
        Wall-clock time of the solve.
    status : str
        ``"optimal"`` (proven), ``"feasible"`` (default solver's solution with the bound above),
        ``"time_limit"`` (stopped by ``time_limit``; still feasible, with the bound reached by
        then) or ``"time_limit_heuristic"`` (the default solver's selection is returned: the MILP
        found none, or none better, within the limit; docs/selection.md).
    bound_method : str
        What proved ``upper_bound``: ``"clique"`` (Lagrangian bound over clique covers of the
        penalty, :func:`clique_bound`), ``"relaxation"`` (tangent plane at the OSQP
        relaxation, :func:`certified_bound`), ``"milp"`` (HiGHS's dual bound) or
        ``"objective"`` (the solution is proven optimal by the bound meeting it).
    cpu_seconds : float
        Processor time of the solve (this process), next to the wall-clock ``seconds``.
    """

    selected: np.ndarray
    assignment: np.ndarray
    objective: float
    upper_bound: float
    gap: float
    seconds: float
    status: str
    bound_method: str = "relaxation"
    cpu_seconds: float = float("nan")

    def as_dict(self) -> dict[str, float | str]:
        """The scalar numbers as plain Python types (for ``selection_info_`` and JSON).

        Returns
        -------
        dict
            ``objective``, ``upper_bound``, ``gap``, ``seconds``, ``cpu_seconds``, ``status`` and
            ``bound_method``.
        """
        return {
            "objective": float(self.objective),
            "upper_bound": float(self.upper_bound),
            "gap": float(self.gap),
            "seconds": float(self.seconds),
            "cpu_seconds": float(self.cpu_seconds),
            "status": str(self.status),
            "bound_method": str(self.bound_method),
        }


_SOLVER_OPTIONS = {
    "osqp": ("algebra", "eps", "max_iter", "candidates_per_class", "n_iterations"),
    "exact": ("mip_rel_gap",),
}


_COMMON_OPTIONS = ("solver", "time_limit")


_ESTIMATOR_ARGUMENTS = ("A", "n_selected", "n_per_class", "penalty", "bias", "random_state", "verbose", "exclude",
                        "include", "fixed", "initial")


def _check_option(name: str, value):
    """One solver option's value, validated (ValueError / TypeError naming it otherwise)."""
    if name == "solver":
        if value not in _SOLVER_OPTIONS:
            raise ValueError(f"solver must be one of {tuple(_SOLVER_OPTIONS)}; got {value!r}.")
    elif name == "time_limit":
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, np.number))
                                  or not value > 0 or not math.isfinite(value)):
            raise ValueError(f"time_limit must be None or a positive number of seconds; got {value!r}.")
    elif name == "algebra":
        if value not in OSQP_ALGEBRAS:
            raise ValueError(f"algebra must be one of {OSQP_ALGEBRAS}; got {value!r}.")
    elif name in ("eps", "mip_rel_gap"):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 <= value < 1:
            raise ValueError(f"{name} must be a number in [0, 1); got {value!r}.")
        if name == "eps" and value == 0:
            raise ValueError("eps must be a positive OSQP tolerance; got 0.")
    elif name == "candidates_per_class" and value is None:
        pass
    else:  # max_iter, candidates_per_class, n_iterations
        _check_int(value, name, 0 if name == "n_iterations" else 1, 10**9)
    return value


def check_solver_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate ``solver_options`` (the extra keywords of :func:`solve_selection`); return a dict.

    Callable before any training. Keys: ``solver`` and ``time_limit`` for both solvers;
    ``algebra``, ``eps``, ``max_iter``, ``candidates_per_class``, ``n_iterations`` for
    ``solver="osqp"`` (the default); ``mip_rel_gap`` for ``solver="exact"``. An unknown key, a key
    of the other solver, a key the estimator sets itself (``random_state``, ``verbose``, the
    budgets, ...) or a bad value raises ValueError naming the key and the valid ones.

    Parameters
    ----------
    options : mapping or None
        The options; None means none.

    Returns
    -------
    dict
        A copy of the options.

    Examples
    --------
    >>> check_solver_options({"time_limit": 10, "n_iterations": 500})
    {'time_limit': 10, 'n_iterations': 500}
    >>> check_solver_options({"solver": "exact", "n_iterations": 5})
    Traceback (most recent call last):
    ...
    ValueError: solver option 'n_iterations' belongs to solver='osqp', not solver='exact'; valid options for solver='exact': solver, time_limit, mip_rel_gap.
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"solver_options must be a dict or None; got {type(options).__name__}.")
    options = dict(options)
    solver = _check_option("solver", options.get("solver", "osqp"))
    valid = _COMMON_OPTIONS + _SOLVER_OPTIONS[solver]
    for key, value in options.items():
        if key in _ESTIMATOR_ARGUMENTS:
            raise ValueError(f"solver_options may not set {key!r}: the estimator passes it itself.")
        if key not in valid:
            owner = next((name for name, keys in _SOLVER_OPTIONS.items() if key in keys), None)
            where = f"belongs to solver={owner!r}, not solver={solver!r}" if owner else "is unknown"
            raise ValueError(f"solver option {key!r} {where}; valid options for solver={solver!r}: {', '.join(valid)}.")
        _check_option(key, value)
    return options


def _check_verbose(verbose) -> int:
    """``verbose`` as an int level: 0 quiet, 1 progress, 2 also the OSQP / HiGHS logs."""
    if isinstance(verbose, (bool, np.bool_)):
        return int(verbose)
    return _check_int(verbose, "verbose", 0, 10**9)


def solve_selection(
    A: ArrayLike,
    *,
    n_selected: int,
    n_per_class: int | ArrayLike | Mapping[int, int],
    penalty: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    time_limit: float | None = None,
    random_state: int | np.random.RandomState | None = None,
    solver: Literal["osqp", "exact"] = "osqp",
    verbose: int | bool = False,
    algebra: Literal["builtin", "mkl", "cuda"] = "builtin",
    eps: float = 1e-4,
    max_iter: int = 20000,
    candidates_per_class: int | None = None,
    n_iterations: int = 1000,
    mip_rel_gap: float = 1e-6,
    exclude: ArrayLike | None = None,
    include: ArrayLike | None = None,
    fixed: Mapping[int, ArrayLike] | None = None,
    initial: ArrayLike | None = None,
) -> SelectionResult:
    """Select ``n_selected`` features and assign ``n_per_class`` of them to every class.

    Maximises ``alpha * sum A*E - sum_{i<j} penalty[i,j] s_i s_j + sum bias*s`` with
    ``alpha = 1000 / (n_per_class * n_classes)`` under the constraints of docs/method.md#problem (exactly
    ``n_selected`` features, exactly ``n_per_class`` per class, no two classes with the same set).

    ``solver="osqp"`` (default): the quadratic term is made concave by a diagonal shift (exact
    on binary points), the continuous relaxation is solved by OSQP on pruned candidate edges,
    its solution is rounded and improved by swap local search, then by ``n_iterations`` moves
    of a tabu search over swaps (seeded tenures, tie-breaks and restarts). Every constraint
    holds exactly. The upper bound is the smaller of two certified ones: the tangent plane at
    the relaxation (valid however accurately OSQP solved it) and a Lagrangian bound over clique
    covers of the penalty that sees the penalty (:func:`clique_bound`); ``bound_method`` says
    which. It is computed before the tabu search, so a ``time_limit`` that stops the search
    still returns the best selection so far with its certified gap.
    ``solver="exact"``: the linearised MILP solved by HiGHS (``scipy.optimize.milp``), the
    no-duplicate rule added lazily; a proven optimum when it finishes within ``time_limit``. Under a
    ``time_limit`` HiGHS runs in a worker process stopped at the deadline while the default solver runs
    beside it under the same limit; the better selection is returned (docs/selection.md).

    Constraints (docs/selection.md#constraints): ``exclude`` features are never selected,
    ``include`` ones always, class ``c`` always uses ``fixed[c]``, and ``n_per_class`` may give
    every class its own budget k_c (then ``alpha = 1000 / sum_c k_c``). Every part of both
    solvers honours them; the certified bound stays valid. Without any, the solve is exactly
    the unconstrained one.

    Parameters
    ----------
    A : array-like of shape (n_features, n_classes)
        Feature-class scores (:func:`feature_class_correlation`).
    n_selected : int
        Features selected.
    n_per_class : int, array-like of int of shape (n_classes,) or dict
        Features of every class: one budget for all, or every class's own (an array, or a dict
        class index -> k naming every class). The classes of one budget k need distinct sets:
        at most ``comb(n_selected, k)`` of them.
    penalty : array-like of shape (n_features, n_features), optional
        Pair penalties; entries ``i < j`` count (:func:`redundancy_penalty`). Default: none.
    bias : array-like of shape (n_features,), optional
        Per-feature reward. Default: none.
    time_limit : float, optional
        Seconds for the whole solve (anytime: the best selection found by then is returned, with
        its certified bound; ``status="time_limit"``). At least one round of every stage runs, so
        a tiny limit is exceeded by that much. Without it the result depends only on the inputs
        and ``random_state``; with it, on the machine's speed as well.
    random_state : int, RandomState instance or None
        Seeds the tabu search (tenures, tie-breaks, restarts).
    solver : {"osqp", "exact"}
    verbose : int or bool
        0 / False: quiet. 1 / True: progress (objective, bound, gap) through the ``qpm_sklearn``
        logger and a progress bar. 2 or more: also the OSQP / HiGHS logs.
    algebra : {"builtin", "mkl", "cuda"}
        OSQP linear-algebra backend, always passed explicitly; one that does not load here is
        replaced by ``"builtin"`` with a RuntimeWarning.
    eps : float
        OSQP absolute and relative tolerance.
    max_iter : int
        OSQP iteration limit per solve.
    candidates_per_class : int, optional
        Initial number of candidate features per class in the relaxation (default
        ``12 * n_per_class + 4``); grown where the relaxation needs more.
    n_iterations : int
        Moves of the tabu search after the first local search (0: local search only).
    mip_rel_gap : float
        Relative gap at which HiGHS stops (``solver="exact"``).
    exclude, include : array-like of int, optional
        Feature ids that must not / must be selected.
    fixed : dict, optional
        Class index -> feature ids the class must use (up to its whole budget).
    initial : array-like of int, optional
        A selection to start from (``solver="osqp"``): it is repaired to meet the constraints,
        improved by local search, and kept unless the search from the relaxation finds a
        strictly better one; the tabu search then starts from the better.

    Returns
    -------
    SelectionResult

    Examples
    --------
    >>> import numpy as np
    >>> A = np.random.default_rng(0).normal(size=(12, 4))
    >>> result = solve_selection(A, n_selected=5, n_per_class=2, random_state=0)
    >>> result.selected.shape, result.assignment.shape, result.assignment.sum(1).tolist()
    ((5,), (4, 5), [2, 2, 2, 2])
    >>> bool(result.upper_bound >= result.objective)
    True
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    kept = None
    if exclude is None and include is None and fixed is None and not isinstance(n_per_class, Mapping) \
            and np.ndim(n_per_class) == 0:
        problem = build_problem(A, n_selected, n_per_class, penalty, bias)
    else:
        n_features, n_classes = np.shape(A) if np.ndim(A) == 2 else (0, 0)
        if n_features == 0:
            build_problem(A, n_selected, 1, penalty, bias)  # raises the usual error for A
        constraints = check_constraints(n_features, n_classes, n_selected, n_per_class, exclude, include, fixed)
        instance = constrained_problem(A, n_selected, penalty, bias, constraints)
        problem, kept = instance.problem, instance.kept
    if initial is not None:
        initial = np.asarray(initial)
        n_features = int(np.shape(A)[0])
        if initial.ndim != 1 or initial.dtype.kind not in "iu" or np.any(initial < 0) or np.any(initial >= n_features):
            raise ValueError(f"initial must be feature ids in [0, {n_features}); got {initial!r}.")
        if kept is not None:
            initial = np.searchsorted(kept, np.intersect1d(initial, kept))
        initial = np.unique(initial.astype(np.intp))
    check_solver_options({"solver": solver, "time_limit": time_limit, "algebra": algebra, "eps": eps,
                          "max_iter": max_iter, "candidates_per_class": candidates_per_class,
                          "n_iterations": n_iterations} if solver == "osqp" else
                         {"solver": solver, "time_limit": time_limit, "mip_rel_gap": mip_rel_gap})
    verbose = _check_verbose(verbose)
    candidates_per_class = 12 * problem.k + 4 if candidates_per_class is None else candidates_per_class
    deadline = math.inf if time_limit is None else start + time_limit
    default_options = dict(algebra=algebra, eps=eps, max_iter=max_iter, candidates_per_class=candidates_per_class,
                           n_iterations=n_iterations, random_state=random_state, verbose=verbose, initial=initial)
    if solver == "exact":
        S, upper_bound, bound_method, status, milp_failure = solve_exact(
            problem, time_limit=time_limit, mip_rel_gap=mip_rel_gap, verbose=verbose, start=start,
            solve_default=lambda stop: _solve_default(problem, deadline=stop, **default_options))
        if milp_failure is not None:
            how = "run after it" if time_limit is None else "run beside it under the same time_limit"
            warnings.warn(f"The MILP returned no solution ({milp_failure}); returning the default solver's "
                          f"selection ({how}).", ConvergenceWarning, stacklevel=2)
    else:
        S, upper_bound, bound_method, timed_out = _solve_default(problem, deadline=deadline, **default_options)
        status = "time_limit" if timed_out else "feasible"

    S = np.sort(S)
    objective, _, assignment = evaluate(problem, S)
    if not np.isfinite(objective):
        raise ValueError(
            "no selection meets the constraints: the solver found no selection of n_selected features whose "
            "classes all get distinct sets with their pinned features and budgets; loosen fixed, n_per_class "
            "or exclude, or raise n_selected."
        )
    if kept is not None:
        S = kept[S]
    if upper_bound <= objective:  # the bound meets the objective: proven optimal
        upper_bound, bound_method = objective, "objective" if bound_method != "milp" else bound_method
    gap = (upper_bound - objective) / max(abs(objective), 1e-12)
    if status == "feasible" and gap <= 1e-9:
        status = "optimal"
    log_progress(verbose, "done", objective, upper_bound)
    return SelectionResult(
        selected=S.astype(np.intp),
        assignment=assignment.astype(np.uint8),
        objective=float(objective),
        upper_bound=float(upper_bound),
        gap=float(gap),
        seconds=time.perf_counter() - start,
        status=status,
        bound_method=bound_method,
        cpu_seconds=time.process_time() - cpu_start,
    )


def _solve_default(problem, *, deadline, algebra, eps, max_iter, candidates_per_class, n_iterations,
                   random_state, verbose, initial=None):
    """Relaxation (OSQP), rounding, local search, certified bounds, tabu search.

    Returns (S, upper bound, bound method, timed out).
    """
    algebra = osqp_algebra(algebra)
    shift = concave_shift(problem.Q)
    # Any shift >= the smallest one is exact on binary points; a floor makes the relaxation
    # strongly concave, which OSQP solves in few iterations (an LP would take it thousands).
    # The bound below is certified with the smallest shift, at whatever point OSQP returns.
    solve_shift = max(shift, 0.5 * float(np.abs(problem.W).max()))
    # Under a time limit the relaxation gets at most half of it, so that the search gets the rest.
    remaining = None if deadline == math.inf else max(0.5 * (deadline - time.perf_counter()), 1e-3)
    s, _ = solve_relaxation(problem, shift=solve_shift, algebra=algebra, eps=eps, max_iter=max_iter,
                       time_limit=remaining, verbose=verbose >= 2, candidates_per_class=candidates_per_class)
    upper_bound, bound_method = certified_bound(problem, s, shift), "relaxation"
    with threadpool_limits(limits=1, user_api="blas"):  # small products: threads only contend
        search = LocalSearch(problem, deadline)
        S, value = search.run(round_relaxation(problem, s))
        if initial is not None:  # ties keep the warm start
            warm, warm_value = search.run(warm_start(problem, initial, s))
            if warm_value >= value:
                S, value = warm, warm_value
        clique = clique_bound(problem, dual_thresholds(problem, s), value, deadline=deadline)
        if clique < upper_bound:
            upper_bound, bound_method = clique, "clique"
        log_progress(verbose, "local search", value, upper_bound)
        S, _ = tabu_search(search, S, value, n_iterations, check_random_state(random_state),
                            weights=s + 1.0 / s.size, bound=upper_bound, verbose=verbose)
    return S, upper_bound, bound_method, search.timed_out
