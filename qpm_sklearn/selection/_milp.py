"""The exact path: the linearised selection problem as a MILP solved by HiGHS (``scipy.optimize.milp``).

Owns :func:`solve_milp`: products ``s_i s_j`` of penalised pairs linearised, the no-duplicate rule
added lazily (re-solve with the duplicated class pairs cut off until no two classes share a set).
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import time
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

from .._utils import logger
from ._problem import Problem


class MilpResult(NamedTuple):
    """What :func:`solve_milp` returns."""

    selected: np.ndarray | None
    """Selected features, or None when HiGHS ended without a selection."""
    upper_bound: float
    """HiGHS's dual bound (``inf`` when it has none)."""
    proven: bool
    """Whether the selection is proven optimal."""
    message: str
    """How HiGHS ended (its status text, e.g. ``"Time limit reached"`` or ``"Memory limit reached"``)."""


def _highs_status(message: str) -> str:
    """HiGHS's own status text inside scipy's message (scipy wraps codes it does not know)."""
    found = re.search(r"HiGHS Status \d+: ([^)]*)", message)
    return found.group(1) if found else message


def solve_milp(problem: Problem, *, time_limit, mip_rel_gap, verbose) -> MilpResult:
    """Linearised MILP with the no-duplicate rule added lazily per offending class pair.

    Variables: s (N), E (N*C, index f*C + c), y_ij for every penalised pair (y >= s_i + s_j - 1
    for positive penalties; y <= s_i, y <= s_j for negative ones), and per constrained class
    pair (c1, c2) continuous z_f <= min(E[f,c1] + E[f,c2], 2 - E[f,c1] - E[f,c2]) with
    sum z >= 2 (z_f reaches 1 only where exactly one class uses f, so the columns differ).
    Pairs found duplicated are constrained and the MILP solved again, until no duplicates
    remain. Constraints: the class rows take each class's own budget, and forced features
    (s = 1) and pinned edges (E = 1) get a lower bound of 1. Returns a :class:`MilpResult`; not
    proven means stopped by the time limit (or another of HiGHS's limits, which ``message`` names).
    """
    W, Q, k, m = problem.W, problem.Q, problem.class_budget, problem.m
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
            np.broadcast_to(k, (n_classes,)).astype(np.float64), np.broadcast_to(k, (n_classes,)).astype(np.float64))
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

    variable_lower = np.zeros(n_base)
    if problem.forced is not None:
        variable_lower[:n_features] = problem.forced
    if problem.pinned is not None:
        variable_lower[n_features : n_features + n_edges] = problem.pinned.ravel()

    def bounds(n_var):
        if not problem.constrained:
            return Bounds(0.0, 1.0)
        return Bounds(np.concatenate([variable_lower, np.zeros(n_var - n_base)]), np.ones(n_var))

    class_pairs: set[tuple[int, int]] = set()
    involved: set[int] = set()
    upper_bound, start = math.inf, time.perf_counter()
    while True:
        cost, integrality, constraint = build(sorted(class_pairs))
        # HiGHS's own log goes to stdout from C; at verbose its outcome goes through logging.
        options = {"disp": False, "mip_rel_gap": mip_rel_gap}
        if time_limit is not None:
            options["time_limit"] = max(time_limit - (time.perf_counter() - start), 1e-3)
        result = milp(cost, integrality=integrality, bounds=bounds(cost.size), constraints=constraint,
                      options=options)
        logger.log(logging.INFO if verbose else logging.DEBUG, "exact selection (HiGHS): status %s, %s, gap %s",
                   result.status, result.message, getattr(result, "mip_gap", None))  # fmt: skip
        dual_bound = getattr(result, "mip_dual_bound", None)
        if dual_bound is not None and np.isfinite(dual_bound):
            upper_bound = min(upper_bound, -float(dual_bound))  # a relaxation: valid for the full problem
        message = _highs_status(str(result.message))
        if result.x is None:
            return MilpResult(None, upper_bound, False, message)
        S = np.flatnonzero(result.x[:n_features] > 0.5)
        if result.status != 0:
            return MilpResult(S, upper_bound, False, message)
        E = result.x[n_features : n_features + n_edges].reshape(n_features, n_classes) > 0.5
        groups: dict[bytes, list[int]] = {}
        for c in range(n_classes):
            groups.setdefault(E[:, c].tobytes(), []).append(c)
        if len(groups) == n_classes:
            return MilpResult(S, upper_bound, True, message)
        for group in groups.values():
            class_pairs.update(itertools.combinations(group, 2))
            involved.update(group if len(group) > 1 else [])
        if len(involved) <= 32:  # classes that collided once tend to collide again
            class_pairs.update(itertools.combinations(sorted(involved), 2))
        logger.info("exact selection: %d class pairs kept distinct, solving again", len(class_pairs))
