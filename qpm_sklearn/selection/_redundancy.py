"""The redundancy penalty between features (docs/method.md#penalty).

Owns the problem data the solvers read besides the budgets: the feature-class correlation ``A``
(:func:`feature_class_correlation`), the feature-feature similarity ``R``
(:func:`feature_similarity`) and the pair penalty built from ``R`` (:func:`redundancy_penalty`)
under the two threshold rules: ``"paper"`` (the authors' Ramsey clique-removal search, replayed in
networkx's node order) and ``"consistent"`` (a greedy clique search on the penalty's own scale).
"""

from __future__ import annotations

import math
import sys
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from .._utils import check_int as _check_int
from ._problem import check_matrix


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
    F = check_matrix(F, "F")
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != F.shape[0]:
        raise ValueError(f"y must have shape ({F.shape[0]},) to match F; got shape {y.shape}.")
    _, codes = np.unique(y, return_inverse=True)
    onehot = np.eye(codes.max() + 1)[codes]
    weights = None
    if sample_weight is not None:
        weights = check_matrix(sample_weight, "sample_weight", ndim=1)
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

    Parameters
    ----------
    A : array-like of shape (n_features, n_classes)
        Feature-class scores (:func:`feature_class_correlation`).

    Returns
    -------
    R : ndarray of shape (n_features, n_features)
        Symmetric, zero diagonal, entries in [-1, 1].

    Examples
    --------
    >>> feature_similarity([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]).round(3)
    array([[0.   , 0.707, 0.   ],
           [0.707, 0.   , 0.707],
           [0.   , 0.707, 0.   ]])
    """
    A = check_matrix(A, "A")
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


def _set_table_sizes(n: int) -> np.ndarray:
    """``sizes[m]``: the hash-table size of a Python set built by ``m`` insertions into an empty set.

    Read from the interpreter itself (``sys.getsizeof`` grows with the table), so it follows
    whatever growth policy the running CPython has.
    """
    growing: set[int] = set()
    base = sys.getsizeof(growing)
    sizes = np.empty(n + 1, dtype=np.int64)
    for m in range(n + 1):
        used = sys.getsizeof(growing) - base
        sizes[m] = used // 16 if used > 0 else 8  # 8: the inline table of a small set
        growing.add(m)
    return sizes


def _row_bits(matrix: np.ndarray) -> list[int]:
    """Every row of the boolean ``matrix`` as a Python int whose bit ``j`` is ``matrix[i, j]``."""
    packed = np.packbits(matrix, axis=1, bitorder="little")
    return [int.from_bytes(row.tobytes(), "little") for row in packed]


def _mask_bits(mask: np.ndarray) -> int:
    """The boolean vector ``mask`` as a Python int whose bit ``j`` is ``mask[j]``."""
    return int.from_bytes(np.packbits(mask, bitorder="little").tobytes(), "little")


def _bit_ids(bits: int) -> list[int]:
    """The positions of the set bits of ``bits``, ascending."""
    if bits.bit_count() <= 16:
        ids = []
        while bits:
            low = bits & -bits
            ids.append(low.bit_length() - 1)
            bits ^= low
        return ids
    raw = np.frombuffer(bits.to_bytes((bits.bit_length() + 7) // 8, "little"), dtype=np.uint8)
    return np.flatnonzero(np.unpackbits(raw, bitorder="little")).tolist()


class _NegativePadding:
    """``padding[k]``: the set ``{-1, ..., -k}``, built once per size (negative numbers are never nodes)."""

    def __init__(self) -> None:
        self._sets: dict[int, frozenset[int]] = {}

    def __getitem__(self, k: int) -> frozenset[int]:
        found = self._sets.get(k)
        if found is None:
            found = self._sets[k] = frozenset(range(-k, 0))
        return found


def _estimated_clique_size(compatible: np.ndarray, target: int) -> int:
    """The authors' clique-size estimate with early stop (the descending pass of docs/method.md#penalty).

    For every node of degree ``>= target`` (ascending ids) a clique is grown inside its
    neighbours of degree ``>= target`` by repeatedly taking the candidate of highest degree and
    keeping only its neighbours whose degree reaches the best size found by earlier starts;
    returns as soon as a size ``>= target`` is seen, else the best size. Candidates are Python
    sets built in ascending id order and ties go to the first in set order, exactly as the
    authors' networkx-based code breaks them.

    The same sizes come out of exact shortcuts (docs/selection.md#the-paper-rule-at-scale):

    - A Python set of integers whose largest member is below its hash-table size holds every
      member in the slot of its own value, so it iterates in ascending order whatever the order
      of insertion. While the candidate set is such a set (large sets, early in a start), it is
      held as a bitset (a Python int) twice: by node id, and by rank in the order (degree
      descending, id ascending), in which the lowest set bit is the first candidate of highest
      degree in ascending order; a step is a few word-parallel ``&`` of the adjacency rows. The
      table size a set of ``m`` insertions has is read from the interpreter
      (:func:`_set_table_sizes`).
    - Once the set is smaller, it becomes the Python set the authors' code would hold (built by
      the same insertions in the same order). CPython's ``a & b`` iterates the smaller operand
      and inserts the members of the other in that order; when the chosen node's neighbour set
      would be the larger one, the same result comes from filtering the candidates against the
      node's adjacency row, without building the neighbour set.
    - A start stops as soon as its clique plus its remaining candidates cannot exceed the best
      size so far: its result could not change ``best``, the only thing the starts share.
    """
    n = len(compatible)
    table_sizes = _set_table_sizes(n).tolist()
    degree_array = compatible.sum(1)
    degree = degree_array.tolist()
    # rank order: degree descending, ties by ascending id (the first of highest degree in ascending order)
    order = np.lexsort((np.arange(n), -degree_array))
    order_list = order.tolist()
    rows = _row_bits(compatible)
    ranked_rows = _row_bits(compatible[:, order])  # bit r: the node of rank r
    row_bytes = compatible.tobytes()
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    rank = rank.tolist()
    # non-neighbour sets for the set phase, cached for the nodes with few of them
    max_excluded = max(64, n // 16)  # at most about n^2 / 16 cached members in all
    non_neighbour_sets: dict[int, set[int]] = {}

    def _non_neighbours(node: int) -> set[int]:
        found = non_neighbour_sets.get(node)
        if found is None:
            found = non_neighbour_sets[node] = set(np.flatnonzero(~compatible[node]).tolist())
        return found

    padding = _NegativePadding()
    reaches_target = degree_array >= target
    target_bits, ranked_target_bits = _mask_bits(reaches_target), _mask_bits(reaches_target[order])
    best = 0
    best_bits, ranked_best_bits = _mask_bits(degree_array >= best), _mask_bits(degree_array[order] >= best)
    for start, start_degree in enumerate(degree):
        if start_degree < target:
            continue
        mask = rows[start] & target_bits
        ranked = ranked_rows[start] & ranked_target_bits
        count = mask.bit_count()
        if 1 + count <= best:
            continue  # cannot beat best
        size = 1
        candidates = None  # the Python set, once the bitset no longer iterates like it
        table = table_sizes[count]  # the authors' set comprehension inserts the candidates in ascending order
        while count:
            if size + count <= best:
                break  # this start cannot beat best
            if table < n and mask >> table:  # a member beyond the table: no longer in ascending order
                candidates = set(_bit_ids(mask))  # inserted in ascending order, as here
                break
            low = ranked & -ranked
            node = order_list[low.bit_length() - 1]  # the first of highest degree in ascending order
            mask ^= 1 << node
            ranked ^= low
            count -= 1
            kept = rows[node] & best_bits  # the authors' {v in N(node): degree[v] >= best}
            n_kept = kept.bit_count()
            size += 1
            # n_kept > count: CPython iterates the candidates (ascending here); otherwise it iterates
            # the neighbour set, itself built in ascending order, which iterates so unless its
            # largest member lies beyond its table
            if n_kept <= count and n_kept and kept.bit_length() - 1 >= table_sizes[n_kept]:
                candidates = {v for v in set(_bit_ids(kept)) if mask >> v & 1}
            mask &= kept
            ranked &= ranked_rows[node] & ranked_best_bits
            count = mask.bit_count()
            table = table_sizes[count]
            if candidates is not None:
                break
        if candidates is not None:
            while candidates:
                if size + len(candidates) <= best:
                    break
                low = ranked & -ranked  # ranked: the candidates by rank, kept in step with the set
                node = order_list[low.bit_length() - 1]
                runner_up = ranked ^ low
                if runner_up and degree[order_list[(runner_up & -runner_up).bit_length() - 1]] == degree[node]:
                    # a tie: ``max`` takes the first of highest degree in set order, i.e. the first
                    # candidate in set order that is one of the tied (the lowest ranks of equal degree)
                    top_degree, tied = degree[node], {node}
                    while runner_up:
                        low = runner_up & -runner_up
                        other = order_list[low.bit_length() - 1]
                        if degree[other] != top_degree:
                            break
                        tied.add(other)
                        runner_up ^= low
                    node = next(filter(tied.__contains__, candidates))
                candidates.remove(node)
                ranked &= ~(1 << rank[node])
                kept = rows[node] & best_bits
                if kept.bit_count() > len(candidates):
                    # The candidates all reach target >= best, so kept's flags are the adjacency row's:
                    # the survivors are the candidates minus the node's non-neighbours, inserted into a
                    # fresh set in the candidates' order -- what CPython's ``a - b`` does, at C speed,
                    # when ``len(a) >> 2 <= len(b)`` (else it copies ``a``, another layout), hence the
                    # padding with negative numbers, which are never candidates.
                    excluded = _non_neighbours(node) if n - 1 - degree[node] <= max_excluded else None
                    if excluded is None:
                        flags = row_bytes[node * n : (node + 1) * n]
                        candidates = {v for v in candidates if flags[v]}
                    else:
                        shortfall = (len(candidates) >> 2) - len(excluded)
                        if shortfall > 0:
                            excluded = excluded | padding[shortfall]
                        candidates = candidates - excluded
                else:
                    candidates = candidates & set(_bit_ids(kept))
                ranked &= ranked_rows[node] & ranked_best_bits
                size += 1
        if size > best:
            best = size
            best_bits, ranked_best_bits = _mask_bits(degree_array >= best), _mask_bits(degree_array[order] >= best)
        if best >= target:
            break
    return best


def _clique_by_removal(compatible: np.ndarray, target: int) -> set:
    """The authors' approximate maximum clique with early stop (the ascending pass of docs/method.md#penalty).

    Independent sets of the complement graph (cliques of ``compatible``), found by Ramsey's
    recursion (:func:`_ramsey_r2`) and repeated removal of the complement's Ramsey clique; stops
    once one has ``target`` nodes and returns the first largest. The complement is held as
    networkx's ``complement(from_numpy_array(compatible))`` holds it: nodes and neighbours in
    ascending id order, and removing nodes keeps the order of the rest -- so the whole graph, and
    every subgraph the recursion reaches while its orders stay ascending, is a bitset of its nodes
    over the complement's adjacency rows (:func:`_ramsey_on_bits`).
    """
    incompatible = ~compatible
    np.fill_diagonal(incompatible, False)  # no self-loops
    rows = _row_bits(incompatible)
    remaining = (1 << len(compatible)) - 1
    table_sizes = _set_table_sizes(len(compatible)).tolist()
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(compatible) + 1000))  # the recursion is about one level per node deep
    try:
        solved: dict = {}  # the hash-order subgraphs solved so far (the removal loop meets them again)
        clique, best = _ramsey_on_bits(rows, remaining, table_sizes, solved)
        while remaining and len(best) < target:
            for node in clique:
                remaining &= ~(1 << node)
            clique, independent = _ramsey_on_bits(rows, remaining, table_sizes, solved)
            if len(independent) > len(best):
                best = independent
    finally:
        sys.setrecursionlimit(limit)
    return best


def _ramsey_on_bits(rows: list[int], nodes: int, table_sizes: list[int], solved: dict) -> tuple[set[int], set[int]]:
    """:func:`_ramsey_r2` of the subgraph of the adjacency ``rows`` on the bitset ``nodes`` (orders ascending).

    Same recursion, with the subgraphs as bitsets for as long as networkx would order them in
    ascending order: a subgraph with at least half its parent's nodes keeps the parent's order,
    and a smaller one iterates a Python set of its nodes, which is ascending when its largest
    node is below the set's hash-table size (``table_sizes[k]`` for ``k`` insertions; the same
    argument as in :func:`_estimated_clique_size`). A subgraph in any other order is built as
    networkx builds it (:func:`_bits_subgraph`) and handed to :func:`_ramsey_r2`, its result
    kept in ``solved`` under the bitset that decides it (see :func:`_ramsey_child`).
    """
    count = nodes.bit_count()
    if count <= 1:
        return set(_bit_ids(nodes)), set(_bit_ids(nodes))
    low = nodes & -nodes
    node = low.bit_length() - 1
    neighbours = nodes & rows[node]
    others = nodes ^ neighbours ^ low  # no self-loops: the node is not among its neighbours
    n_neighbours = neighbours.bit_count()
    clique_1, independent_1 = _ramsey_child(rows, neighbours, n_neighbours, count, table_sizes, solved,
                                            neighbours, lambda: _bit_ids(neighbours))
    clique_2, independent_2 = _ramsey_child(
        rows, others, count - 1 - n_neighbours, count, table_sizes, solved, ~nodes,
        # networkx >= 3.3's non_neighbors: a set difference of the node and neighbour views
        lambda: list(dict.fromkeys(_bit_ids(nodes)).keys() - dict.fromkeys(_bit_ids(neighbours)).keys() - {node}))
    clique_1.add(node)
    independent_2.add(node)
    return max(clique_1, clique_2, key=len), max(independent_1, independent_2, key=len)


def _ramsey_child(rows, keep, n_keep, parent_size, table_sizes, solved, key, node_list):
    """The recursion on the subgraph of the bitset ``keep`` (``n_keep`` nodes) of a parent in ascending order.

    ``node_list()`` is the node list networkx would pass to ``subgraph`` (its order decides a
    Python set's layout when the order is not ascending). ``key`` is a bitset that decides that
    list: the neighbours' bitset itself (listed ascending), or the complement ``~nodes`` of the
    parent's nodes for the non-neighbours (their list is a set difference over the parent's
    nodes and the first node's neighbours, both fixed by the parent's nodes); the two kinds of
    key never collide, one being non-negative and the other negative. A subgraph built in
    hash order is solved once per key: the recursion's result is a function of the subgraph
    dicts, which are a function of the key (the adjacency ``rows`` fixed).
    """
    if n_keep == 0:
        return set(), set()
    # networkx iterates the parent's order (ascending), or a set whose every node sits in the slot
    # of its own value (ascending too): the largest node, keep's highest bit, is below the table size
    if 2 * n_keep >= parent_size or keep.bit_length() - 1 < table_sizes[n_keep]:
        return _ramsey_on_bits(rows, keep, table_sizes, solved)
    known = solved.get(key)
    if known is None:
        clique, independent = _ramsey_r2(_bits_subgraph(rows, keep, set(node_list())))
        known = solved[key] = (tuple(clique), tuple(independent))
    return set(known[0]), set(known[1])  # fresh sets: the caller adds to them


def _bits_subgraph(rows: list[int], keep: int, keep_set: set[int]) -> dict[int, dict[int, None]]:
    """:func:`_induced_subgraph` of a parent held as bitsets (neighbours in ascending order), ``keep`` a minority."""
    induced: dict[int, dict[int, None]] = {v: {} for v in keep_set}
    pending = set(keep_set)
    for u in keep_set:
        pending.discard(u)
        later = [v for v in _bit_ids(rows[u] & keep) if v in pending]
        induced[u].update(dict.fromkeys(later))
        for v in later:
            induced[v][u] = None
    return induced


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
    if not any(graph.values()):
        # No edges: every split has no neighbours, so the recursion ends with the first node as its
        # clique (the first of equal-sized ones) and all nodes as its independent set.
        return {node}, set(graph)
    neighbours = graph[node]
    clique_1, independent_1 = _ramsey_r2(_induced_subgraph(graph, list(neighbours)))  # no self-loops
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
    # When u is visited its dict already holds its neighbours visited before it (in visit order);
    # the visit appends the others in the parent's order. So one pass over the parent's rows,
    # restricted to the nodes not yet visited, builds every dict in networkx's order.
    pending = set(keep)
    for u in order:
        pending.discard(u)
        later = [v for v in graph[u] if v in pending]
        induced[u].update(dict.fromkeys(later))
        for v in later:
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
    R: ArrayLike, n_selected: int, rule: Literal["paper", "consistent"] = "paper"
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
        whatever networkx is installed); about 0.15 s at 512 features and 2 s at 2048 on one
        CPU core (docs/selection.md#the-paper-rule-at-scale). Where the authors' code fails (first estimate already too small, a level beyond the largest
        value, ``n_selected < 2``), we choose: the ascent starts at step 0, a level beyond the
        values is ``inf``, and an ascent that finds no clique in its 100 steps gives ``inf``.

    Parameters
    ----------
    R : array-like of shape (n_features, n_features)
        Symmetric similarity with zero diagonal (:func:`feature_similarity`).
    n_selected : int
        Size of the mutually dissimilar set that must exist below the threshold.
    rule : {"paper", "consistent"}, default="paper"
        Which procedure picks tau* and scales the penalty (above); the default is
        :class:`QPMClassifier`'s (its ``redundancy`` parameter; evidence in docs/selection.md).

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
    >>> penalty, tau = redundancy_penalty(R, 2, rule="consistent")
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
    R = check_matrix(R, "R")
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
