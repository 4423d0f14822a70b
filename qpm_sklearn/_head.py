"""The DINO-QPM head and the record every sparse head is returned in.

:class:`HeadRecord` is a sparse head in plain numpy (selected channels, class weights,
bias, standardisation, how it was found); :func:`qpm_head` builds the DINO-QPM one from
the dense stage's training features (feature-class correlations, redundancy penalty,
quadratic program). The comparison systems' heads (:mod:`qpm_sklearn.baselines`) return
the same record. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .selection import feature_class_correlation, feature_similarity, redundancy_penalty, solve_selection


@dataclass(frozen=True, eq=False)
class HeadRecord:
    """A sparse head in plain numpy: what every head builder returns and the sparse stage trains under.

    ``logits = weight @ ((f[selected] − mean) / max(std, 1e-6)) + bias`` (docs/method.md#sparse-head).

    Attributes
    ----------
    selected : ndarray of shape (K,)
        Adapter channel ids of the head's inputs, ascending.
    weight : ndarray of shape (C, K)
        Class-feature weights (the 0/1 assignment for DINO-QPM).
    bias : ndarray of shape (C,)
    mean, std : ndarray of shape (K,)
        Standardisation of the selected features.
    info : dict
        How the head was found (method, timing, solver status ...).
    """

    selected: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    info: dict[str, Any]



def qpm_head(
    features, y_codes, n_classes, *, n_selected, n_per_class, redundancy, solver_options, seed, verbose,
    sample_weight=None, exclude=None, include=None, fixed=None, initial=None,
):
    """The DINO-QPM head from the dense training features (stage 2): A, R, penalty, quadratic program.

    ``exclude``, ``include``, ``fixed`` (class index -> channel ids) and per-class ``n_per_class``
    constrain the selection; ``initial`` warm-starts it (:func:`solve_selection`). The
    constraints, when any, are recorded in ``info["constraints"]``.
    """
    A = feature_class_correlation(features, y_codes, sample_weight=sample_weight)
    penalty, tau = redundancy_penalty(feature_similarity(A), n_selected, rule=redundancy)
    constraints = {name: value for name, value in (("exclude", exclude), ("include", include), ("fixed", fixed))
                   if value is not None}  # fmt: skip
    result = solve_selection(
        A,
        n_selected=n_selected,
        n_per_class=n_per_class,
        penalty=penalty,
        random_state=seed,
        verbose=verbose,
        **constraints,
        **({} if initial is None else {"initial": initial}),
        **solver_options,
    )
    selected = np.asarray(result.selected, dtype=np.int64)
    if sample_weight is None:  # population std (docs/method.md#sparse-head)
        mean, std = features.mean(axis=0, dtype=np.float64), features.std(axis=0, dtype=np.float64)
    else:  # weighted mean and population std: a weight of 2 is the sample counted twice
        mean = np.average(features, axis=0, weights=sample_weight)
        std = np.sqrt(np.average((features - mean) ** 2, axis=0, weights=sample_weight))
    return HeadRecord(
        selected=selected,
        weight=np.asarray(result.assignment, dtype=np.float32),
        bias=np.zeros(n_classes, dtype=np.float32),
        mean=mean[selected],
        std=std[selected],
        info=dict(result.as_dict(), tau=float(tau), redundancy=redundancy, method="qpm", **_constraint_record(
            n_per_class, constraints)),
    )


def _constraint_record(n_per_class, constraints) -> dict[str, Any]:
    """The selection's constraints as plain JSON values (nothing when there are none)."""
    if not constraints and np.ndim(n_per_class) == 0:
        return {}
    record: dict[str, Any] = {"n_per_class": np.asarray(n_per_class).tolist()}
    for name in ("exclude", "include"):
        record[name] = np.asarray(constraints.get(name, []), dtype=np.int64).tolist()
    record["fixed"] = [[int(c), np.asarray(ids, dtype=np.int64).tolist()] for c, ids in constraints.get("fixed", {}).items()]
    return {"constraints": record}
