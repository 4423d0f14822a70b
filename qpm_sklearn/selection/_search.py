"""Local and tabu search over selections (swap one selected feature for an unselected one).

Owns the swap gains (incrementally updated in :class:`_SwapState`), the first-improvement local
search (:class:`LocalSearch`), the seeded tabu search with restarts (:func:`tabu_search`), the
rounding of a relaxed solution (:func:`round_relaxation`) and the progress log of a solve
(:func:`log_progress`).
"""

from __future__ import annotations

import math
import time

import numpy as np

from .._utils import logger, progress
from ._problem import Problem, evaluate


def _class_leaders(rank_S: np.ndarray, k: int) -> np.ndarray:
    """Per class, the columns of S holding its k + 1 best features, best first (all when m == k)."""
    m = rank_S.shape[1]
    if k == m:
        return np.broadcast_to(np.arange(m), rank_S.shape)
    first = np.argpartition(rank_S, k, axis=1)[:, : k + 1]
    return np.take_along_axis(first, np.argsort(np.take_along_axis(rank_S, first, 1), axis=1), 1)


def _swap_gains(problem: Problem, S: np.ndarray, rank_S=None, leaders=None) -> np.ndarray:
    """Change of the duplicate-free objective for every swap: ``gains[j, i]`` for S[i] -> j.

    Per class c, with v_k / v_k1 the k-th / (k+1)-th largest weight over S: removing a top-k
    member i lets v_k1 in (so the new threshold is v_k1), removing another leaves v_k; an added
    j then gains max(0, W[j, c] - threshold). Only features ranked above the (k+1)-th of S in
    class c can gain there, so the sums run over those entries of the precomputed per-class
    order (a few dozen per class), not over all of W. Rows of features already in S are -inf.
    ``rank_S`` (positions of S in every class's order) and ``leaders`` (:func:`_class_leaders`)
    are computed unless given (:class:`_SwapState` keeps them up to date). Under constraints
    the gains come from :func:`_constrained_swap_gains`.
    """
    if problem.constrained:
        return _constrained_swap_gains(problem, S)
    k, m = problem.k, problem.m
    n_classes, n_features = problem.order.shape
    classes = np.arange(n_classes)
    if rank_S is None:
        rank_S = problem.position[:, S]
        leaders = _class_leaders(rank_S, k)
    if k < m:
        top = leaders[:, :k]
        length = rank_S[classes, leaders[:, k]]  # features ranked above the (k+1)-th of S
        v_k1 = problem.sorted_weight[classes, length]
    else:
        # With m == k every feature is in the top-k, so any added feature must enter: a threshold
        # below every weight makes the formula give exactly W[j] - W[i].
        top = leaders
        length = np.full(n_classes, n_features)
        v_k1 = problem.sorted_weight[:, -1] - 1.0
    top_weight = problem.sorted_weight[classes[:, None], np.take_along_axis(rank_S, top, 1)]
    v_k = top_weight.min(1)
    loss = np.bincount(top.ravel(), weights=(v_k1[:, None] - top_weight).ravel(), minlength=m)  # removing S[i]
    entry_class = np.repeat(classes, length)
    flat = np.arange(entry_class.size) + np.repeat(classes * n_features - (np.cumsum(length) - length), length)
    entry_feature = problem.order.ravel()[flat]
    weight = problem.sorted_weight.ravel()[flat]
    over_k = np.maximum(weight - v_k[entry_class], 0.0)
    change = np.maximum(weight - v_k1[entry_class], 0.0) - over_k  # extra gain when i left the top-k
    pairs = (entry_feature[:, None] * m + top[entry_class]).ravel()
    gains = np.bincount(pairs, weights=np.repeat(change, top.shape[1]), minlength=n_features * m)
    gains = gains.reshape(n_features, m)
    penalty_S = problem.Q[S]  # rows (contiguous); Q is symmetric
    penalty_to_S = penalty_S.sum(0)
    added = np.bincount(entry_feature, weights=over_k, minlength=n_features) - penalty_to_S + problem.bias
    gains += added[:, None]  # terms of the added feature j alone
    gains += loss + penalty_to_S[S] - problem.bias[S]  # terms of the removed S[i] alone
    gains += penalty_S.T  # the pair (j, S[i]) is no longer penalised
    gains[S] = -np.inf
    return gains


def _constrained_swap_gains(problem: Problem, S: np.ndarray) -> np.ndarray:
    """:func:`_swap_gains` under per-class budgets, pinned and forced features.

    Class c always holds its pinned features and takes its ``r_c = k_c - |pinned|`` best free
    ones; with v_k / v_k1 the r_c-th / (r_c+1)-th largest free weight over S the swap formula
    of :func:`_swap_gains` holds per class with r_c for k (a class with r_c = 0 is unchanged
    by any swap). Dense form: ``gains = added[j] + loss[i] + change @ top.T`` with ``top[i, c]``
    when S[i] is among class c's free top-r_c. Forced features may not leave (their columns are
    -inf), nor may features in S enter.
    """
    W = problem.W
    n_features, n_classes = W.shape
    m = S.size
    classes = np.arange(n_classes)
    budgets = np.broadcast_to(np.asarray(problem.class_budget), (n_classes,))
    pinned = np.zeros((m, n_classes), dtype=bool) if problem.pinned is None else problem.pinned[S]
    free_budget = budgets - pinned.sum(0)
    n_free = m - pinned.sum(0)
    free_weight = np.where(pinned, -np.inf, W[S])
    order = np.argsort(-free_weight, axis=0, kind="stable")
    sorted_free = np.take_along_axis(free_weight, order, axis=0)
    rank = np.empty((m, n_classes), dtype=np.intp)
    np.put_along_axis(rank, order, np.arange(m)[:, None], axis=0)
    below = float(W.min()) - 1.0  # when every free feature is in the top, any added one must enter
    v_k = np.where(free_budget > 0, sorted_free[np.maximum(free_budget - 1, 0), classes], np.inf)
    v_k1 = np.where(free_budget < n_free, sorted_free[np.minimum(free_budget, m - 1), classes], below)
    v_k1 = np.where(free_budget > 0, v_k1, np.inf)
    top = (rank < free_budget[None, :]) & ~pinned
    over_k = np.maximum(W - v_k, 0.0)
    change = np.maximum(W - v_k1, 0.0) - over_k
    loss = np.where(top, v_k1 - W[S], 0.0).sum(1)
    penalty_S = problem.Q[S]
    penalty_to_S = penalty_S.sum(0)
    gains = change @ top.T.astype(np.float64)
    gains += (over_k.sum(1) - penalty_to_S + problem.bias)[:, None]
    gains += loss + penalty_to_S[S] - problem.bias[S]
    gains += penalty_S.T
    gains[S] = -np.inf
    if problem.forced is not None:
        gains[:, problem.forced[S]] = -np.inf
    return gains


class _SwapState:
    """A selection kept in place (column i of the swap gains is ``S[i]``), updated swap by swap.

    Keeps the positions of S in every class's order and every class's leaders
    (:func:`_class_leaders`); a swap recomputes the leaders only of the classes it touches
    (those whose leaders lose the removed feature or that the added one enters).
    """

    def __init__(self, problem: Problem, S: np.ndarray):
        self.problem = problem
        self.S = np.array(S, dtype=np.intp)
        if problem.constrained:  # the gains are recomputed from S alone
            return
        self.rank_S = problem.position[:, self.S]
        self.leaders = np.array(_class_leaders(self.rank_S, problem.k))

    def gains(self) -> np.ndarray:
        if self.problem.constrained:
            return _swap_gains(self.problem, self.S)
        return _swap_gains(self.problem, self.S, self.rank_S, self.leaders)

    def swap(self, i: int, j: int) -> None:
        """Replace S[i] by feature j."""
        if self.problem.constrained:
            self.S[i] = j
            return
        k, position = self.problem.k, self.problem.position
        touched = None
        if k < self.S.size:
            last = self.rank_S[np.arange(len(self.rank_S)), self.leaders[:, k]]
            touched = (position[:, j] < last) | (self.leaders == i).any(1)
        self.S[i] = j
        self.rank_S[:, i] = position[:, j]
        if touched is not None and touched.any():
            self.leaders[touched] = _class_leaders(self.rank_S[touched], k)


class LocalSearch:
    """Best-improvement swap search on the true objective (duplicates repaired).

    Candidate swaps are ranked by the duplicate-free objective, which is an upper bound of the
    true one: a swap whose duplicate-free value does not beat the current true value cannot
    improve it, so only the others are evaluated exactly (usually the first one).
    """

    def __init__(self, problem: Problem, deadline: float, max_evaluations: int = 256):
        self.problem = problem
        self.deadline = deadline
        self.max_evaluations = max_evaluations
        self.cache: dict[bytes, tuple[float, float]] = {}
        self.timed_out = False

    def evaluate(self, S: np.ndarray) -> tuple[float, float]:
        """(objective, duplicate-free objective) of the sorted selection S, memoised."""
        key = S.tobytes()
        if key not in self.cache:
            self.cache[key] = evaluate(self.problem, S)[:2]
        return self.cache[key]

    def run(self, S: np.ndarray) -> tuple[np.ndarray, float]:
        S = np.sort(S)
        value, free_value = self.evaluate(S)
        tolerance = 1e-10 * self.problem.scale
        while True:
            if time.perf_counter() > self.deadline:
                self.timed_out = True
                return S, value
            candidates = free_value + _swap_gains(self.problem, S)
            flat = np.flatnonzero(candidates > value + tolerance)
            flat = flat[np.argsort(-candidates.ravel()[flat], kind="stable")][: self.max_evaluations]
            for index in flat:
                j, i = divmod(int(index), S.size)
                trial = np.sort(np.concatenate([np.delete(S, i), [j]]))
                trial_value, trial_free = self.evaluate(trial)
                if trial_value > value + tolerance:
                    S, value, free_value = trial, trial_value, trial_free
                    break
            else:
                return S, value


def tabu_search(search: LocalSearch, S, value, n_iterations, rng, *, weights, bound=math.inf, verbose=0):
    """Tabu search over swaps from the local optimum S; returns the best selection seen.

    Every iteration applies the best swap by the duplicate-free objective, improving or not,
    among those not tabu: a feature just removed may not come back, one just added may not
    leave, for a tenure drawn from ``rng``. The best selection by the true objective is kept.
    After ``patience`` iterations without a new best, the search
    restarts from the best selection with a few random swaps (drawn by relaxed value,
    ``weights``). The best selection finally gets a last local search. Every new best is
    reported with the certified ``bound`` at verbose >= 1.
    """
    problem = search.problem
    n_features, m = problem.W.shape[0], problem.m
    if n_features == m or n_iterations == 0:
        return S, value
    tenure = max(2, min(m, n_features - m) // 4)
    patience = max(50, n_iterations // 5)
    tabu_until = np.zeros(n_features, dtype=np.int64)
    best, best_value = S, value
    current, last_improvement = _SwapState(problem, S), 0
    _, current_free = search.evaluate(S)
    tolerance = 1e-10 * problem.scale
    bar = progress(range(1, n_iterations + 1), verbose=verbose, desc="selection search")
    for iteration in bar:
        if time.perf_counter() > search.deadline:
            search.timed_out = True
            break
        if iteration - last_improvement > patience:
            restart = _perturb(best, weights, rng, problem.forced)
            current, last_improvement = _SwapState(problem, restart), iteration
            tabu_until[:] = 0
            _, current_free = search.evaluate(restart)
        candidates = current_free + current.gains()
        allowed = (tabu_until[:, None] < iteration) & (tabu_until[current.S][None, :] < iteration)
        if np.isfinite(candidates[allowed]).any():
            candidates = np.where(allowed, candidates, -np.inf)
        top = candidates.max()
        ties = np.flatnonzero(candidates.ravel() >= top - 1e-12 * (1.0 + abs(top)))
        move = int(ties[rng.randint(ties.size)])
        j, i = divmod(move, m)
        tabu_until[current.S[i]] = iteration + tenure + rng.randint(tenure + 1)
        tabu_until[j] = iteration + tenure // 2
        current.swap(i, j)
        current_free = candidates.flat[move]
        # The duplicate-free value bounds the true one: only a selection it puts above the best
        # can be a new best, and only then is the (costlier) true value needed.
        if current_free > best_value + tolerance:
            selection = np.sort(current.S)
            current_value, current_free = search.evaluate(selection)
            if current_value > best_value + tolerance:
                best, best_value, last_improvement = selection, current_value, iteration
                log_progress(verbose, f"tabu move {iteration}", best_value, bound, bar)
    return search.run(best)


def log_progress(verbose: int, stage: str, objective: float, bound: float, bar=None) -> None:
    """Progress (objective, bound, gap) at verbose >= 1: the logger, and the progress bar's postfix."""
    if not verbose:
        return
    gap = (bound - objective) / max(abs(objective), 1e-12)
    logger.info("selection %s: objective %.6g, bound %.6g, gap %.2f%%", stage, objective, bound, 100 * gap)
    if bar is not None and hasattr(bar, "set_postfix"):
        bar.set_postfix(objective=f"{objective:.6g}", bound=f"{bound:.6g}", gap=f"{100 * gap:.2f}%")


def round_relaxation(problem: Problem, s: np.ndarray) -> np.ndarray:
    """The m features with the largest relaxed value (ties: larger total weight first); forced ones first."""
    if problem.forced is not None:
        order = np.lexsort((-problem.W.sum(1), -np.round(s, 9), ~problem.forced))
        return np.sort(order[: problem.m])
    order = np.lexsort((-problem.W.sum(1), -np.round(s, 9)))
    return np.sort(order[: problem.m])


def warm_start(problem: Problem, initial: np.ndarray, s: np.ndarray) -> np.ndarray:
    """A selection near ``initial`` that holds every forced feature: forced ones added, then the
    rest of ``initial``, then features by relaxed value, until m (ties: larger total weight)."""
    in_initial = np.zeros(problem.W.shape[0], dtype=bool)
    in_initial[initial] = True
    forced = np.zeros_like(in_initial) if problem.forced is None else problem.forced
    order = np.lexsort((-problem.W.sum(1), -np.round(s, 9), ~in_initial, ~forced))
    return np.sort(order[: problem.m])


def _perturb(S: np.ndarray, weights: np.ndarray, rng, forced=None) -> np.ndarray:
    """Swap a few random selected features for unselected ones drawn by relaxed value (forced ones stay)."""
    outside = np.setdiff1d(np.arange(weights.size), S)
    if outside.size == 0:
        return S
    if forced is not None:
        movable = S[~forced[S]]
        most = min(movable.size, outside.size, max(2, S.size // 5))
        if most == 0:
            return S
        n_swaps = int(rng.randint(min(2, most), most + 1))
        p = weights[outside] / weights[outside].sum()
        added = rng.choice(outside, size=n_swaps, replace=False, p=p)
        kept = rng.choice(movable, size=movable.size - n_swaps, replace=False)
        return np.sort(np.concatenate([S[forced[S]], kept, added]))
    most = max(1, min(S.size, outside.size, max(2, S.size // 5)))
    n_swaps = int(rng.randint(min(2, most), most + 1))
    p = weights[outside] / weights[outside].sum()
    added = rng.choice(outside, size=n_swaps, replace=False, p=p)
    kept = rng.choice(S, size=S.size - n_swaps, replace=False)
    return np.sort(np.concatenate([kept, added]))
