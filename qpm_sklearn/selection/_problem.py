"""The selection problem in the solvers' terms, its objective, and exact assignment repair.

Owns :class:`Problem` (``W = alpha * A``, the symmetric penalty ``Q``, the bias and the budgets),
its validation (:func:`build_problem`, :func:`check_selection_budget`), the objective of a
selection (:func:`selection_objective`, :func:`evaluate`) and, for a fixed selection, the best
assignment with no two classes sharing a feature set (:func:`_assign`: each class's top-k, with
duplicates repaired exactly).
"""

from __future__ import annotations

import functools
import heapq
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment

from .._utils import check_finite_array
from .._utils import check_int as _check_int


def check_matrix(value, name, *, ndim=2) -> np.ndarray:
    """A finite, non-empty float64 array of ``ndim`` dimensions (the shared validator, plus size)."""
    array = check_finite_array(value, name, ndim=ndim)
    if 0 in array.shape:
        raise ValueError(f"{name} must be a non-empty {ndim}-D array; got shape {array.shape}.")
    return array


@dataclass
class Problem:
    """The instance in the solvers' terms: ``W = alpha * A`` and ``Q`` = symmetric penalty."""

    W: np.ndarray  # (N, C) assignment weights alpha * A
    Q: np.ndarray  # (N, N) symmetric, zero diagonal; the objective subtracts s^T Q s / 2
    bias: np.ndarray  # (N,)
    m: int
    k: int  # the budget of every class; with per-class budgets, the largest
    # Constraints (None: none). ``budgets`` (C,) holds every class's own k_c when they differ;
    # ``forced`` (N,) the features that must be selected (included ones and every pinned one);
    # ``pinned`` (N, C) the features each class must use.
    budgets: np.ndarray | None = None
    forced: np.ndarray | None = None
    pinned: np.ndarray | None = None

    @property
    def constrained(self) -> bool:
        """True when any constraint beyond the plain budgets applies (the solvers' general path)."""
        return self.budgets is not None or self.forced is not None or self.pinned is not None

    @property
    def class_budget(self):
        """Every class's k_c as an int array when budgets differ, else the int k (same arithmetic as before)."""
        return self.budgets if self.budgets is not None else self.k

    @functools.cached_property
    def dual_terms(self):
        """(weights, budgets, constant) of the classes' assignment LPs once pinned edges are taken.

        Class c's value is ``constant_c + max{W'.e : 0 <= e <= s, sum e = k'_c}`` with its pinned
        weights counted in the constant, removed from ``W'`` (``-inf``) and from its budget ``k'_c``.
        Without pins: ``(W, class_budget, 0.0)``.
        """
        if self.pinned is None:
            return self.W, self.class_budget, 0.0
        budgets = np.broadcast_to(np.asarray(self.class_budget), (self.W.shape[1],)) - self.pinned.sum(0)
        return np.where(self.pinned, -np.inf, self.W), budgets.astype(np.int64), float((self.W * self.pinned).sum())

    def budget_total(self, u: np.ndarray) -> float:
        """sum_c k'_c u_c plus the pinned constant (the budgets' share of the dual bounds, :attr:`dual_terms`)."""
        if not self.constrained:
            return self.k * float(u.sum())
        _, budgets, constant = self.dual_terms
        return float(np.broadcast_to(budgets, u.shape) @ u) + constant

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


def build_problem(A, n_selected, n_per_class, penalty, bias, *, check_budget=True) -> Problem:
    """The unconstrained instance (``check_budget=False``: the caller has checked distinct sets under its constraints)."""
    A = check_matrix(A, "A")
    n_features, n_classes = A.shape
    _check_int(n_selected, "n_selected", 1, n_features)
    _check_int(n_per_class, "n_per_class", 1, n_selected)
    if check_budget:
        check_selection_budget(n_selected, n_per_class, n_classes)
    Q = np.zeros((n_features, n_features))
    if penalty is not None:
        penalty = check_matrix(penalty, "penalty")
        if penalty.shape != (n_features, n_features):
            raise ValueError(f"penalty must have shape ({n_features}, {n_features}); got {penalty.shape}.")
        Q = np.triu(penalty, 1)  # the objective counts penalty[i, j] for i < j only
        Q = Q + Q.T
    if bias is None:
        bias = np.zeros(n_features)
    else:
        bias = check_matrix(bias, "bias", ndim=1)
        if bias.shape != (n_features,):
            raise ValueError(f"bias must have shape ({n_features},); got {bias.shape}.")
    return Problem(W=assignment_scale(n_per_class, n_classes) * A, Q=Q, bias=bias, m=n_selected, k=n_per_class)


def assignment_scale(n_per_class: int | Sequence[int] | np.ndarray, n_classes: int) -> float:
    """The factor alpha = 1000 / sum_c k_c of the assignment term (docs/method.md#problem).

    With one budget k for every class this is ``1000 / (k * n_classes)``; ``n_per_class`` may
    also be an array of the classes' own budgets.

    Parameters
    ----------
    n_per_class : int
        Features per class.
    n_classes : int
        Number of classes.

    Returns
    -------
    float

    Examples
    --------
    >>> assignment_scale(5, 200)
    1.0
    >>> assignment_scale([2, 3, 5], 3)
    100.0
    """
    if np.ndim(n_per_class) == 1:
        budgets = np.asarray(n_per_class)
        if budgets.shape != (n_classes,) or budgets.dtype.kind not in "iu" or np.any(budgets < 1):
            raise ValueError(f"n_per_class must hold {n_classes} positive ints; got {n_per_class!r}.")
        return 1000.0 / float(budgets.sum())
    _check_int(n_per_class, "n_per_class", 1, 10**12)
    _check_int(n_classes, "n_classes", 1, 10**12)
    return 1000.0 / (cast(int, n_per_class) * n_classes)


def check_selection_budget(n_selected: int, n_per_class: int, n_classes: int) -> None:
    """Raise ValueError unless ``n_selected`` features give every class its own set.

    Every class needs a different set of ``n_per_class`` features, so
    ``comb(n_selected, n_per_class)`` must be at least ``n_classes``.

    Parameters
    ----------
    n_selected : int
        Features selected in all.
    n_per_class : int
        Features per class.
    n_classes : int
        Number of classes.

    Raises
    ------
    ValueError
        When the budgets cannot give every class its own set (the message says how to change them).

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
    n_per_class: int | Sequence[int] | np.ndarray | None = None,
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
    n_per_class : int or array-like of int, optional
        The k of ``alpha = 1000 / (k * C)``, or every class's own k_c (``alpha = 1000 / sum_c k_c``).
        Default: the number of ones per row, which must then be the same in every row.

    Returns
    -------
    float

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
    if np.ndim(n_per_class) == 1:
        n_per_class = np.asarray(n_per_class, dtype=np.int64)
    value = assignment_scale(n_per_class, n_classes) * float((A[selected].T * assignment).sum())
    if penalty is not None:
        block = np.asarray(penalty, dtype=np.float64)[np.ix_(selected, selected)]
        order = np.argsort(selected)
        value -= float(np.triu(block[np.ix_(order, order)], 1).sum())
    if bias is not None:
        value += float(np.asarray(bias, dtype=np.float64)[selected].sum())
    return float(value)


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
    if len(set(top_sets)) == n_classes:
        return _assignment_matrix(top_sets, m), free_value, free_value
    chosen = _distinct_sets(WS, top_sets, lambda c: _best_subsets(WS[:, c], k), own_lists_only=False)
    assert chosen is not None  # every class may take any k-subset, and there are at least n_classes
    assignment = _assignment_matrix(chosen, m)
    return assignment, float((WS.T * assignment).sum()), free_value


def _distinct_sets(
    WS: np.ndarray,
    top_sets: list[tuple],
    ranked_sets: Callable[[int], Iterator[tuple[float, tuple]]],
    *,
    own_lists_only: bool,
) -> list[tuple] | None:
    """Best sets, one per class and no two equal, replacing the colliding ones of ``top_sets``.

    ``ranked_sets(c)`` yields class c's feasible sets as (value, set) by non-increasing value;
    ``top_sets[c]`` is its first. Classes whose sets collide form groups; every class of a group
    of size g lists its g best sets (all it has, when fewer). Groups whose lists share a set
    merge, and a class whose set appears in a group's lists joins it, until nothing changes; a
    best matching inside each group (the other classes keep their sets) is then optimal.
    ``own_lists_only`` bars a class from the sets listed only by others (they may not be feasible
    for it). Returns None when some group cannot be matched to distinct sets.
    """
    m = WS.shape[0]
    owners: dict[tuple, list[int]] = {}
    for c, subset in enumerate(top_sets):
        owners.setdefault(subset, []).append(c)
    groups = [set(group) for group in owners.values() if len(group) > 1]
    generators: dict[int, Iterator[tuple[float, tuple]]] = {}
    lists: dict[int, list[tuple]] = {}

    def listed(group):
        for c in group:
            if c not in generators:
                generators[c] = ranked_sets(c)
                lists[c] = []
            while len(lists[c]) < len(group):
                subset = next(generators[c], None)
                if subset is None:
                    break
                lists[c].append(subset[1])
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
        if len(columns) < len(rows):
            return None
        member = np.zeros((len(columns), m))
        for j, subset in enumerate(columns):
            member[j, list(subset)] = 1.0
        gain = WS[:, rows].T @ member.T  # value of every listed set for every class of the group
        if own_lists_only:
            feasible = np.array([[subset in lists[c] for subset in columns] for c in rows])
            barred = -(1.0 + np.abs(gain).sum()) * (len(rows) + 1)  # worse than any feasible matching
            gain = np.where(feasible, gain, barred)
        else:
            feasible = np.ones(gain.shape, dtype=bool)
        matched_rows, matched_columns = linear_sum_assignment(gain, maximize=True)
        if len(matched_rows) < len(rows) or not feasible[matched_rows, matched_columns].all():
            return None
        for r, j in zip(matched_rows, matched_columns):
            chosen[rows[r]] = columns[j]
    return chosen


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


def evaluate(problem: Problem, S: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(objective, objective without the no-duplicate rule, assignment) of the selection S.

    Under constraints, a selection that misses a forced feature or admits no assignment with
    distinct rows is worth ``-inf``.
    """
    if problem.constrained:
        if problem.forced is not None and not problem.forced[S].sum() == problem.forced.sum():
            return -math.inf, -math.inf, np.zeros((problem.W.shape[1], S.size), dtype=bool)
        budgets = np.broadcast_to(np.asarray(problem.class_budget), (problem.W.shape[1],))
        pinned = np.zeros((S.size, problem.W.shape[1]), dtype=bool) if problem.pinned is None else problem.pinned[S]
        assignment, value, free_value = _assign_constrained(problem.W[S], budgets, pinned)
    else:
        assignment, value, free_value = _assign(problem.W[S], problem.k)
    linear = float(problem.bias[S].sum()) - problem.pair_penalty(S)
    return value + linear, free_value + linear, assignment


def _pinned_subsets(values: np.ndarray, pinned: np.ndarray, free_budget: int):
    """Yield the feasible sets of one class (its pinned features plus ``free_budget`` others) by
    non-increasing value: the subsets of the free features in :func:`_best_subsets` order."""
    free = np.flatnonzero(~pinned)
    base = np.flatnonzero(pinned).tolist()
    base_value = float(values[pinned].sum())
    for value, positions in _best_subsets(values[free], free_budget):
        yield base_value + value, tuple(sorted(base + free[list(positions)].tolist()))


def _assign_constrained(WS: np.ndarray, budgets: np.ndarray, pinned: np.ndarray) -> tuple[np.ndarray, float, float]:
    """:func:`_assign` under per-class budgets and pinned features: class c takes its pinned
    features plus its ``budgets[c] - |pinned|`` best others, duplicates repaired exactly.

    Returns (assignment, value, value without the no-duplicate rule); value is ``-inf`` when no
    assignment with distinct rows exists. The proof of :func:`_assign` carries over: every
    class's list holds its own feasible sets by decreasing value, so no class of a group of size
    g needs a set beyond its g best (or all it has, when it has fewer); a listed set that is not
    feasible for a class (another size, a pinned feature missing) is barred from it in the
    matching.
    """
    m, n_classes = WS.shape
    free_budget = budgets - pinned.sum(0)
    if np.any(free_budget < 0) or np.any(free_budget > m - pinned.sum(0)):
        return np.zeros((n_classes, m), dtype=bool), -math.inf, -math.inf
    free_weight = np.where(pinned, -np.inf, WS)
    rank = np.empty((m, n_classes), dtype=np.intp)
    np.put_along_axis(rank, np.argsort(-free_weight, axis=0, kind="stable"), np.arange(m)[:, None], axis=0)
    member = pinned | (rank < free_budget[None, :])
    free_value = float((WS * member).sum())
    top_sets = [tuple(np.flatnonzero(column).tolist()) for column in member.T]
    if len(set(top_sets)) == n_classes:
        return member.T.copy(), free_value, free_value
    chosen = _distinct_sets(
        WS, top_sets, lambda c: _pinned_subsets(WS[:, c], pinned[:, c], int(free_budget[c])), own_lists_only=True
    )
    if chosen is None:
        return member.T.copy(), -math.inf, free_value
    assignment = _assignment_matrix(chosen, m)
    return assignment, float((WS.T * assignment).sum()), free_value
