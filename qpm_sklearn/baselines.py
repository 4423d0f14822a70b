"""The sparse heads of the paper's comparison systems DINO-SLDD and DINO-QSENN (docs/baselines.md).

Plain numpy: the classifier trains the networks and only calls these functions between stages.

* SLDD  (``QPMClassifier(selection="sldd")``): dense features → :func:`sldd_head` (90/10 split,
  group-elastic-net selection, elastic-net path on the standardised selected features,
  :func:`sldd_sparsify`) → one fine-tuning run with μ/σ trainable, W and bias frozen.
* QSENN (``selection="qsenn"``): dense features → :func:`qsenn_head` (selection, then
  :func:`qsenn_refit`) → fine-tune; then three more rounds of [features of the selected channels
  from the fine-tuned model → :func:`qsenn_refit` → fine-tune].

Both keep the real-valued head weights: ``weight`` (C, K) and ``bias`` (C,) act on
``(f_S − mean)/std`` with ``mean``/``std`` the training statistics of the selected features.
Every head builder here -- and the DINO-QPM selection, :func:`qpm_sklearn._head.qpm_head` --
returns one :class:`HeadRecord` (defined beside that head).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from sklearn.utils import check_random_state

from ._head import HeadRecord
from ._utils import check_class_codes, check_finite_array, check_int
from .glm import elastic_net_path, group_elastic_net_selection, max_regularisation, standardisation

__all__ = [
    "HeadRecord",
    "qsenn_head",
    "qsenn_quantise",
    "qsenn_refit",
    "sldd_head",
    "sldd_sparsify",
    "sparse_head",
]

#: SLDD step 4 (docs/baselines.md): the chosen path point has at most ``n_per_class / SLDD_DENSITY_FACTOR`` non-zeros per class.
SLDD_DENSITY_FACTOR = 0.5


def sldd_sparsify(
    path: Sequence[Mapping[str, Any]], n_per_class: int, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sparse SLDD head from an elastic-net path (docs/baselines.md#dino-sldd-selectionsldd, step 4).

    1. Sparsity of a point = mean non-zeros per class, ``nnz(W)/C``. Pick the **densest** point with
       sparsity ≤ ``n_per_class/0.5`` (ties: the first, i.e. most regularised, one).
    2. Special case: if that is index 0 and the sparsities sum to more than 1, index 0 is excluded
       and step 1 repeats over the other points. When no eligible point with non-zeros satisfies
       the limit (e.g. the path jumps from all-zero points straight past it), the sparsest eligible
       point with non-zeros is taken instead, with a ``RuntimeWarning`` (step 3 enforces the
       budget anyway) — the authors' code is silent on this case.
    3. Keep the ``C·n_per_class`` largest ``|w|`` of that point **globally** (not per class; ties in
       row-major order), zero the rest. Kept weights stay real-valued and signed; the bias is the
       point's bias.

    Parameters
    ----------
    path : sequence of dict
        Path points with ``weight`` (C, K) and ``bias`` (C,), most regularised first
        (:func:`qpm_sklearn.glm.elastic_net_path`).
    n_per_class : int
        Features per class ``k``.
    n_classes : int
        Number of classes ``C`` (rows of every weight).

    Returns
    -------
    weight : ndarray of shape (C, K)
    bias : ndarray of shape (C,)

    Examples
    --------
    >>> import numpy as np
    >>> path = [{"weight": np.zeros((2, 3)), "bias": np.zeros(2)},
    ...         {"weight": np.array([[3.0, -1.0, 0.5], [0.0, -2.0, 0.0]]), "bias": np.array([0.1, -0.1])}]
    >>> w, b = sldd_sparsify(path, n_per_class=1, n_classes=2)
    >>> w.tolist(), b.tolist()
    ([[3.0, 0.0, 0.0], [0.0, -2.0, 0.0]], [0.1, -0.1])
    """
    if len(path) == 0:
        raise ValueError("path must hold at least one point; got an empty path.")
    weights = [np.asarray(point["weight"], dtype=np.float64) for point in path]
    if any(w.ndim != 2 or w.shape[0] != n_classes or w.shape != weights[0].shape for w in weights):
        raise ValueError(
            f"every path weight must have shape (n_classes={n_classes}, n_features) and the same shape; "
            f"got shapes {sorted({w.shape for w in weights})}."
        )
    n_per_class = check_int(n_per_class, "n_per_class", 1, weights[0].shape[1])
    sparsity = np.array([np.count_nonzero(w) / n_classes for w in weights])
    limit = n_per_class / SLDD_DENSITY_FACTOR
    pool = np.ones(len(weights), dtype=bool)
    index = _densest_within(sparsity, pool, limit)
    if index == 0 and sparsity.sum() > 1:
        pool[0] = False
        index = _densest_within(sparsity, pool, limit)
    if index is None or (sparsity[index] == 0 and (sparsity[pool] > 0).any()):
        # Nothing with non-zeros fits the limit: take the sparsest such point; pruning keeps C·k.
        index = int(np.argmin(np.where(pool & (sparsity > 0), sparsity, np.inf)))
        warnings.warn(
            f"sldd_sparsify: no eligible path point with non-zeros has at most {limit:g} non-zeros per "
            f"class; the sparsest one (index {index}, {sparsity[index]:.3g} per class) is pruned instead.",
            RuntimeWarning,
            stacklevel=2,
        )
    if sparsity[index] == 0:
        warnings.warn(
            "sldd_sparsify: the chosen path point is all zero; the head has no weights.", RuntimeWarning, stacklevel=2
        )

    weight = weights[index]
    flat = np.abs(weight).ravel()
    keep = np.argsort(-flat, kind="stable")[: n_classes * n_per_class]
    keep = keep[flat[keep] > 0]
    pruned = np.zeros(flat.size)
    pruned[keep] = weight.ravel()[keep]
    return pruned.reshape(weight.shape), np.asarray(path[index]["bias"], dtype=np.float64).copy()


def _densest_within(sparsity: np.ndarray, pool: np.ndarray, limit: float) -> int | None:
    """Index of the densest pooled point with sparsity ≤ ``limit`` (first on ties), or None."""
    eligible = pool & (sparsity <= limit)
    return int(np.argmax(np.where(eligible, sparsity, -np.inf))) if eligible.any() else None


def qsenn_quantise(weight: npt.ArrayLike, bias: npt.ArrayLike, n_per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Quantised Q-SENN head (docs/baselines.md#dino-qsenn-selectionqsenn) with the authors' sign bug fixed.

    * Threshold = midpoint between the ``(k·C)``-th and ``(k·C + 1)``-th largest ``|w|`` (a missing
      ``(k·C + 1)``-th counts as 0); entries with ``|w| >`` threshold are kept, so at most ``k·C``
      (fewer on ties at the threshold or when fewer entries are non-zero).
    * Kept positive entries → ``+a``, kept negative → ``−a``, the rest → 0, with ``a`` = mean ``|w|``
      of the kept entries. The authors' code maps an entry equal to ``−max|w|`` to ``+a``; here it
      maps to ``−a`` like every other negative entry.
    * Bias: ``b_c = B − d_c·2B/max_c d_c`` clipped to ``[−B, B]``, ``B = max|bias|``,
      ``d_c = (#pos_c − #neg_c) − min_c(#pos − #neg)``. When all ``d_c`` are equal (the authors'
      division by zero) every ``b_c = 0``: a bias shared by all classes does not change any
      prediction or probability, and 0 is the midpoint of ``[−B, B]``.

    Parameters
    ----------
    weight : array-like of shape (C, K)
    bias : array-like of shape (C,)
    n_per_class : int
        Features per class ``k``; ``k·C`` entries are kept.

    Returns
    -------
    weight_q : ndarray of shape (C, K)
        Values in ``{−a, 0, +a}``.
    bias_q : ndarray of shape (C,)

    Examples
    --------
    >>> import numpy as np
    >>> w, b = qsenn_quantise(np.array([[4.0, -1.0], [0.5, -2.0]]), np.array([0.3, -0.6]), n_per_class=1)
    >>> w.tolist(), b.tolist()
    ([[3.0, 0.0], [0.0, -3.0]], [-0.6, 0.6])
    """
    weight = np.asarray(weight, dtype=np.float64)
    bias = np.asarray(bias, dtype=np.float64)
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise ValueError(
            f"weight must be (C, K) and bias (C,); got weight shape {weight.shape} and bias shape {bias.shape}."
        )
    if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
        raise ValueError("weight and bias must be finite.")
    n_per_class = check_int(n_per_class, "n_per_class", 1, weight.shape[1])
    n_keep = n_per_class * weight.shape[0]
    magnitudes = np.sort(np.abs(weight).ravel())[::-1]
    upper = magnitudes[n_keep - 1] if n_keep <= magnitudes.size else 0.0
    lower = magnitudes[n_keep] if n_keep < magnitudes.size else 0.0
    kept = np.abs(weight) > (upper + lower) / 2
    level = float(np.abs(weight[kept]).mean()) if kept.any() else 0.0
    weight_q = np.where(kept, np.sign(weight) * level, 0.0)

    balance = (weight_q > 0).sum(axis=1) - (weight_q < 0).sum(axis=1)
    d = (balance - balance.min()).astype(np.float64)
    bound = float(np.abs(bias).max()) if bias.size else 0.0
    if d.max() == 0:
        bias_q = np.zeros_like(bias)
    else:
        bias_q = np.clip(bound - d * (2.0 * bound / d.max()), -bound, bound)
    return weight_q, bias_q


def _train_split(n_samples: int, validation_fraction: float, random_state: int | np.random.RandomState | None) -> np.ndarray:
    """Sorted indices of the seeded training part of the 90/10 split (docs/baselines.md#dino-sldd-selectionsldd, step 1)."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1); got {validation_fraction!r}.")
    n_val = int(np.floor(validation_fraction * n_samples))
    if n_samples - n_val < 2:
        raise ValueError(f"the training split must keep at least 2 samples; got {n_samples} samples in total.")
    order = check_random_state(random_state).permutation(n_samples)
    return np.sort(order[n_val:])


def _features_and_codes(features: npt.ArrayLike, y: npt.ArrayLike) -> tuple[np.ndarray, npt.NDArray[np.int64]]:
    """``features`` as a finite float64 (n, K) array and ``y`` as int64 class codes of length n."""
    F = check_finite_array(features, "features", ndim=2)
    return F, check_class_codes(y, F.shape[0])


def _path_on_standardised(
    F: np.ndarray, y: np.ndarray, n_classes: int, path_options: Mapping[str, Any] | None
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Training statistics of ``F`` and the glm_saga path on ``(F − mean)/std`` (docs/baselines.md#dino-sldd-selectionsldd, step 3).

    λ_max is the authors' value: ``max|F_rawᵀ(Y − Ȳ)|/n / α`` on the raw features.
    """
    options = {"l1_ratio": 0.99, **(path_options or {})}
    mean, std = standardisation(F)
    lam_max = max_regularisation(F, y, group=False) / options["l1_ratio"]
    path = elastic_net_path((F - mean) / std, y, lam_max=lam_max, n_classes=n_classes, **options)
    return mean, std, path


def sldd_head(
    features: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    n_selected: int = 50,
    n_per_class: int = 5,
    n_classes: int | None = None,
    validation_fraction: float = 0.1,
    random_state: int | np.random.RandomState | None = None,
    selection_options: Mapping[str, Any] | None = None,
    path_options: Mapping[str, Any] | None = None,
    verbose: int | bool = False,
) -> HeadRecord:
    """The DINO-SLDD sparse head from the dense training features (docs/baselines.md#dino-sldd-selectionsldd, steps 1–4).

    Steps: seeded split keeping ``1 − validation_fraction`` of the samples (the authors' validation part
    is only logged, never used, so it is dropped); :func:`~qpm_sklearn.glm.group_elastic_net_selection`
    on the raw features of that part; the elastic-net path on its standardised selected features;
    :func:`sldd_sparsify`.

    Parameters
    ----------
    features : array-like of shape (n_samples, n_features)
        Dense-model pooled training features ``f`` (eval mode).
    y : array-like of shape (n_samples,)
        Class codes 0..C-1.
    n_selected, n_per_class : int, default=50, 5
        Features kept in total and per class.
    n_classes : int or None, default=None
        ``C`` (default ``max(y) + 1``).
    validation_fraction : float, default=0.1
        Share held out by the authors' 90/10 split (0 uses every sample).
    random_state : int, RandomState or None
        Seeds the split (the solvers are deterministic).
    selection_options, path_options : dict or None
        Extra keywords for ``group_elastic_net_selection`` / ``elastic_net_path``.
    verbose : bool, default=False
        Progress bars.

    Returns
    -------
    HeadRecord
        ``selected`` (n_selected,) sorted channel ids, ``weight`` (C, n_selected), ``bias`` (C,),
        ``mean``/``std`` (n_selected,) training statistics of the selected features, ``info``.
    """
    start = time.perf_counter()
    F, y = _features_and_codes(features, y)
    n_classes = int(y.max()) + 1 if n_classes is None else int(n_classes)
    train = _train_split(len(y), validation_fraction, random_state)
    selected = group_elastic_net_selection(
        F[train], y[train], n_selected, n_classes=n_classes, verbose=verbose, **(selection_options or {})
    )
    mean, std, path = _path_on_standardised(F[train][:, selected], y[train], n_classes, path_options)
    weight, bias = sldd_sparsify(path, n_per_class, n_classes)
    return HeadRecord(selected=selected, weight=weight, bias=bias, mean=mean, std=std,
                      info=_info("sldd", weight, start, path))  # fmt: skip


def qsenn_refit(
    features: npt.ArrayLike,
    y: npt.ArrayLike,
    n_per_class: int = 5,
    *,
    n_classes: int | None = None,
    validation_fraction: float = 0.1,
    random_state: int | np.random.RandomState | None = None,
    path_options: Mapping[str, Any] | None = None,
    selected: npt.ArrayLike | None = None,
    verbose: int | bool = False,
) -> HeadRecord:
    """One Q-SENN head refit on the current selected features (docs/baselines.md#dino-qsenn-selectionqsenn).

    Seeded split as in :func:`sldd_head` (pass the same ``random_state`` every iteration: the
    authors split with the run seed), training mean/std, elastic-net path on the standardised
    features, its least regularised non-zero λ point (second to last), :func:`qsenn_quantise`.

    Parameters
    ----------
    features : array-like of shape (n_samples, n_selected)
        Pooled training features of the selected channels from the *current* model.
    y, n_per_class, n_classes, validation_fraction, random_state, path_options, verbose
        As in :func:`sldd_head`.
    selected : array-like of shape (n_selected,), default=None
        The adapter channel ids of the columns of ``features`` (default ``0 … n_selected-1``).

    Returns
    -------
    HeadRecord
        ``weight`` (C, n_selected) in ``{−a, 0, a}``, ``bias`` (C,), ``mean``/``std``, ``info``.
    """
    start = time.perf_counter()
    F, y = _features_and_codes(features, y)
    n_classes = int(y.max()) + 1 if n_classes is None else int(n_classes)
    train = _train_split(len(y), validation_fraction, random_state)
    options = {"verbose": verbose, **(path_options or {})}
    mean, std, path = _path_on_standardised(F[train], y[train], n_classes, options)
    point = path[-2] if len(path) > 1 else path[-1]
    weight, bias = qsenn_quantise(point["weight"], point["bias"], n_per_class)
    selected = np.arange(F.shape[1]) if selected is None else np.asarray(selected, dtype=np.int64)
    if selected.shape != (F.shape[1],):
        raise ValueError(f"selected must have shape ({F.shape[1]},), one id per feature column; got {selected.shape}.")
    return HeadRecord(selected=selected, weight=weight, bias=bias, mean=mean, std=std,
                      info=_info("qsenn", weight, start, path))  # fmt: skip


def qsenn_head(
    features: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    n_selected: int = 50,
    n_per_class: int = 5,
    n_classes: int | None = None,
    validation_fraction: float = 0.1,
    random_state: int | np.random.RandomState | None = None,
    selection_options: Mapping[str, Any] | None = None,
    path_options: Mapping[str, Any] | None = None,
    verbose: int | bool = False,
) -> HeadRecord:
    """Q-SENN iteration 0 from the dense features: selection (as SLDD) then :func:`qsenn_refit`.

    Parameters and returned keys as in :func:`sldd_head`.
    """
    start = time.perf_counter()
    F, y = _features_and_codes(features, y)
    n_classes = int(y.max()) + 1 if n_classes is None else int(n_classes)
    if not isinstance(random_state, (int, np.integer)):  # one split for the selection and the refit
        random_state = int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
    train = _train_split(len(y), validation_fraction, random_state)
    selected = group_elastic_net_selection(
        F[train], y[train], n_selected, n_classes=n_classes, verbose=verbose, **(selection_options or {})
    )
    head = qsenn_refit(
        F[:, selected], y, n_per_class, n_classes=n_classes, validation_fraction=validation_fraction,
        random_state=random_state, path_options=path_options, selected=selected, verbose=verbose,
    )  # fmt: skip
    return replace(head, info=dict(head.info, seconds=round(time.perf_counter() - start, 3)))


def sparse_head(
    method: Literal["sldd", "qsenn"], features: npt.ArrayLike, y: npt.ArrayLike, **kwargs: Any
) -> HeadRecord:
    """Dispatch ``method`` ("sldd" or "qsenn") to :func:`sldd_head` / :func:`qsenn_head`."""
    heads: dict[str, Callable[..., HeadRecord]] = {"sldd": sldd_head, "qsenn": qsenn_head}
    if method not in heads:
        raise ValueError(f"method must be one of {sorted(heads)}; got {method!r}.")
    return heads[method](features, y, **kwargs)


def _info(method: str, weight: np.ndarray, start: float, path: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    per_class = np.count_nonzero(weight, axis=1)
    return {
        "method": method,
        "seconds": round(time.perf_counter() - start, 3),
        "n_nonzero": int(per_class.sum()),
        "min_per_class": int(per_class.min()),
        "max_per_class": int(per_class.max()),
        "path_points": len(path),
        "path_unconverged": int(sum(not point["converged"] for point in path[:-1])),
    }
