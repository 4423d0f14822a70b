"""The QPM feature-selection problem (docs/method.md#selection).

Problem (docs/method.md#problem, ``solve_selection``), with ``k = n_per_class``, ``m = n_selected`` and
``alpha = 1000 / (k * C)``::

    maximise  alpha * sum_{f,c} A[f,c] E[f,c] - sum_{i<j} penalty[i,j] s_i s_j + sum_f bias[f] s_f
    over      s in {0,1}^N, E in {0,1}^{N x C}
    s.t.      sum(s) = m,  E <= s,  every column of E has exactly k ones,  no two columns equal.

For a fixed selection ``S`` the best assignment without the no-duplicate rule is each class's
top-k of ``A`` over ``S``; duplicates are repaired exactly (:func:`_assign`). The default solver
relaxes the problem (concave by a diagonal shift, which is exact on binary points), solves the
relaxation with OSQP, rounds it and improves the rounding by swap local search and a seeded
tabu search. The upper bound it reports is the smaller of two certified ones: the tangent plane
at the relaxation's solution (:func:`_certified_bound`, valid whatever accuracy OSQP reached) and
a Lagrangian bound over clique covers of the penalty graph (:func:`_clique_bound`), which sees
the penalty the relaxation misses at fractional points. ``solver="exact"`` solves the linearised
MILP with HiGHS (``scipy.optimize.milp``).
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
import osqp
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, linear_sum_assignment, milp
from sklearn.utils import check_random_state
from threadpoolctl import threadpool_limits

from ._utils import check_finite_array, logger, progress
from ._utils import check_int as _check_int

__all__ = [
    "SelectionResult",
    "assignment_scale",
    "check_selection_budget",
    "check_solver_options",
    "feature_class_correlation",
    "feature_similarity",
    "redundancy_penalty",
    "selection_objective",
    "solve_selection",
]

_OSQP_ALGEBRAS = ("builtin", "mkl", "cuda")


@dataclass
class SelectionResult:
    """Outcome of :func:`solve_selection`.

    Attributes
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
        then) or ``"time_limit_heuristic"`` (the MILP found no solution in time; the default
        method's solution is returned).
    bound_method : str
        What proved ``upper_bound``: ``"clique"`` (Lagrangian bound over clique covers of the
        penalty, :func:`_clique_bound`), ``"relaxation"`` (tangent plane at the OSQP
        relaxation, :func:`_certified_bound`), ``"milp"`` (HiGHS's dual bound) or
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
        """The scalar numbers as plain Python types (for ``selection_info_`` and JSON)."""
        return {
            "objective": float(self.objective),
            "upper_bound": float(self.upper_bound),
            "gap": float(self.gap),
            "seconds": float(self.seconds),
            "cpu_seconds": float(self.cpu_seconds),
            "status": str(self.status),
            "bound_method": str(self.bound_method),
        }


# --------------------------------------------------------------------------------------------
# Problem data: A, R, penalty (docs/method.md#selection)
# --------------------------------------------------------------------------------------------


def _finite_matrix(value, name, *, ndim=2) -> np.ndarray:
    """A finite, non-empty float64 array of ``ndim`` dimensions (the shared validator, plus size)."""
    array = check_finite_array(value, name, ndim=ndim)
    if 0 in array.shape:
        raise ValueError(f"{name} must be a non-empty {ndim}-D array; got shape {array.shape}.")
    return array


def feature_class_correlation(F: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None) -> np.ndarray:
    """Pearson correlation of every feature with every class indicator (docs/method.md#correlation).

    ``A[j, c]`` is the correlation between ``F[:, j]`` and ``1[y == c]`` (population standard
    deviations, denominators clamped at 1e-10); ``A`` is then divided by ``max|A|``.

    Parameters
    ----------
    F : array-like of shape (n_samples, n_features)
        Pooled feature values of the training images.
    y : array-like of shape (n_samples,)
        Labels; the classes are ``np.unique(y)`` in sorted order.
    sample_weight : array-like of shape (n_samples,), default=None
        Non-negative weights: means, covariances and standard deviations are then
        weighted (a weight of 2 is the sample counted twice).

    Returns
    -------
    A : ndarray of shape (n_features, n_classes), float64
        All zeros when no feature varies with the classes.

    Examples
    --------
    >>> import numpy as np
    >>> F = np.array([[1.0, 0.0], [2.0, 1.0], [3.0, 0.0], [4.0, 1.0]])
    >>> feature_class_correlation(F, [0, 0, 1, 1]).round(3)
    array([[-1.,  1.],
           [ 0.,  0.]])
    """
    F = _finite_matrix(F, "F")
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != F.shape[0]:
        raise ValueError(f"y must have shape ({F.shape[0]},) to match F; got shape {y.shape}.")
    _, codes = np.unique(y, return_inverse=True)
    onehot = np.eye(codes.max() + 1)[codes]
    weights = None
    if sample_weight is not None:
        weights = _finite_matrix(sample_weight, "sample_weight", ndim=1)
        if weights.shape != (F.shape[0],) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"sample_weight must be {F.shape[0]} non-negative values with a positive sum.")
    # np.average: the plain mean without weights, and exact for a constant column either way
    F_centred = F - np.average(F, axis=0, weights=weights)
    Y_centred = onehot - np.average(onehot, axis=0, weights=weights)
    row_weights = np.ones(F.shape[0]) if weights is None else weights
    covariance = (F_centred * row_weights[:, None]).T @ Y_centred / row_weights.sum()
    std_F = np.sqrt(np.average(F_centred**2, axis=0, weights=weights))
    std_Y = np.sqrt(np.average(Y_centred**2, axis=0, weights=weights))
    scale = np.maximum(np.outer(std_F, std_Y), 1e-10)
    A = covariance / scale
    peak = np.abs(A).max()
    return A / peak if peak > 0 else A


def feature_similarity(A: ArrayLike) -> np.ndarray:
    """Cosine similarity of the rows of ``A`` (docs/method.md#similarity), zero diagonal.

    Row norms are clamped at 1e-8; the matrix is divided by its largest absolute entry
    (diagonal included, i.e. a no-op unless some rows are zero) before the diagonal is zeroed.

    Examples
    --------
    >>> feature_similarity([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]).round(3)
    array([[0.   , 0.707, 0.   ],
           [0.707, 0.   , 0.707],
           [0.   , 0.707, 0.   ]])
    """
    A = _finite_matrix(A, "A")
    unit = A / np.maximum(np.linalg.norm(A, axis=1, keepdims=True), 1e-8)
    R = unit @ unit.T
    peak = np.abs(R).max()
    if peak > 0:
        R /= peak
    np.fill_diagonal(R, 0.0)
    return R


def _greedy_clique(compatible: np.ndarray, size: int, n_starts: int = 16) -> np.ndarray | None:
    """A clique of ``size`` nodes in the boolean graph ``compatible``, or None if none is found.

    Greedy: from each of the ``n_starts`` highest-degree nodes, repeatedly add the candidate
    with the most neighbours among the remaining candidates (the first such on ties).
    ``compatible`` is symmetric. The neighbour counts among the candidates are updated by
    subtracting the rows of the candidates each step drops, so one start costs O(N^2) instead
    of a matrix-vector product per added node; the counts are small integers, exact in float32,
    so the choices are those of recounting every step.
    """
    degree = compatible.sum(1)
    eligible = degree >= size - 1  # a member of a size-clique has at least size-1 neighbours
    if eligible.sum() < size:
        return None
    adjacency = compatible.astype(np.float32)
    for start in np.argsort(-degree, kind="stable")[:n_starts]:
        clique = [start]
        candidates = compatible[start] & eligible
        inner_degree = adjacency @ candidates.astype(np.float32)  # (N,) neighbours among the candidates
        while len(clique) < size and candidates.any():
            node = int(np.argmax(np.where(candidates, inner_degree, -1.0)))
            clique.append(node)
            dropped = candidates & ~compatible[node]  # node itself included (no self-loops)
            candidates &= compatible[node]
            inner_degree -= adjacency[dropped].sum(0)
        if len(clique) >= size:
            return np.array(clique)
    return None


_REDUNDANCY_RULES = ("consistent", "paper")
_PAPER_STEPS = 100  # threshold steps of the authors' search (docs/method.md#penalty)


def _estimated_clique_size(compatible: np.ndarray, target: int) -> int:
    """The authors' clique-size estimate with early stop (the descending pass of docs/method.md#penalty).

    For every node of degree ``>= target`` (ascending ids) a clique is grown inside its
    neighbours of degree ``>= target`` by repeatedly taking the candidate of highest degree and
    keeping only its neighbours whose degree reaches the best size found by earlier starts;
    returns as soon as a size ``>= target`` is seen, else the best size. Candidates are Python
    sets built in ascending id order and ties go to the first in set order, exactly as the
    authors' networkx-based code breaks them.
    """
    degree = compatible.sum(1).tolist()
    neighbours = [np.flatnonzero(row).tolist() for row in compatible]
    best = 0
    for start, start_degree in enumerate(degree):
        if start_degree < target:
            continue
        candidates = {v for v in neighbours[start] if degree[v] >= target}
        size = 1
        while candidates:
            node = max(candidates, key=degree.__getitem__)
            candidates.remove(node)
            candidates = candidates & {v for v in neighbours[node] if degree[v] >= best}
            size += 1
        best = max(best, size)
        if best >= target:
            break
    return best


def _clique_by_removal(compatible: np.ndarray, target: int) -> set:
    """The authors' approximate maximum clique with early stop (the ascending pass of docs/method.md#penalty).

    Independent sets of the complement graph (cliques of ``compatible``), found by Ramsey's
    recursion (:func:`_ramsey_r2`) and repeated removal of the complement's Ramsey clique; stops
    once one has ``target`` nodes and returns the first largest. The complement is held as
    networkx's ``complement(from_numpy_array(compatible))`` holds it: nodes and neighbours in
    ascending id order, and removing nodes keeps the order of the rest.
    """
    incompatible = ~compatible
    np.fill_diagonal(incompatible, False)  # no self-loops
    conflict = {i: dict.fromkeys(np.flatnonzero(row).tolist()) for i, row in enumerate(incompatible)}
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(compatible) + 1000))  # the recursion is about one level per node deep
    try:
        clique, best = _ramsey_r2(conflict)
        while conflict and len(best) < target:
            for node in clique:
                for neighbour in conflict.pop(node):
                    del conflict[neighbour][node]
            clique, independent = _ramsey_r2(conflict)
            if len(independent) > len(best):
                best = independent
    finally:
        sys.setrecursionlimit(limit)
    return best


def _ramsey_r2(graph: dict[int, dict[int, None]]) -> tuple[set[int], set[int]]:
    """A clique and an independent set of ``graph``, exactly as networkx's ``ramsey_R2`` finds them.

    ``graph`` is a dict of neighbour dicts in networkx's layout (``Graph._adj``), whose orders
    decide the result: the recursion splits off the graph's first node and recurses into the
    subgraphs induced by its neighbours and by its non-neighbours (:func:`_induced_subgraph`),
    adding the node to the first's clique and the second's independent set and keeping the
    larger of each pair (the first on ties). The non-neighbours are the set difference
    networkx >= 3.3 computes (``non_neighbors``); before 3.3 networkx visited them in graph
    order instead, which can give other sets, so this rule does not depend on the installed
    networkx. tests/test_redundancy.py checks it against networkx's own function.
    """
    if len(graph) <= 1:
        return set(graph), set(graph)
    node = next(iter(graph))
    neighbours = graph[node]
    clique_1, independent_1 = _ramsey_r2(_induced_subgraph(graph, [v for v in neighbours if v != node]))
    clique_2, independent_2 = _ramsey_r2(_induced_subgraph(graph, list(graph.keys() - neighbours.keys() - {node})))
    clique_1.add(node)
    independent_2.add(node)
    return max(clique_1, clique_2, key=len), max(independent_1, independent_2, key=len)


def _induced_subgraph(graph: dict[int, dict[int, None]], nodes: list[int]) -> dict[int, dict[int, None]]:
    """``graph.subgraph(nodes).copy()`` of networkx, orders included.

    networkx keeps the nodes in a set built one node at a time; its view iterates that set when
    it holds fewer than half the graph's nodes and the graph's order otherwise. The copy adds
    every edge ``(u, v)`` as ``u``'s neighbours are visited in the parent's order, inserting
    ``v`` into ``u``'s dict and ``u`` into ``v``'s; a neighbour already present keeps its place.
    """
    keep = set(nodes)
    order = [v for v in keep] if 2 * len(keep) < len(graph) else [v for v in graph if v in keep]
    induced: dict[int, dict[int, None]] = {v: {} for v in order}
    for u in order:
        row = induced[u]
        for v in graph[u]:
            if v in keep and v not in row:  # present: inserted when v's own neighbours were visited
                row[v] = None
                induced[v][u] = None
    return induced


def _paper_threshold(R: np.ndarray, target: int) -> float:
    """tau* of the authors' search on the ``R + R^T`` scale (docs/method.md#penalty).

    Levels are entries of the sorted ``R + R^T`` (all ``N^2`` entries, diagonal included), starting
    at the Turan position ``floor(N^2 (t-2)/(t-1))`` and moving in steps of
    ``(N^2 (t-2)/(t-1) - #zeros) / 100`` positions (truncated, as ``int`` does); a level beyond the
    last entry is ``inf`` (complete graph). Descending pass with :func:`_estimated_clique_size`,
    ascending pass with :func:`_clique_by_removal`; a pair ``(i, j)`` is compatible when
    ``(R + R^T)[i, j] < level``.
    """
    n = len(R)
    doubled = R + R.T
    values = np.sort(doubled, axis=None)
    turan = n * n * (target - 2) / (target - 1)
    start = math.floor(turan)
    step = (turan - (values.size - np.count_nonzero(values))) / _PAPER_STEPS

    def level(i: int) -> float:
        position = start - int(i * step)
        return float(values[position]) if position < values.size else math.inf

    def graph(tau: float) -> np.ndarray:
        compatible = doubled < tau
        np.fill_diagonal(compatible, False)
        return compatible

    # The step to climb from: the last level whose estimate reached target (the authors stop at
    # the first estimate below target, or at one equal to it). The authors' code fails when the
    # very first estimate is below target; we start the ascent at step 0 then.
    chosen, previous_edges = _PAPER_STEPS - 1, 0
    for i in range(_PAPER_STEPS):
        compatible = graph(level(i))
        edges = int(compatible.sum())
        if edges == previous_edges:
            continue  # same graph as the last level tried
        previous_edges = edges
        size = _estimated_clique_size(compatible, target)
        if size < target:
            chosen = max(i - 1, 0)
            break
        if size == target:
            chosen = i
            break
    for i in range(_PAPER_STEPS):
        tau = level(chosen - i)
        if len(_clique_by_removal(graph(tau), target)) >= target:
            return tau
    return math.inf


def _paper_penalty(R: np.ndarray, tau: float) -> np.ndarray:
    """``R~ = (R - m) / max(R - m)`` on the pairs ``R >= tau``, 0 elsewhere (docs/method.md#penalty).

    ``m`` is the smallest non-zero entry of ``R`` (the zero diagonal is left out of the minimum
    but, as in the authors' code, counts in the maximum).
    """
    penalised = R >= tau
    np.fill_diagonal(penalised, False)
    nonzero = R[R != 0]
    if not penalised.any() or nonzero.size == 0:
        return np.zeros_like(R)
    shifted = R - nonzero.min()
    peak = shifted.max()
    if peak <= 0:
        return np.zeros_like(R)
    return np.where(penalised, shifted / peak, 0.0)


def _consistent_threshold(R: np.ndarray, off_diagonal: np.ndarray, n_selected: int) -> float:
    """Smallest level of ``R`` whose graph ``R < level`` holds an ``n_selected`` clique (greedy)."""
    levels = np.unique(off_diagonal)
    # Bisection for the first level whose graph (edges R < level) holds the clique;
    # index len(levels) stands for tau = inf (complete graph, always has one).
    low, high = 0, len(levels)
    while low < high:
        middle = (low + high) // 2
        compatible = R < levels[middle]
        np.fill_diagonal(compatible, False)
        if _greedy_clique(compatible, n_selected) is not None:
            high = middle
        else:
            low = middle + 1
    return float(levels[low]) if low < len(levels) else math.inf


def redundancy_penalty(
    R: ArrayLike, n_selected: int, rule: Literal["consistent", "paper"] = "consistent"
) -> tuple[np.ndarray, float]:
    """Penalty matrix of the selection problem and its threshold tau* (docs/method.md#penalty).

    ``tau*`` is (heuristically) the smallest threshold at which ``n_selected`` mutually
    dissimilar features exist, i.e. a clique of that size in the graph of pairs below the
    threshold. Pairs with ``R[i, j] >= tau*`` are penalised; all other entries are 0. The two
    rules differ in the scale of the search, the search itself and the penalty's scaling:

    ``"consistent"`` (our choice)
        The graph has edges ``R[i, j] < tau``; ``tau*`` is found by bisection over the distinct
        off-diagonal values of ``R`` with a greedy clique search, so it lives on the scale of the
        penalty. Penalty ``(R[i, j] - m) / (max R - m)``, ``m`` the smallest off-diagonal value.
    ``"paper"`` (the authors' procedure, docs/method.md#penalty; what produced the paper's numbers)
        The authors' search on the ``R + R^T`` (= 2R) scale: levels are entries of the sorted
        ``R + R^T``, starting at Turan's bound ``N^2 (t-2)/(t-1)`` and moving in 100 steps, a
        descending pass with a greedy clique-size estimate and an ascending pass with Ramsey
        clique removal. The penalised set is still ``R >= tau*`` on the R scale, so pairs with
        ``tau*/2 <= R < tau*`` count as incompatible in the search but are not penalised, and
        when ``tau*`` exceeds ``max R`` nothing is. Penalty ``(R - m) / max(R - m)`` with ``m``
        the smallest non-zero entry of ``R`` (the diagonal counts in the maximum). The clique
        heuristics break ties and order nodes as the authors' code does (Python sets, and
        networkx's ``ramsey_R2`` reproduced order for order, as networkx >= 3.3 orders it,
        whatever networkx is installed); about 1 s at 512 features on one CPU core. Where the
        authors' code fails (first estimate already too small, a level beyond the largest
        value, ``n_selected < 2``), we choose: the ascent starts at step 0, a level beyond the
        values is ``inf``, and an ascent that finds no clique in its 100 steps gives ``inf``.

    Parameters
    ----------
    R : array-like of shape (n_features, n_features)
        Symmetric similarity with zero diagonal (:func:`feature_similarity`).
    n_selected : int
        Size of the mutually dissimilar set that must exist below the threshold.
    rule : {"consistent", "paper"}, default="consistent"
        Which procedure picks tau* and scales the penalty (above). :class:`QPMClassifier`
        defaults to ``"paper"`` (its ``redundancy`` parameter; evidence in docs/selection.md).

    Returns
    -------
    penalty : ndarray of shape (n_features, n_features)
        Symmetric, zero diagonal, values in [0, 1].
    tau : float
        The threshold, on the R scale for ``"consistent"`` and on the ``R + R^T`` scale for
        ``"paper"``; ``inf`` when only the complete graph holds such a set (no penalty).

    Examples
    --------
    >>> R = feature_similarity([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    >>> penalty, tau = redundancy_penalty(R, 2)
    >>> round(tau, 3)  # the smallest level at which two features are dissimilar enough (0 and 2)
    0.11
    >>> penalty.round(3)
    array([[0.   , 1.   , 0.   ],
           [1.   , 0.   , 0.111],
           [0.   , 0.111, 0.   ]])

    The paper's rule on a hand-made R: features 0-2 are mutually dissimilar, 3 is close to 1 and 2.

    >>> R = np.array([[0, .1, .15, .3], [.1, 0, .2, .7], [.15, .2, 0, .9], [.3, .7, .9, 0]])
    >>> penalty, tau = redundancy_penalty(R, 3, rule="paper")
    >>> round(tau, 3)  # on the 2R scale: 2 * 0.3, the first level whose graph holds {0, 1, 2}
    0.6
    >>> penalty.round(3)  # R >= 0.6 on the R scale, (R - 0.1) / 0.8
    array([[0.  , 0.  , 0.  , 0.  ],
           [0.  , 0.  , 0.  , 0.75],
           [0.  , 0.  , 0.  , 1.  ],
           [0.  , 0.75, 1.  , 0.  ]])
    """
    R = _finite_matrix(R, "R")
    n_features = R.shape[0]
    if R.shape != (n_features, n_features):
        raise ValueError(f"R must be a square (n_features, n_features) matrix; got shape {R.shape}.")
    _check_int(n_selected, "n_selected", 1, n_features)
    if rule not in _REDUNDANCY_RULES:
        raise ValueError(f"rule must be one of {_REDUNDANCY_RULES}; got {rule!r}.")
    off_diagonal = R[np.triu_indices(n_features, 1)]
    penalty = np.zeros_like(R)
    if off_diagonal.size == 0 or (rule == "paper" and n_selected < 2):
        return penalty, math.inf
    if rule == "paper":
        tau = _paper_threshold(R, n_selected)
        return _paper_penalty(R, tau), tau
    tau = _consistent_threshold(R, off_diagonal, n_selected)
    smallest, largest = off_diagonal.min(), off_diagonal.max()
    if largest > smallest:
        penalty = np.where(R >= tau, (R - smallest) / (largest - smallest), 0.0)
        np.fill_diagonal(penalty, 0.0)
    return penalty, tau


# --------------------------------------------------------------------------------------------
# The problem and its objective
# --------------------------------------------------------------------------------------------


@dataclass
class _Problem:
    """The instance in the solvers' terms: ``W = alpha * A`` and ``Q`` = symmetric penalty."""

    W: np.ndarray  # (N, C) assignment weights alpha * A
    Q: np.ndarray  # (N, N) symmetric, zero diagonal; the objective subtracts s^T Q s / 2
    bias: np.ndarray  # (N,)
    m: int
    k: int

    @functools.cached_property
    def scale(self) -> float:
        """Magnitude used for relative tolerances."""
        return 1.0 + np.abs(self.W).max() * self.W.shape[1] + np.abs(self.Q).max() * self.m**2

    @functools.cached_property
    def order(self) -> np.ndarray:
        """(C, N): every class's features by decreasing weight (ties: lower id first)."""
        return np.ascontiguousarray(np.argsort(-self.W, axis=0, kind="stable").T)

    @functools.cached_property
    def position(self) -> np.ndarray:
        """(C, N): position of every feature in its class's :attr:`order` (the inverse)."""
        position = np.empty(self.order.shape, dtype=np.intp)
        np.put_along_axis(position, self.order, np.arange(self.order.shape[1])[None, :], axis=1)
        return position

    @functools.cached_property
    def sorted_weight(self) -> np.ndarray:
        """(C, N): every class's weights in :attr:`order`."""
        return np.take_along_axis(self.W.T, self.order, axis=1)

    def pair_penalty(self, S: np.ndarray) -> float:
        return 0.5 * float(self.Q[np.ix_(S, S)].sum())


def _build_problem(A, n_selected, n_per_class, penalty, bias) -> _Problem:
    A = _finite_matrix(A, "A")
    n_features, n_classes = A.shape
    _check_int(n_selected, "n_selected", 1, n_features)
    _check_int(n_per_class, "n_per_class", 1, n_selected)
    check_selection_budget(n_selected, n_per_class, n_classes)
    Q = np.zeros((n_features, n_features))
    if penalty is not None:
        penalty = _finite_matrix(penalty, "penalty")
        if penalty.shape != (n_features, n_features):
            raise ValueError(f"penalty must have shape ({n_features}, {n_features}); got {penalty.shape}.")
        Q = np.triu(penalty, 1)  # the objective counts penalty[i, j] for i < j only
        Q = Q + Q.T
    if bias is None:
        bias = np.zeros(n_features)
    else:
        bias = _finite_matrix(bias, "bias", ndim=1)
        if bias.shape != (n_features,):
            raise ValueError(f"bias must have shape ({n_features},); got {bias.shape}.")
    return _Problem(W=assignment_scale(n_per_class, n_classes) * A, Q=Q, bias=bias, m=n_selected, k=n_per_class)


def assignment_scale(n_per_class: int, n_classes: int) -> float:
    """The factor alpha = 1000 / (n_per_class * n_classes) of the assignment term (docs/method.md#problem).

    Examples
    --------
    >>> assignment_scale(5, 200)
    1.0
    """
    _check_int(n_per_class, "n_per_class", 1, 10**12)
    _check_int(n_classes, "n_classes", 1, 10**12)
    return 1000.0 / (n_per_class * n_classes)


def check_selection_budget(n_selected: int, n_per_class: int, n_classes: int) -> None:
    """Raise ValueError unless ``n_selected`` features give every class its own set.

    Every class needs a different set of ``n_per_class`` features, so
    ``comb(n_selected, n_per_class)`` must be at least ``n_classes``.

    Examples
    --------
    >>> check_selection_budget(50, 5, 200)
    >>> check_selection_budget(3, 1, 4)
    Traceback (most recent call last):
    ...
    ValueError: n_selected=3 features allow only 3 distinct sets of n_per_class=1, fewer than the 4 classes that each need their own set; increase n_selected or change n_per_class.
    """
    for value, name in ((n_selected, "n_selected"), (n_per_class, "n_per_class"), (n_classes, "n_classes")):
        _check_int(value, name, 1, 10**12)
    distinct = math.comb(n_selected, n_per_class)
    if distinct < n_classes:
        raise ValueError(
            f"n_selected={n_selected} features allow only {distinct} distinct sets of "
            f"n_per_class={n_per_class}, fewer than the {n_classes} classes that each need their own set; "
            "increase n_selected or change n_per_class."
        )


def selection_objective(
    A: ArrayLike,
    selected: ArrayLike,
    assignment: ArrayLike,
    *,
    penalty: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    n_per_class: int | None = None,
) -> float:
    """Objective of a selection by the formula of docs/method.md#problem (no feasibility check).

    Parameters
    ----------
    A : array-like of shape (n_features, n_classes)
    selected : array-like of int, shape (n_selected,)
    assignment : array-like of shape (n_classes, n_selected)
        0/1, columns follow ``selected``.
    penalty : array-like of shape (n_features, n_features), optional
        Only the entries ``i < j`` count.
    bias : array-like of shape (n_features,), optional
    n_per_class : int, optional
        The k of ``alpha = 1000 / (k * C)``. Default: the number of ones per row, which must
        then be the same in every row.

    Examples
    --------
    >>> selection_objective([[1.0], [0.5]], [0, 1], [[1, 0]])
    1000.0
    """
    A = np.asarray(A, dtype=np.float64)
    selected = np.asarray(selected, dtype=np.intp)
    assignment = np.asarray(assignment, dtype=np.float64)
    n_classes = A.shape[1]
    if n_per_class is None:
        per_row = np.unique(assignment.sum(1))
        if per_row.size != 1 or per_row[0] != int(per_row[0]) or per_row[0] < 1:
            raise ValueError(
                "assignment rows must all hold the same positive number of ones to infer n_per_class; "
                f"got row sums {sorted(per_row.tolist())}. Pass n_per_class."
            )
        n_per_class = int(per_row[0])
    value = assignment_scale(n_per_class, n_classes) * float((A[selected].T * assignment).sum())
    if penalty is not None:
        block = np.asarray(penalty, dtype=np.float64)[np.ix_(selected, selected)]
        order = np.argsort(selected)
        value -= float(np.triu(block[np.ix_(order, order)], 1).sum())
    if bias is not None:
        value += float(np.asarray(bias, dtype=np.float64)[selected].sum())
    return float(value)


# --------------------------------------------------------------------------------------------
# Assignment for a fixed selection, with exact duplicate repair
# --------------------------------------------------------------------------------------------


def _best_subsets(values: np.ndarray, k: int):
    """Yield the k-subsets of ``range(len(values))`` in order of non-increasing value sum."""
    order = np.argsort(-values, kind="stable")
    sorted_values = values[order]
    start = tuple(range(k))
    heap = [(-sorted_values[:k].sum(), start)]
    seen = {start}
    while heap:
        negative, positions = heapq.heappop(heap)
        yield -negative, tuple(sorted(order[list(positions)].tolist()))
        for p in range(k):
            moved = positions[p] + 1
            if moved < len(values) and (p == k - 1 or positions[p + 1] != moved):
                child = positions[:p] + (moved,) + positions[p + 1 :]
                if child not in seen:
                    seen.add(child)
                    total = -negative - sorted_values[positions[p]] + sorted_values[moved]
                    heapq.heappush(heap, (-total, child))


def _assign(WS: np.ndarray, k: int) -> tuple[np.ndarray, float, float]:
    """Best assignment of k of the ``m`` selected features to every class, columns distinct.

    ``WS`` (m, C) holds the weights of the selected features. Returns the (C, m) boolean
    assignment, its value, and the value without the no-duplicate rule (per-class top-k).

    Exact: classes whose top-k sets collide form groups; every class of a group of size g gets
    its g best subsets. Groups whose lists share a subset merge, and a class whose top-k set
    appears in a group's lists joins it, until nothing changes. A best matching inside each group
    (plus the untouched top-k sets of the other classes) is then optimal: no class of a group of
    size g needs a subset beyond its g best (at most g - 1 are taken by the others), and the
    lists of different groups and the other classes' sets are disjoint.
    """
    m, n_classes = WS.shape
    top = np.argpartition(-WS, k - 1, axis=0)[:k] if k < m else np.broadcast_to(np.arange(m)[:, None], (m, n_classes))
    top_sets = [tuple(column) for column in np.sort(top, axis=0).T.tolist()]
    free_value = float(np.take_along_axis(WS, np.asarray(top), axis=0).sum())
    owners: dict[tuple, list[int]] = {}
    for c, subset in enumerate(top_sets):
        owners.setdefault(subset, []).append(c)
    groups = [set(group) for group in owners.values() if len(group) > 1]
    if not groups:
        return _assignment_matrix(top_sets, m), free_value, free_value
    generators: dict[int, Iterator[tuple[float, tuple]]] = {}
    lists: dict[int, list[tuple]] = {}

    def listed(group):
        for c in group:
            generators.setdefault(c, _best_subsets(WS[:, c], k))
            lists.setdefault(c, [])
            while len(lists[c]) < len(group):
                lists[c].append(next(generators[c])[1])
        return {subset for c in group for subset in lists[c]}

    while True:
        subsets = [listed(group) for group in groups]
        merged = _merge_overlapping(groups, subsets)
        grouped = set().union(*merged)
        for group in merged:
            group.update(c for subset in listed(group) for c in owners.get(subset, ()) if c not in grouped)
        if len(merged) == len(groups) and sum(map(len, merged)) == sum(map(len, groups)):
            break
        groups = merged
    chosen = list(top_sets)
    for group in groups:
        rows = sorted(group)
        columns = sorted({subset for c in rows for subset in lists[c]})
        member = np.zeros((len(columns), m))
        for j, subset in enumerate(columns):
            member[j, list(subset)] = 1.0
        gain = WS[:, rows].T @ member.T  # value of every listed subset for every class of the group
        for r, j in zip(*linear_sum_assignment(gain, maximize=True)):
            chosen[rows[r]] = columns[j]
    assignment = _assignment_matrix(chosen, m)
    return assignment, float((WS.T * assignment).sum()), free_value


def _merge_overlapping(groups: list[set], subsets: list[set]) -> list[set]:
    """Union of the groups whose listed subsets intersect (transitively)."""
    merged_groups: list[set] = []
    merged_subsets: list[set] = []
    for group, listed in zip(groups, subsets):
        group, listed = set(group), set(listed)
        keep_groups, keep_subsets = [], []
        for other_group, other_listed in zip(merged_groups, merged_subsets):
            if listed & other_listed:
                group |= other_group
                listed |= other_listed
            else:
                keep_groups.append(other_group)
                keep_subsets.append(other_listed)
        merged_groups, merged_subsets = keep_groups + [group], keep_subsets + [listed]
    return merged_groups


def _assignment_matrix(subsets: list[tuple], m: int) -> np.ndarray:
    assignment = np.zeros((len(subsets), m), dtype=bool)
    for c, subset in enumerate(subsets):
        assignment[c, list(subset)] = True
    return assignment


def _evaluate(problem: _Problem, S: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(objective, objective without the no-duplicate rule, assignment) of the selection S."""
    assignment, value, free_value = _assign(problem.W[S], problem.k)
    linear = float(problem.bias[S].sum()) - problem.pair_penalty(S)
    return value + linear, free_value + linear, assignment


# --------------------------------------------------------------------------------------------
# Swap local search
# --------------------------------------------------------------------------------------------


def _class_leaders(rank_S: np.ndarray, k: int) -> np.ndarray:
    """Per class, the columns of S holding its k + 1 best features, best first (all when m == k)."""
    m = rank_S.shape[1]
    if k == m:
        return np.broadcast_to(np.arange(m), rank_S.shape)
    first = np.argpartition(rank_S, k, axis=1)[:, : k + 1]
    return np.take_along_axis(first, np.argsort(np.take_along_axis(rank_S, first, 1), axis=1), 1)


def _swap_gains(problem: _Problem, S: np.ndarray, rank_S=None, leaders=None) -> np.ndarray:
    """Change of the duplicate-free objective for every swap: ``gains[j, i]`` for S[i] -> j.

    Per class c, with v_k / v_k1 the k-th / (k+1)-th largest weight over S: removing a top-k
    member i lets v_k1 in (so the new threshold is v_k1), removing another leaves v_k; an added
    j then gains max(0, W[j, c] - threshold). Only features ranked above the (k+1)-th of S in
    class c can gain there, so the sums run over those entries of the precomputed per-class
    order (a few dozen per class), not over all of W. Rows of features already in S are -inf.
    ``rank_S`` (positions of S in every class's order) and ``leaders`` (:func:`_class_leaders`)
    are computed unless given (:class:`_SwapState` keeps them up to date).
    """
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


class _SwapState:
    """A selection kept in place (column i of the swap gains is ``S[i]``), updated swap by swap.

    Keeps the positions of S in every class's order and every class's leaders
    (:func:`_class_leaders`); a swap recomputes the leaders only of the classes it touches
    (those whose leaders lose the removed feature or that the added one enters).
    """

    def __init__(self, problem: _Problem, S: np.ndarray):
        self.problem = problem
        self.S = np.array(S, dtype=np.intp)
        self.rank_S = problem.position[:, self.S]
        self.leaders = np.array(_class_leaders(self.rank_S, problem.k))

    def gains(self) -> np.ndarray:
        return _swap_gains(self.problem, self.S, self.rank_S, self.leaders)

    def swap(self, i: int, j: int) -> None:
        """Replace S[i] by feature j."""
        k, position = self.problem.k, self.problem.position
        touched = None
        if k < self.S.size:
            last = self.rank_S[np.arange(len(self.rank_S)), self.leaders[:, k]]
            touched = (position[:, j] < last) | (self.leaders == i).any(1)
        self.S[i] = j
        self.rank_S[:, i] = position[:, j]
        if touched is not None and touched.any():
            self.leaders[touched] = _class_leaders(self.rank_S[touched], k)


class _LocalSearch:
    """Best-improvement swap search on the true objective (duplicates repaired).

    Candidate swaps are ranked by the duplicate-free objective, which is an upper bound of the
    true one: a swap whose duplicate-free value does not beat the current true value cannot
    improve it, so only the others are evaluated exactly (usually the first one).
    """

    def __init__(self, problem: _Problem, deadline: float, max_evaluations: int = 256):
        self.problem = problem
        self.deadline = deadline
        self.max_evaluations = max_evaluations
        self.cache: dict[bytes, tuple[float, float]] = {}
        self.timed_out = False

    def evaluate(self, S: np.ndarray) -> tuple[float, float]:
        """(objective, duplicate-free objective) of the sorted selection S, memoised."""
        key = S.tobytes()
        if key not in self.cache:
            self.cache[key] = _evaluate(self.problem, S)[:2]
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


def _tabu_search(search: _LocalSearch, S, value, n_iterations, rng, *, weights, bound=math.inf, verbose=0):
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
            restart = _perturb(best, weights, rng)
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
                _log_progress(verbose, f"tabu move {iteration}", best_value, bound, bar)
    return search.run(best)


# --------------------------------------------------------------------------------------------
# Relaxation (OSQP) and its certified bound
# --------------------------------------------------------------------------------------------


def _concave_shift(Q: np.ndarray) -> float:
    """Smallest uniform diagonal shift making ``Q + shift * I`` positive semidefinite (+ margin)."""
    if not Q.any():
        return 0.0
    smallest = float(np.linalg.eigvalsh(Q)[0])
    return max(0.0, -smallest) * (1.0 + 1e-9) + 1e-12 * (1.0 + np.abs(Q).max())


def _class_thresholds(W: np.ndarray, s: np.ndarray, k: int) -> np.ndarray:
    """Per class, the optimal dual threshold u of max{W.e : 0 <= e <= s, sum e = k}.

    It minimises k*u + sum_f s_f max(0, W[f] - u): the weight at which the s-mass of the
    features sorted by weight reaches k.
    """
    order = np.argsort(-W, axis=0, kind="stable")
    mass = np.cumsum(s[order], axis=0)
    position = np.minimum((mass < k - 1e-12).sum(0), W.shape[0] - 1)
    return W[order[position, np.arange(W.shape[1])], np.arange(W.shape[1])]


def _certified_bound(problem: _Problem, s: np.ndarray, shift: float) -> float:
    """Upper bound on the optimum, valid for any point ``s`` (the relaxation's solution).

    On binary s with sum(s) = m the objective equals the concave
    Phi(s) = -s'(Q + shift I)s/2 + (shift/2 + bias)'s + sum_c g_c(s), where g_c(s) is the LP value
    of class c's assignment. For all s: the concave quadratic lies below its tangent plane at
    ``s`` and g_c(s) <= k u_c + sum_f s_f max(0, W[f, c] - u_c) for any u_c (LP duality). The
    maximum of the resulting linear function over {0 <= s <= 1, sum s = m} is the sum of its m
    largest coefficients. With non-negative penalties, dropping the penalty instead gives a
    second bound; the smaller is returned.
    """
    s = np.clip(s, 0.0, 1.0)
    u = _class_thresholds(problem.W, s, problem.k)
    curvature = problem.Q @ s + shift * s
    bound = _dual_bound(problem, u, slope=0.5 * shift - curvature, constant=0.5 * float(s @ curvature))
    if np.all(problem.Q >= 0):
        bound = min(bound, _dual_bound(problem, u))
    return bound


def _osqp_algebra(algebra: str) -> str:
    if algebra not in _OSQP_ALGEBRAS:
        raise ValueError(f"algebra must be one of {_OSQP_ALGEBRAS}; got {algebra!r}.")
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
    def build(cls, problem: _Problem, n_candidates: np.ndarray, ranking: np.ndarray) -> "_PrunedRelaxation":
        W, k, m = problem.W, problem.k, problem.m
        n_features, n_classes = W.shape
        classes = np.arange(n_classes)
        edge_class = np.repeat(classes, n_candidates)
        edge_feature = np.concatenate([ranking[: n_candidates[c], c] for c in classes])
        n_edges = edge_feature.size
        edges = n_features + np.arange(n_edges)
        slacks = n_features + n_edges + classes
        n_var = n_features + n_edges + n_classes
        pruned = n_candidates < n_features
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
            lower=np.concatenate([[m], np.full(n_edges, -np.inf), np.full(n_classes, k), np.zeros(n_var)]),
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


def _relaxation(problem, *, shift, algebra, eps, max_iter, time_limit, verbose, candidates_per_class,
                slack_tolerance=1e-2):
    """Solve the concave relaxation with OSQP on pruned candidate edges; return (s, info).

    Maximises -s'(Q + shift I)s/2 + shift/2 sum s + the linear part of :class:`_PrunedRelaxation`
    (OSQP minimises, so negated). Classes whose slack carries mass get twice the candidates and
    the problem is solved again, warm-started.
    """
    n_features, n_classes = problem.W.shape
    ranking = np.argsort(-problem.W, axis=0, kind="stable")
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
        settings = dict(verbose=verbose, eps_abs=eps, eps_rel=eps, max_iter=max_iter, polishing=False)
        if time_limit is not None:
            remaining = time_limit - (time.perf_counter() - start)
            if remaining <= 0:
                break
            settings["time_limit"] = remaining
        solver = osqp.OSQP(algebra=algebra)
        solver.setup(P, q, relaxed.matrix, relaxed.lower, relaxed.upper, **settings)
        if warm:
            solver.warm_start(x=_relaxed_warm_start(s, problem.W, relaxed.edge_feature, relaxed.edge_class, problem.k))
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
    logger.debug("selection relaxation: %s", info)
    if info["osqp_status"] != "solved":
        warnings.warn(
            f"OSQP stopped with status {info['osqp_status']!r}; the solution stays feasible and the "
            "bound valid, but the bound may be loose (raise max_iter or time_limit).",
            RuntimeWarning,
            stacklevel=4,
        )
    return s, info


def _dual_bound(problem: _Problem, u: np.ndarray, slope=0.0, constant=0.0) -> float:
    """Maximum over {0 <= s <= 1, sum s = m} of the linear over-estimator
    k sum u + constant + (bias + slope + sum_c max(0, W[:, c] - u_c))'s: its m largest coefficients."""
    coefficients = problem.bias + slope + np.maximum(problem.W - u, 0.0).sum(1)
    return problem.k * float(u.sum()) + constant + float(np.partition(coefficients, -problem.m)[-problem.m :].sum())


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


def _clique_bound(problem: _Problem, u: np.ndarray, lower: float, *, deadline: float, n_covers: int = 4,
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
    W, Q, k, m = problem.W, problem.Q, problem.k, problem.m
    reward = np.zeros(len(Q))
    if m > 1 and (Q < 0).any():
        reward = 0.5 * np.partition(np.maximum(-Q, 0.0), -(m - 1), axis=1)[:, -(m - 1):].sum(1)
    covers = _clique_covers(Q, problem.bias + reward + np.maximum(W - u, 0.0).sum(1), n_covers)
    split = np.zeros((len(covers), len(Q)))  # rows sum to zero: a_t = a / T + split[t]
    tolerance = 1e-12 * problem.scale
    best, step, stalled = math.inf, 1.0, 0
    for _ in range(n_rounds):
        value = problem.bias + reward + np.maximum(W - u, 0.0).sum(1)
        bound, chosen = k * float(u.sum()), np.zeros(split.shape)
        direction_u = np.full(u.shape, float(k))
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
        if norm == 0 or best - lower <= tolerance or step < 1e-3 or time.perf_counter() > deadline:
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
        e[index] = np.minimum(capacity, np.maximum(k - already, 0.0))
    slack = np.maximum(k - np.bincount(edge_class, weights=e, minlength=n_classes), 0.0)
    return np.concatenate([s, e, slack])


# --------------------------------------------------------------------------------------------
# Exact MILP (HiGHS through scipy.optimize.milp)
# --------------------------------------------------------------------------------------------


def _solve_milp(problem: _Problem, *, time_limit, mip_rel_gap, verbose):
    """Linearised MILP with the no-duplicate rule added lazily per offending class pair.

    Variables: s (N), E (N*C, index f*C + c), y_ij for every penalised pair (y >= s_i + s_j - 1
    for positive penalties; y <= s_i, y <= s_j for negative ones), and per constrained class
    pair (c1, c2) continuous z_f <= min(E[f,c1] + E[f,c2], 2 - E[f,c1] - E[f,c2]) with
    sum z >= 2 (z_f reaches 1 only where exactly one class uses f, so the columns differ).
    Pairs found duplicated are constrained and the MILP solved again, until no duplicates
    remain. Returns (S or None, upper bound, proven optimal); not proven means stopped by the
    time limit.
    """
    W, Q, k, m = problem.W, problem.Q, problem.k, problem.m
    n_features, n_classes = W.shape
    n_edges = n_features * n_classes
    features = np.arange(n_features)
    edge_rows = np.arange(n_edges)
    pair_i, pair_j = np.nonzero(np.triu(Q, 1))
    pair_q = Q[pair_i, pair_j]
    y = n_features + n_edges + np.arange(pair_i.size)
    positive, negative = pair_q > 0, pair_q < 0
    n_base = n_features + n_edges + pair_i.size

    def build(class_pairs):
        n_var = n_base + n_features * len(class_pairs)
        blocks, lower, upper = [], [], []

        def add(data, row, column, low, high):
            blocks.append(sp.csr_matrix((data, (row, column)), shape=(len(low), n_var)))
            lower.append(low)
            upper.append(high)

        add(np.ones(n_features), np.zeros(n_features, int), features, [m], [m])  # sum s = m
        add(np.repeat([1.0, -1.0], n_edges), np.tile(edge_rows, 2),  # E[f, c] <= s[f]
            np.concatenate([n_features + edge_rows, edge_rows // n_classes]),
            np.full(n_edges, -np.inf), np.zeros(n_edges))
        add(np.ones(n_edges), edge_rows % n_classes, n_features + edge_rows,  # k per class
            np.full(n_classes, k), np.full(n_classes, k))
        n_pos = int(positive.sum())
        add(np.tile([1.0, 1.0, -1.0], n_pos), np.repeat(np.arange(n_pos), 3),
            np.column_stack([pair_i[positive], pair_j[positive], y[positive]]).ravel(),
            np.full(n_pos, -np.inf), np.ones(n_pos))
        n_neg = 2 * int(negative.sum())
        ends = np.column_stack([pair_i[negative], pair_j[negative]]).ravel()
        add(np.tile([1.0, -1.0], n_neg), np.repeat(np.arange(n_neg), 2),
            np.column_stack([np.repeat(y[negative], 2), ends]).ravel(), np.full(n_neg, -np.inf), np.zeros(n_neg))
        rows = np.repeat(features, 3)
        for p, (c1, c2) in enumerate(class_pairs):
            z = n_base + p * n_features + features
            triple = np.column_stack([z, n_features + features * n_classes + c1,
                                      n_features + features * n_classes + c2]).ravel()
            add(np.tile([1.0, -1.0, -1.0], n_features), rows, triple, np.full(n_features, -np.inf),
                np.zeros(n_features))
            add(np.ones(3 * n_features), rows, triple, np.full(n_features, -np.inf), np.full(n_features, 2.0))
            add(np.ones(n_features), np.zeros(n_features, int), z, [2.0], [np.inf])
        cost = np.concatenate([-problem.bias, -W.ravel(), pair_q, np.zeros(n_var - n_base)])
        integrality = np.concatenate([np.ones(n_features + n_edges), np.zeros(n_var - n_features - n_edges)])
        constraint = LinearConstraint(sp.vstack(blocks, format="csr"), np.concatenate(lower), np.concatenate(upper))
        return cost, integrality, constraint

    class_pairs: set[tuple[int, int]] = set()
    involved: set[int] = set()
    upper_bound, start = math.inf, time.perf_counter()
    while True:
        cost, integrality, constraint = build(sorted(class_pairs))
        options = {"disp": verbose, "mip_rel_gap": mip_rel_gap}
        if time_limit is not None:
            options["time_limit"] = max(time_limit - (time.perf_counter() - start), 1e-3)
        result = milp(cost, integrality=integrality, bounds=Bounds(0.0, 1.0), constraints=constraint,
                      options=options)
        dual_bound = getattr(result, "mip_dual_bound", None)
        if dual_bound is not None and np.isfinite(dual_bound):
            upper_bound = min(upper_bound, -float(dual_bound))  # a relaxation: valid for the full problem
        if result.x is None:
            return None, upper_bound, False
        S = np.flatnonzero(result.x[:n_features] > 0.5)
        if result.status != 0:
            return S, upper_bound, False
        E = result.x[n_features : n_features + n_edges].reshape(n_features, n_classes) > 0.5
        groups: dict[bytes, list[int]] = {}
        for c in range(n_classes):
            groups.setdefault(E[:, c].tobytes(), []).append(c)
        if len(groups) == n_classes:
            return S, upper_bound, True
        for group in groups.values():
            class_pairs.update(itertools.combinations(group, 2))
            involved.update(group if len(group) > 1 else [])
        if len(involved) <= 32:  # classes that collided once tend to collide again
            class_pairs.update(itertools.combinations(sorted(involved), 2))
        logger.info("exact selection: %d class pairs kept distinct, solving again", len(class_pairs))


# --------------------------------------------------------------------------------------------
# Public solver
# --------------------------------------------------------------------------------------------


_SOLVER_OPTIONS = {
    "osqp": ("algebra", "eps", "max_iter", "candidates_per_class", "n_iterations"),
    "exact": ("mip_rel_gap",),
}
_COMMON_OPTIONS = ("solver", "time_limit")
_ESTIMATOR_ARGUMENTS = ("A", "n_selected", "n_per_class", "penalty", "bias", "random_state", "verbose")


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
        if value not in _OSQP_ALGEBRAS:
            raise ValueError(f"algebra must be one of {_OSQP_ALGEBRAS}; got {value!r}.")
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
    n_per_class: int,
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
    covers of the penalty that sees the penalty (:func:`_clique_bound`); ``bound_method`` says
    which. It is computed before the tabu search, so a ``time_limit`` that stops the search
    still returns the best selection so far with its certified gap.
    ``solver="exact"``: the linearised MILP solved by HiGHS (``scipy.optimize.milp``), the
    no-duplicate rule added lazily; a proven optimum when it finishes within ``time_limit``.

    Parameters
    ----------
    A : array-like of shape (n_features, n_classes)
        Feature-class scores (:func:`feature_class_correlation`).
    n_selected, n_per_class : int
        Budgets; ``comb(n_selected, n_per_class)`` must be at least the number of classes.
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
    problem = _build_problem(A, n_selected, n_per_class, penalty, bias)
    check_solver_options({"solver": solver, "time_limit": time_limit, "algebra": algebra, "eps": eps,
                          "max_iter": max_iter, "candidates_per_class": candidates_per_class,
                          "n_iterations": n_iterations} if solver == "osqp" else
                         {"solver": solver, "time_limit": time_limit, "mip_rel_gap": mip_rel_gap})
    verbose = _check_verbose(verbose)
    candidates_per_class = 12 * n_per_class + 4 if candidates_per_class is None else candidates_per_class
    deadline = math.inf if time_limit is None else start + time_limit
    default_options = dict(algebra=algebra, eps=eps, max_iter=max_iter, candidates_per_class=candidates_per_class,
                           n_iterations=n_iterations, random_state=random_state, verbose=verbose)
    if solver == "exact":
        S, upper_bound, proven = _solve_milp(problem, time_limit=time_limit, mip_rel_gap=mip_rel_gap,
                                             verbose=verbose >= 2)
        status, bound_method = ("optimal" if proven else "time_limit"), "milp"
        if S is None:
            warnings.warn(
                "The MILP found no solution within time_limit; returning the default method's solution "
                "(within the same time_limit).",
                RuntimeWarning,
                stacklevel=2,
            )
            # The fallback keeps to the same time_limit: each of its stages runs at least once.
            S, default_bound, default_method, _ = _solve_default(problem, deadline=deadline, **default_options)
            if default_bound < upper_bound:
                upper_bound, bound_method = default_bound, default_method
            status = "time_limit_heuristic"
    else:
        S, upper_bound, bound_method, timed_out = _solve_default(problem, deadline=deadline, **default_options)
        status = "time_limit" if timed_out else "feasible"

    S = np.sort(S)
    objective, _, assignment = _evaluate(problem, S)
    if upper_bound <= objective:  # the bound meets the objective: proven optimal
        upper_bound, bound_method = objective, "objective" if bound_method != "milp" else bound_method
    gap = (upper_bound - objective) / max(abs(objective), 1e-12)
    if status == "feasible" and gap <= 1e-9:
        status = "optimal"
    _log_progress(verbose, "done", objective, upper_bound)
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


def _log_progress(verbose: int, stage: str, objective: float, bound: float, bar=None) -> None:
    """Progress (objective, bound, gap) at verbose >= 1: the logger, and the progress bar's postfix."""
    if not verbose:
        return
    gap = (bound - objective) / max(abs(objective), 1e-12)
    logger.info("selection %s: objective %.6g, bound %.6g, gap %.2f%%", stage, objective, bound, 100 * gap)
    if bar is not None and hasattr(bar, "set_postfix"):
        bar.set_postfix(objective=f"{objective:.6g}", bound=f"{bound:.6g}", gap=f"{100 * gap:.2f}%")


def _solve_default(problem, *, deadline, algebra, eps, max_iter, candidates_per_class, n_iterations,
                   random_state, verbose):
    """Relaxation (OSQP), rounding, local search, certified bounds, tabu search.

    Returns (S, upper bound, bound method, timed out).
    """
    algebra = _osqp_algebra(algebra)
    shift = _concave_shift(problem.Q)
    # Any shift >= the smallest one is exact on binary points; a floor makes the relaxation
    # strongly concave, which OSQP solves in few iterations (an LP would take it thousands).
    # The bound below is certified with the smallest shift, at whatever point OSQP returns.
    solve_shift = max(shift, 0.5 * float(np.abs(problem.W).max()))
    # Under a time limit the relaxation gets at most half of it, so that the search gets the rest.
    remaining = None if deadline == math.inf else max(0.5 * (deadline - time.perf_counter()), 1e-3)
    s, _ = _relaxation(problem, shift=solve_shift, algebra=algebra, eps=eps, max_iter=max_iter,
                       time_limit=remaining, verbose=verbose >= 2, candidates_per_class=candidates_per_class)
    upper_bound, bound_method = _certified_bound(problem, s, shift), "relaxation"
    with threadpool_limits(limits=1, user_api="blas"):  # small products: threads only contend
        search = _LocalSearch(problem, deadline)
        S, value = search.run(_round(problem, s))
        clique = _clique_bound(problem, _class_thresholds(problem.W, s, problem.k), value, deadline=deadline)
        if clique < upper_bound:
            upper_bound, bound_method = clique, "clique"
        _log_progress(verbose, "local search", value, upper_bound)
        S, _ = _tabu_search(search, S, value, n_iterations, check_random_state(random_state),
                            weights=s + 1.0 / s.size, bound=upper_bound, verbose=verbose)
    return S, upper_bound, bound_method, search.timed_out


def _round(problem: _Problem, s: np.ndarray) -> np.ndarray:
    """The m features with the largest relaxed value (ties: larger total weight first)."""
    order = np.lexsort((-problem.W.sum(1), -np.round(s, 9)))
    return np.sort(order[: problem.m])


def _perturb(S: np.ndarray, weights: np.ndarray, rng) -> np.ndarray:
    """Swap a few random selected features for unselected ones drawn by relaxed value."""
    outside = np.setdiff1d(np.arange(weights.size), S)
    if outside.size == 0:
        return S
    most = max(1, min(S.size, outside.size, max(2, S.size // 5)))
    n_swaps = int(rng.randint(min(2, most), most + 1))
    p = weights[outside] / weights[outside].sum()
    added = rng.choice(outside, size=n_swaps, replace=False, p=p)
    kept = rng.choice(S, size=S.size - n_swaps, replace=False)
    return np.sort(np.concatenate([kept, added]))
