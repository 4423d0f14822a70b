"""The continuous relaxation (OSQP) and the certified upper bounds of the selection problem.

Owns the concave diagonal shift (exact on binary points), the relaxation on pruned candidate
edges solved by OSQP (:func:`solve_relaxation`), and the two certified bounds: the tangent plane
at the relaxation's solution (:func:`certified_bound`, valid whatever accuracy OSQP reached) and
the Lagrangian bound over clique covers of the penalty graph (:func:`clique_bound`).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import osqp
import scipy.sparse as sp

from .._utils import logger
from ..exceptions import ConvergenceWarning
from ._problem import Problem


OSQP_ALGEBRAS = ("builtin", "mkl", "cuda")


def concave_shift(Q: np.ndarray) -> float:
    """Smallest uniform diagonal shift making ``Q + shift * I`` positive semidefinite (+ margin)."""
    if not Q.any():
        return 0.0
    smallest = float(np.linalg.eigvalsh(Q)[0])
    return max(0.0, -smallest) * (1.0 + 1e-9) + 1e-12 * (1.0 + np.abs(Q).max())


def class_thresholds(W: np.ndarray, s: np.ndarray, k) -> np.ndarray:
    """Per class, the optimal dual threshold u of max{W.e : 0 <= e <= s, sum e = k}.

    ``k`` is an int, or an array of every class's own budget.

    It minimises k*u + sum_f s_f max(0, W[f] - u): the weight at which the s-mass of the
    features sorted by weight reaches k.
    """
    order = np.argsort(-W, axis=0, kind="stable")
    mass = np.cumsum(s[order], axis=0)
    position = np.minimum((mass < k - 1e-12).sum(0), W.shape[0] - 1)
    u = W[order[position, np.arange(W.shape[1])], np.arange(W.shape[1])]
    if np.ndim(k) == 0:
        return u
    # pinned edges are -inf (Problem.dual_terms): a class whose free mass runs out takes its lowest weight
    lowest = np.where(np.isfinite(W), W, np.inf).min(0)
    return np.where(np.isfinite(u), u, np.where(np.isfinite(lowest), lowest, 0.0))


def certified_bound(problem: Problem, s: np.ndarray, shift: float) -> float:
    """Upper bound on the optimum, valid for any point ``s`` (the relaxation's solution).

    On binary s with sum(s) = m the objective equals the concave
    Phi(s) = -s'(Q + shift I)s/2 + (shift/2 + bias)'s + sum_c g_c(s), where g_c(s) is the LP value
    of class c's assignment. For all s: the concave quadratic lies below its tangent plane at
    ``s`` and g_c(s) <= k u_c + sum_f s_f max(0, W[f, c] - u_c) for any u_c (LP duality). The
    maximum of the resulting linear function over {0 <= s <= 1, sum s = m} is the sum of its m
    largest coefficients. With non-negative penalties, dropping the penalty instead gives a
    second bound; the smaller is returned. Under constraints the same functions bound the
    problem with its pinned features dropped (a relaxation: the bound stays valid) and
    per-class budgets in the dual term; forced features enter the maximisation as fixed ones.
    """
    s = np.clip(s, 0.0, 1.0)
    u = dual_thresholds(problem, s)
    curvature = problem.Q @ s + shift * s
    bound = _dual_bound(problem, u, slope=0.5 * shift - curvature, constant=0.5 * float(s @ curvature))
    if np.all(problem.Q >= 0):
        bound = min(bound, _dual_bound(problem, u))
    return bound


def dual_thresholds(problem: Problem, s: np.ndarray) -> np.ndarray:
    """:func:`class_thresholds` of the problem's assignment LPs (pinned edges taken, :attr:`Problem.dual_terms`)."""
    W, budgets, _ = problem.dual_terms
    return class_thresholds(W, s, budgets)


def osqp_algebra(algebra: str) -> str:
    if algebra not in OSQP_ALGEBRAS:
        raise ValueError(f"algebra must be one of {OSQP_ALGEBRAS}; got {algebra!r}.")
    if not osqp.algebra_available(algebra):
        warnings.warn(
            f"OSQP algebra {algebra!r} was requested but does not load here (available: "
            f"{osqp.algebras_available()}); using 'builtin'.",
            RuntimeWarning,
            stacklevel=4,
        )
        return "builtin"
    return algebra


@dataclass
class _PrunedRelaxation:
    """Linear part of the relaxation on pruned candidate edges.

    Variables x = [s (N), e (one per candidate edge), t (C)]: the candidate edges of class c
    are its ``n_candidates[c]`` heaviest features; the slack t_c stands for assignment mass on
    its other features, valued at their largest weight (an over-estimate, so the pruned problem
    still relaxes the full one). Constraints ``lower <= matrix @ x <= upper``: sum s = m,
    e[f, c] <= s[f], sum_f e[f, c] + t_c = k, then the variable bounds. ``gain`` is the linear
    objective (to maximise).
    """

    gain: np.ndarray
    matrix: sp.csc_matrix
    lower: np.ndarray
    upper: np.ndarray
    edge_feature: np.ndarray
    edge_class: np.ndarray
    class_rows: np.ndarray  # rows of the per-class totals
    slacks: np.ndarray  # columns of t
    pruned: np.ndarray  # classes with a slack

    @classmethod
    def build(cls, problem: Problem, n_candidates: np.ndarray, ranking: np.ndarray) -> "_PrunedRelaxation":
        W, k, m = problem.W, problem.class_budget, problem.m
        n_features, n_classes = W.shape
        classes = np.arange(n_classes)
        edge_class = np.repeat(classes, n_candidates)
        edge_feature = np.concatenate([ranking[: n_candidates[c], c] for c in classes])
        n_edges = edge_feature.size
        edges = n_features + np.arange(n_edges)
        slacks = n_features + n_edges + classes
        n_var = n_features + n_edges + n_classes
        pruned = n_candidates < n_features
        variable_lower = np.zeros(n_var)
        if problem.forced is not None:  # s_f = 1 for forced features
            variable_lower[:n_features] = problem.forced
        if problem.pinned is not None:  # e = 1 on pinned edges
            variable_lower[edges] = problem.pinned[edge_feature, edge_class]
        slack_value = np.where(pruned, W[ranking[np.minimum(n_candidates, n_features - 1), classes], classes], 0.0)
        sum_s = sp.csc_matrix((np.ones(n_features), (np.zeros(n_features, int), np.arange(n_features))), (1, n_var))
        edge_below_s = sp.csc_matrix(
            (np.repeat([1.0, -1.0], n_edges), (np.tile(np.arange(n_edges), 2), np.concatenate([edges, edge_feature]))),
            (n_edges, n_var),
        )
        class_total = sp.csc_matrix(
            (np.ones(n_edges + n_classes), (np.concatenate([edge_class, classes]), np.concatenate([edges, slacks]))),
            (n_classes, n_var),
        )
        return cls(
            gain=np.concatenate([problem.bias, W[edge_feature, edge_class], slack_value]),
            matrix=sp.vstack([sum_s, edge_below_s, class_total, sp.identity(n_var, format="csc")], format="csc"),
            lower=np.concatenate([[m], np.full(n_edges, -np.inf), np.full(n_classes, k), variable_lower]),
            upper=np.concatenate(
                [[m], np.zeros(n_edges), np.full(n_classes, k), np.ones(n_features), np.full(n_edges, np.inf),
                 np.where(pruned, np.inf, 0.0)]
            ),
            edge_feature=edge_feature,
            edge_class=edge_class,
            class_rows=1 + n_edges + classes,
            slacks=slacks,
            pruned=pruned,
        )


def solve_relaxation(problem, *, shift, algebra, eps, max_iter, time_limit, verbose, candidates_per_class,
                slack_tolerance=1e-2):
    """Solve the concave relaxation with OSQP on pruned candidate edges; return (s, info).

    Maximises -s'(Q + shift I)s/2 + shift/2 sum s + the linear part of :class:`_PrunedRelaxation`
    (OSQP minimises, so negated). Classes whose slack carries mass get twice the candidates and
    the problem is solved again, warm-started.
    """
    n_features, n_classes = problem.W.shape
    # pinned edges rank first, so that they are always candidates
    ranking = np.argsort(-(problem.W if problem.pinned is None else np.where(problem.pinned, np.inf, problem.W)),
                         axis=0, kind="stable")
    n_candidates = np.full(n_classes, min(n_features, candidates_per_class))
    curvature = sp.triu(sp.csc_matrix(problem.Q + shift * np.eye(n_features)), format="csc")
    s = np.full(n_features, problem.m / n_features)
    warm = False
    info = {"osqp_status": "not run", "osqp_iterations": 0, "osqp_rounds": 0}
    start = time.perf_counter()
    while True:
        relaxed = _PrunedRelaxation.build(problem, n_candidates, ranking)
        n_other = relaxed.gain.size - n_features
        P = sp.block_diag([curvature, sp.csc_matrix((n_other, n_other))], format="csc")
        q = -relaxed.gain
        q[:n_features] -= 0.5 * shift
        # No polishing: it costs another factorisation per solve, and the point only seeds the
        # rounding and the bounds, which are certified at whatever point OSQP returns.
        # OSQP's own log goes to stdout from C; at verbose the summary below goes through logging.
        settings = dict(verbose=False, eps_abs=eps, eps_rel=eps, max_iter=max_iter, polishing=False)
        if time_limit is not None:
            remaining = time_limit - (time.perf_counter() - start)
            if remaining <= 0:
                break
            settings["time_limit"] = remaining
        solver = osqp.OSQP(algebra=algebra)
        solver.setup(P, q, relaxed.matrix, relaxed.lower, relaxed.upper, **settings)
        if warm:
            solver.warm_start(x=_relaxed_warm_start(s, problem.W, relaxed.edge_feature, relaxed.edge_class,
                                                    problem.class_budget))
        result = solver.solve(raise_error=False)
        info["osqp_status"] = result.info.status
        info["osqp_iterations"] += int(result.info.iter)
        info["osqp_rounds"] += 1
        if result.x is None or not np.all(np.isfinite(result.x[:n_features])):
            break
        s, warm = np.clip(result.x[:n_features], 0.0, 1.0), True
        grow = (result.x[relaxed.slacks] > slack_tolerance) & relaxed.pruned
        if result.info.status != "solved" or not grow.any():
            break
        n_candidates[grow] = np.minimum(2 * n_candidates[grow], n_features)
    info["osqp_seconds"] = time.perf_counter() - start
    logger.log(logging.INFO if verbose else logging.DEBUG, "selection relaxation (OSQP): %s", info)
    if info["osqp_status"] != "solved":
        warnings.warn(
            f"OSQP stopped with status {info['osqp_status']!r}; the solution stays feasible and the "
            "bound valid, but the bound may be loose (raise max_iter or time_limit).",
            ConvergenceWarning,
            stacklevel=4,
        )
    return s, info


def _dual_bound(problem: Problem, u: np.ndarray, slope=0.0, constant=0.0) -> float:
    """Maximum over {0 <= s <= 1, sum s = m} of the linear over-estimator
    k sum u + constant + (bias + slope + sum_c max(0, W[:, c] - u_c))'s: its m largest coefficients."""
    coefficients = problem.bias + slope + np.maximum(problem.dual_terms[0] - u, 0.0).sum(1)
    return problem.budget_total(u) + constant + _largest_sum(coefficients, problem.m, problem.forced)


def _largest_sum(coefficients: np.ndarray, m: int, forced=None) -> float:
    """max over {0 <= s <= 1, sum s = m, s = 1 on forced} of coefficients's: the forced ones and the
    largest of the others."""
    if forced is None:
        return float(np.partition(coefficients, -m)[-m:].sum())
    rest, n_rest = coefficients[~forced], m - int(forced.sum())
    taken = float(np.partition(rest, -n_rest)[-n_rest:].sum()) if n_rest > 0 else 0.0
    return float(coefficients[forced].sum()) + taken


def _conflict_cliques(Q: np.ndarray, value: np.ndarray) -> list[np.ndarray]:
    """A partition of the features into cliques of the graph of positive penalties.

    Greedy by decreasing ``value``: the most valuable feature not yet placed starts a clique,
    which then repeatedly takes the most valuable unplaced feature penalised with all its members
    (so the valuable, mutually redundant features end up together).
    """
    conflict = Q > 0
    free = np.ones(len(Q), dtype=bool)
    cliques = []
    for start in np.argsort(-value, kind="stable"):
        if not free[start]:
            continue
        clique, free[start] = [start], False
        candidates = conflict[start] & free
        while candidates.any():
            node = int(np.argmax(np.where(candidates, value, -np.inf)))
            clique.append(node)
            free[node] = False
            candidates &= conflict[node]
        cliques.append(np.array(clique))
    return cliques


@dataclass
class _CliqueCover:
    """Features grouped by the cliques of :func:`_conflict_cliques`, with the penalty they force.

    ``members`` lists the features clique by clique (``owner`` says whose block an entry is in);
    ``penalty_step[r]`` at the r-th entry of a block is ``L(r + 1) - L(r)``, where ``L(n)`` is the
    sum of the ``n (n - 1) / 2`` smallest penalties inside that clique: any ``n`` members of a
    clique pay at least ``L(n)`` among themselves, and the steps of ``L`` do not decrease.
    """

    members: np.ndarray
    owner: np.ndarray
    penalty_step: np.ndarray

    @classmethod
    def build(cls, Q: np.ndarray, value: np.ndarray) -> "_CliqueCover":
        cliques = _conflict_cliques(Q, value)
        steps = []
        for clique in cliques:
            pairs = np.sort(Q[np.ix_(clique, clique)][np.triu_indices(clique.size, 1)])
            smallest = np.concatenate([[0.0], np.cumsum(pairs)])  # sums of the l smallest pairs
            ranks = np.arange(clique.size)
            steps.append(np.diff(smallest[ranks * (ranks + 1) // 2], prepend=0.0))
        return cls(members=np.concatenate(cliques), owner=np.repeat(np.arange(len(cliques)), list(map(len, cliques))),
                   penalty_step=np.concatenate(steps))

    def best(self, value: np.ndarray, m: int) -> tuple[float, np.ndarray]:
        """max over |S| = m of value(S) - sum over cliques of L(|S & clique|), and a maximiser.

        Every clique's term is concave in how many of its members are taken (its sorted values
        decrease, its steps of L do not), so the best S takes the m largest increments
        ``value - penalty_step`` once every block is sorted by decreasing value.
        """
        order = np.lexsort((-value[self.members], self.owner))  # blocks stay in place
        increments = value[self.members[order]] - self.penalty_step
        chosen = np.argpartition(-increments, m - 1)[:m]
        return float(increments[chosen].sum()), self.members[order[chosen]]


def _clique_covers(Q: np.ndarray, value: np.ndarray, n_covers: int) -> list[_CliqueCover]:
    """Clique partitions covering disjoint sets of the positive penalties.

    Each partition is built on the positive penalties that the earlier ones leave outside their
    cliques, so that more of the penalty is seen; every penalty belongs to at most one of them.
    """
    remaining = np.maximum(Q, 0.0)
    covers = []
    for _ in range(n_covers):
        if not remaining.any():
            break
        cover = _CliqueCover.build(remaining, value)
        covers.append(cover)
        for clique in np.split(cover.members, np.flatnonzero(np.diff(cover.owner)) + 1):
            remaining[np.ix_(clique, clique)] = 0.0
    return covers or [_CliqueCover.build(remaining, value)]


def clique_bound(problem: Problem, u: np.ndarray, lower: float, *, deadline: float, n_covers: int = 4,
                  n_rounds: int = 600, patience: int = 20) -> float:
    """Upper bound on the optimum that sees the penalty, improved over class thresholds u.

    Proof. Take any feasible (S, E) and any thresholds u. Class c's assignment satisfies
    sum_{f in T_c} W[f, c] <= k u_c + sum_{f in S} max(0, W[f, c] - u_c) (LP duality for
    max{W.e : 0 <= e <= 1_S, sum e = k}), so the objective is at most
    k sum(u) + a(S) - P(S) with a = bias + sum_c max(0, W[:, c] - u_c) and P(S) the sum of the
    penalties of the pairs of S. The negative penalties pay at most half of, summed over i in S,
    the m - 1 largest |negative penalties| of row i (every pair is counted from both ends); that
    amount is added to a_i. The positive penalties are at least the sum over the covers t of
    P_t(S), the penalties inside the cliques of cover t (the covers hold disjoint pairs, see
    :func:`_clique_covers`), and n members of one clique pay at least L(n), the sum of the
    n (n - 1) / 2 smallest penalties inside it. For any split a = sum_t a_t,
    max_S [a(S) - sum_t P_t(S)] <= sum_t max_S [a_t(S) - sum_cliques L(|S & K|)], and each term is
    computed exactly by :meth:`_CliqueCover.best`. So every value evaluated is a valid bound,
    whatever u, split and covers; u and the split are improved by subgradient steps (Polyak
    step towards the best known objective ``lower``, halved after ``patience`` rounds without
    progress), and the smallest value seen is returned. Without penalty every clique is a single
    feature and this is the Lagrangian (= LP) bound of the assignment relaxation.
    """
    (W, k, _), Q, m = problem.dual_terms, problem.Q, problem.m
    reward = np.zeros(len(Q))
    if m > 1 and (Q < 0).any():
        reward = 0.5 * np.partition(np.maximum(-Q, 0.0), -(m - 1), axis=1)[:, -(m - 1):].sum(1)
    covers = _clique_covers(Q, problem.bias + reward + np.maximum(W - u, 0.0).sum(1), n_covers)
    split = np.zeros((len(covers), len(Q)))  # rows sum to zero: a_t = a / T + split[t]
    tolerance = 1e-12 * problem.scale
    best, step, stalled = math.inf, 1.0, 0
    for _ in range(n_rounds):
        value = problem.bias + reward + np.maximum(W - u, 0.0).sum(1)
        bound, chosen = problem.budget_total(u), np.zeros(split.shape)
        direction_u = np.full(u.shape, float(k)) if np.ndim(k) == 0 else k.astype(np.float64)
        for t, cover in enumerate(covers):
            inner, S = cover.best(value / len(covers) + split[t], m)
            bound += inner
            chosen[t, S] = 1.0
            direction_u -= (W[S] > u).sum(0) / len(covers)
        if bound < best - tolerance:
            best, stalled = bound, 0
        else:
            stalled += 1
            if stalled >= patience:
                step, stalled = 0.5 * step, 0
        direction_split = chosen - chosen.mean(0)
        norm = float(direction_u @ direction_u + (direction_split**2).sum())
        if norm == 0 or not math.isfinite(lower) or best - lower <= tolerance or step < 1e-3 or time.perf_counter() > deadline:
            break
        length = step * (bound - lower) / norm
        u = u - length * direction_u
        split -= length * direction_split
    return best


def _relaxed_warm_start(s, W, edge_feature, edge_class, k):
    """Primal warm start: s, and each class's LP assignment (greedy fill) over its candidates."""
    n_classes = W.shape[1]
    e = np.zeros(edge_feature.size)
    for c in range(n_classes):
        index = np.flatnonzero(edge_class == c)
        index = index[np.argsort(-W[edge_feature[index], c], kind="stable")]
        capacity = s[edge_feature[index]]
        already = np.concatenate([[0.0], np.cumsum(capacity)[:-1]])
        e[index] = np.minimum(capacity, np.maximum((k if np.ndim(k) == 0 else k[c]) - already, 0.0))
    slack = np.maximum(k - np.bincount(edge_class, weights=e, minlength=n_classes), 0.0)
    return np.concatenate([s, e, slack])
