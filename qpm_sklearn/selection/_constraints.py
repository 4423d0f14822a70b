"""Constraints on the selection: excluded, included and pinned features, per-class budgets.

Owns their validation (every error names the argument and the constraint that cannot be met)
and their translation into the solvers' terms (:func:`constrained_problem`): excluded features
are removed from the instance (so every solver part honours them by construction) and the
others become fields of :class:`~qpm_sklearn.selection._problem.Problem` (``budgets``,
``forced``, ``pinned``) that the relaxation, the rounding and repair, the searches, the bounds
and the MILP read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from .._utils import check_int as _check_int
from ._problem import Problem, assignment_scale, build_problem, check_matrix


def class_budgets(n_per_class, n_classes: int, n_selected: int):
    """``n_per_class`` as an int (one budget for all) or an int array of every class's own budget.

    Accepts an int, an array-like of ``n_classes`` ints, or a mapping ``{class index: k}`` that
    names every class. An array whose budgets are all equal becomes that int, so the
    arithmetic is the same as with one budget.
    """
    if isinstance(n_per_class, Mapping):
        keys = list(n_per_class)
        bad = [key for key in keys if isinstance(key, bool) or not isinstance(key, (int, np.integer))
               or not 0 <= key < n_classes]
        if bad:
            raise ValueError(f"n_per_class maps class indices in [0, {n_classes}); got keys {bad}.")
        missing = sorted(set(range(n_classes)) - {int(key) for key in keys})
        if missing:
            raise ValueError(f"n_per_class as a mapping must give every class a budget; classes {missing} have none.")
        n_per_class = [n_per_class[c] for c in range(n_classes)]
    if np.ndim(n_per_class) == 0:
        _check_int(n_per_class, "n_per_class", 1, n_selected)
        return int(n_per_class)
    budgets = np.asarray(n_per_class)
    if budgets.shape != (n_classes,):
        raise ValueError(f"n_per_class must be an int or hold one budget per class ({n_classes}); got shape {budgets.shape}.")
    for c, value in enumerate(budgets.tolist()):
        _check_int(value, f"n_per_class[{c}]", 1, n_selected)
    budgets = budgets.astype(np.int64)
    if np.all(budgets == budgets[0]):
        return int(budgets[0])
    return budgets


def _feature_ids(value, name: str, n_features: int) -> np.ndarray:
    """Sorted unique feature ids in [0, n_features) (ValueError / TypeError naming ``name`` otherwise)."""
    if value is None:
        return np.zeros(0, dtype=np.intp)
    ids = np.asarray(value)
    if ids.ndim == 0:
        ids = ids.reshape(1)
    if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise TypeError(f"{name} must be a list of int feature ids; got {value!r}.")
    outside = sorted({int(i) for i in ids if not 0 <= i < n_features})
    if outside:
        raise ValueError(f"{name} holds feature ids {outside} outside the {n_features} features [0, {n_features}).")
    return np.unique(ids.astype(np.intp))


@dataclass
class Constraints:
    """The checked constraints of one solve, in the original feature ids."""

    exclude: np.ndarray
    include: np.ndarray
    fixed: dict[int, np.ndarray]
    budgets: int | np.ndarray  # int: one budget for all

    @property
    def active(self) -> bool:
        return bool(self.exclude.size or self.include.size or self.fixed or np.ndim(self.budgets))

    def budget(self, c: int) -> int:
        return int(np.asarray(self.budgets).reshape(-1)[0 if np.ndim(self.budgets) == 0 else c])


def check_constraints(
    n_features: int,
    n_classes: int,
    n_selected: int,
    n_per_class: int | ArrayLike | Mapping[int, int],
    exclude: ArrayLike | None = None,
    include: ArrayLike | None = None,
    fixed: Mapping[int, ArrayLike] | None = None,
) -> Constraints:
    """Validate the constraints of a solve; raise ValueError naming the one that cannot be met.

    Checks the ids, that no feature is both required and excluded, that the required features
    fit in ``n_selected`` and every class's pinned ones in its budget, and the counting
    conditions for distinct rows: per budget k, at most ``comb(n_selected, k)`` classes; classes
    pinned to the same features need enough distinct completions.

    Parameters
    ----------
    n_features, n_classes : int
        Size of the instance (rows and columns of ``A``).
    n_selected : int
        Features selected in all.
    n_per_class : int, array-like of shape (n_classes,) or mapping class index -> int
        Every class's budget.
    exclude, include : array-like of int, optional
        Features that must not / must be selected.
    fixed : mapping class index -> array-like of int, optional
        Features each listed class must use.

    Returns
    -------
    Constraints
        The checked constraints (feature ids as sorted arrays, the per-class budgets).
    """
    _check_int(n_selected, "n_selected", 1, n_features)
    budgets = class_budgets(n_per_class, n_classes, n_selected)
    exclude = _feature_ids(exclude, "exclude", n_features)
    include = _feature_ids(include, "include", n_features)
    pinned: dict[int, np.ndarray] = {}
    if fixed is not None:
        if not isinstance(fixed, Mapping):
            raise TypeError(f"fixed must be a mapping class -> feature ids; got {type(fixed).__name__}.")
        for c, features in fixed.items():
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < n_classes:
                raise ValueError(f"fixed maps class indices in [0, {n_classes}); got key {c!r}.")
            ids = _feature_ids(features, f"fixed[{c}]", n_features)
            if ids.size:
                pinned[int(c)] = ids
    both = np.intersect1d(include, exclude)
    if both.size:
        raise ValueError(f"include and exclude contradict each other: features {both.tolist()} are in both.")
    for c, ids in pinned.items():
        clash = np.intersect1d(ids, exclude)
        if clash.size:
            raise ValueError(f"fixed[{c}] pins features {clash.tolist()} that exclude removes.")
    if n_features - exclude.size < n_selected:
        raise ValueError(
            f"exclude removes {exclude.size} of {n_features} features, leaving fewer than n_selected={n_selected}."
        )
    required = np.union1d(include, np.concatenate([np.zeros(0, np.intp), *pinned.values()]))
    if required.size > n_selected:
        raise ValueError(
            f"include and fixed require {required.size} features ({required.tolist()}), more than n_selected={n_selected}."
        )
    constraints = Constraints(exclude=exclude, include=include, fixed=pinned, budgets=budgets)
    for c, ids in pinned.items():
        if ids.size > constraints.budget(c):
            raise ValueError(f"fixed[{c}] pins {ids.size} features, more than class {c}'s budget n_per_class={constraints.budget(c)}.")
    per_budget: dict[int, int] = {}
    per_pins: dict[tuple, int] = {}
    for c in range(n_classes):
        k = constraints.budget(c)
        per_budget[k] = per_budget.get(k, 0) + 1
        pins = tuple(pinned.get(c, np.zeros(0, np.intp)).tolist())
        per_pins[(k, pins)] = per_pins.get((k, pins), 0) + 1
    for k, count in per_budget.items():
        if math.comb(n_selected, k) < count:
            raise ValueError(
                f"n_per_class: {count} classes with a budget of {k} need distinct sets, but n_selected={n_selected} "
                f"features give only {math.comb(n_selected, k)}."
            )
    for (k, pins), count in per_pins.items():
        if pins and math.comb(n_selected - len(pins), k - len(pins)) < count:
            raise ValueError(
                f"fixed pins {count} classes with a budget of {k} to the same features {list(pins)}; they cannot all "
                f"get distinct sets from n_selected={n_selected} features."
            )
    return constraints


@dataclass
class ReducedInstance:
    """The problem on the features that remain after ``exclude``, and the way back."""

    problem: Problem
    kept: np.ndarray  # original id of every feature of the reduced problem

    def to_reduced(self, ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.kept, ids)


def constrained_problem(A, n_selected, penalty, bias, constraints: Constraints) -> ReducedInstance:
    """The instance in the solvers' terms: excluded features removed, the others as Problem fields."""
    A = check_matrix(A, "A")
    n_features, n_classes = A.shape
    kept = np.setdiff1d(np.arange(n_features), constraints.exclude)
    if penalty is not None:
        penalty = check_matrix(penalty, "penalty")
        if penalty.shape != (n_features, n_features):
            raise ValueError(f"penalty must have shape ({n_features}, {n_features}); got {penalty.shape}.")
        penalty = penalty[np.ix_(kept, kept)]
    if bias is not None:
        bias = check_matrix(bias, "bias", ndim=1)
        if bias.shape != (n_features,):
            raise ValueError(f"bias must have shape ({n_features},); got {bias.shape}.")
        bias = bias[kept]
    budgets = constraints.budgets
    largest = int(np.max(budgets))
    problem = build_problem(A[kept], n_selected, largest, penalty, bias, check_budget=False)
    if np.ndim(budgets):
        problem.W = assignment_scale(budgets, n_classes) * A[kept]
        problem.budgets = np.asarray(budgets, dtype=np.int64)
    instance = ReducedInstance(problem=problem, kept=kept)
    forced = np.zeros(kept.size, dtype=bool)
    forced[instance.to_reduced(constraints.include)] = True
    if constraints.fixed:
        pinned = np.zeros((kept.size, n_classes), dtype=bool)
        for c, ids in constraints.fixed.items():
            pinned[instance.to_reduced(ids), c] = True
        problem.pinned = pinned
        forced |= pinned.any(1)
    if forced.any():
        problem.forced = forced
    return instance
