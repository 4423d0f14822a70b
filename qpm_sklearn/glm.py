"""Sparse multinomial logistic regression for the SLDD / Q-SENN baselines (docs/baselines.md).

Two full-batch float64 numpy solvers sharing one loss/gradient kernel:

* :func:`group_elastic_net_selection` — SLDD step 2 (docs/baselines.md), the greedy group-elastic-net walk that picks
  the features of DINO-SLDD / DINO-QSENN;
* :func:`elastic_net_path` — SLDD step 3, the elastic-net regularisation path that ``glm_saga``
  computes (100 log-spaced λ plus λ = 0).

The authors solve both with proximal SAGA (``glm_saga``). Here the same convex objectives are
minimised by full-batch solvers stopped on an optimality certificate: the selection walk by FISTA
proximal-gradient steps (its one-new-feature-per-step rule is a rule about proximal steps), the path
by L-BFGS-B on the split ``W = P − N``, ``P, N ≥ 0`` (warm-started along the path; at small λ it
needs 20–30 times fewer gradient evaluations than FISTA for the same accuracy). docs/baselines.md explains why
the optimum — the only thing the baselines read — is the same.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import numpy.typing as npt

from .exceptions import ConvergenceWarning
from ._utils import check_class_codes, check_finite_array, check_int, logger, progress

__all__ = ["elastic_net_path", "group_elastic_net_selection", "lambda_path", "max_regularisation"]


def _check_problem(
    F: npt.ArrayLike, y: npt.ArrayLike, name: str = "F", n_classes: int | None = None
) -> tuple[np.ndarray, npt.NDArray[np.int64], np.ndarray]:
    """Validate ``(F, y)``; return float64 features, int labels and the one-hot matrix.

    ``n_classes`` (default ``max(y) + 1``) fixes the number of classes when a split lacks some.
    """
    F = check_finite_array(F, name, ndim=2)
    y = check_class_codes(y, F.shape[0])
    if n_classes is None:
        n_classes = int(y.max()) + 1
    elif int(n_classes) <= int(y.max()):
        raise ValueError(f"n_classes must exceed the largest class code {int(y.max())}; got {n_classes!r}.")
    n_classes = int(n_classes)
    if n_classes < 2:
        raise ValueError(f"y must contain at least 2 classes; got {n_classes}.")
    Y = np.zeros((F.shape[0], n_classes))
    Y[np.arange(F.shape[0]), y] = 1.0
    return F, y.astype(np.int64), Y


def standardisation(F: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Training mean and population std of ``F`` (std clamped at 1e-5, SLDD step 1)."""
    F = np.asarray(F, dtype=np.float64)
    return F.mean(axis=0), np.maximum(F.std(axis=0), 1e-5)


def max_regularisation(F: npt.ArrayLike, y: npt.ArrayLike, *, group: bool) -> float:
    """``glm_saga``'s ``max_reg``: the largest (group) entry of ``Fᵀ(Y − Ȳ)/n``.

    With ``group=True`` the L2 norm over classes is taken per feature (``maxreg_group``), else the
    largest absolute entry. On standardised features divided by α this is the smallest λ whose
    elastic-net solution is all zero; the authors evaluate it on the *raw* features (docs/baselines.md#dino-sldd-selectionsldd, step 2).
    """
    F, _, Y = _check_problem(F, y)
    return _max_reg(F, Y, group=group)


def _max_reg(F: np.ndarray, Y: np.ndarray, *, group: bool) -> float:
    inner = F.T @ (Y - Y.mean(axis=0)) / F.shape[0]  # (K, C)
    return float(np.linalg.norm(inner, axis=1).max() if group else np.abs(inner).max())


def lambda_path(lam_max: float, n_lambdas: int = 100, lam_min_ratio: float = 1e-3) -> np.ndarray:
    """``n_lambdas`` log-spaced values from ``lam_max`` down to ``lam_min_ratio·lam_max``, then 0."""
    lam_max = max(float(lam_max), np.finfo(np.float64).tiny)
    lams = np.logspace(np.log10(lam_max), np.log10(lam_max * lam_min_ratio), int(n_lambdas))
    return np.append(lams, 0.0)


def _loss_and_grad(X, y, W, b):
    """Mean cross-entropy of ``softmax(X Wᵀ + b)`` and its gradients ``(C,K)``, ``(C,)``."""
    rows = np.arange(len(y))
    logits = X @ W.T  # (n, C); reused in place: this is the solvers' inner loop
    logits += b
    logits -= logits.max(axis=1, keepdims=True)
    picked = logits[rows, y]
    np.exp(logits, out=logits)
    total = logits.sum(axis=1)
    loss = float(np.mean(np.log(total) - picked))
    logits /= (total * len(y))[:, None]
    logits[rows, y] -= 1.0 / len(y)  # (softmax − one-hot)/n
    return loss, logits.T @ X, logits.sum(axis=0)


def _lipschitz(X) -> float:
    """Lipschitz constant of the mean-CE gradient in ``(W, b)``: ½·λ_max([X 1]ᵀ[X 1]/n)."""
    X1 = np.hstack([X, np.ones((X.shape[0], 1))])
    return 0.5 * float(np.linalg.eigvalsh(X1.T @ X1 / X.shape[0])[-1])


def _group_prox(V, thr, shrink):
    """Prox of ``t·λ(α Σ_j‖V[:, j]‖ + (1−α)/2‖V‖²)``: column soft threshold ``thr``, then ``shrink``."""
    norms = np.linalg.norm(V, axis=0)
    return V * (np.maximum(1.0 - thr / np.maximum(norms, np.finfo(np.float64).tiny), 0.0) * shrink)


def _restricted_group_fista(X, y, W, b, *, lam, l1_ratio, step, max_epochs, tol, allowed):
    """Minimise mean CE + λ(α Σ_j‖W[:, j]‖₂ + (1−α)/2‖W‖²) from ``(W, b)`` (bias unpenalised).

    Only the ``allowed`` columns (bool mask) plus at most one new column — the disallowed one of
    largest prox input norm, if that norm exceeds the threshold — may be non-zero (SLDD step 2);
    the solve returns as soon as a new column enters. Stops when the proximal-gradient residual
    ``max|x − prox(x − t∇f)|/t`` is ≤ ``tol`` or after ``max_epochs`` full-gradient steps.
    Returns ``(W, b, entered_column_or_None, epochs, residual)``.
    """
    thr, shrink = step * lam * l1_ratio, 1.0 / (1.0 + step * lam * (1.0 - l1_ratio))
    W_prev, b_prev = W, b
    W_y, b_y = W, b  # extrapolated point
    momentum = 1.0
    residual = np.inf
    for epoch in range(1, max_epochs + 1):
        _, g_W, g_b = _loss_and_grad(X, y, W_y, b_y)
        V = W_y - step * g_W
        b_new = b_y - step * g_b
        entered = None
        W_new = np.zeros_like(V)
        W_new[:, allowed] = _group_prox(V[:, allowed], thr, shrink)
        if not allowed.all():
            norms = np.where(allowed, -np.inf, np.linalg.norm(V, axis=0))
            candidate = int(np.argmax(norms))
            if norms[candidate] > thr:
                W_new[:, candidate] = _group_prox(V[:, [candidate]], thr, shrink)[:, 0]
                entered = candidate
        residual = max(np.abs(W_new - W_y).max(), np.abs(b_new - b_y).max()) / step
        if entered is not None or residual <= tol:
            return W_new, b_new, entered, epoch, residual
        # FISTA momentum with gradient-based adaptive restart (O'Donoghue & Candès, 2015).
        if np.sum((W_y - W_new) * (W_new - W_prev)) + np.dot(b_y - b_new, b_new - b_prev) > 0:
            momentum = 1.0
        next_momentum = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * momentum**2))
        beta = (momentum - 1.0) / next_momentum
        W_y, b_y = W_new + beta * (W_new - W_prev), b_new + beta * (b_new - b_prev)
        W_prev, b_prev, momentum = W_new, b_new, next_momentum
    return W_prev, b_prev, None, max_epochs, residual


def _elastic_net_lbfgs(X, y, W, b, *, lam, l1_ratio, max_epochs, tol):
    """Minimise mean CE + λ(α‖W‖₁ + (1−α)/2‖W‖²) (bias unpenalised) from ``(W, b)``.

    L-BFGS-B on ``W = P − N`` with ``P, N ≥ 0``: the L1 term becomes the linear ``α·Σ(P + N)``, so
    the problem is smooth and bound-constrained with the same optimum (at it ``min(P, N) = 0``), and
    entries with both parts at their bound are exact zeros. Stops when the projected gradient — the
    elastic-net KKT violation — is ≤ ``tol`` in every entry, or after ``max_epochs`` evaluations.
    Returns ``(W, b, evaluations, converged)``.
    """
    from scipy.optimize import minimize

    n_classes, n_features = W.shape
    size = n_classes * n_features

    def objective(theta):
        P, N = theta[:size].reshape(W.shape), theta[size : 2 * size].reshape(W.shape)
        weight = P - N
        loss, g_W, g_b = _loss_and_grad(X, y, weight, theta[2 * size :])
        g_W += lam * (1.0 - l1_ratio) * weight
        value = loss + lam * (l1_ratio * (P.sum() + N.sum()) + 0.5 * (1.0 - l1_ratio) * np.sum(weight**2))
        return value, np.concatenate([(g_W + lam * l1_ratio).ravel(), (lam * l1_ratio - g_W).ravel(), g_b])

    start = np.concatenate([np.maximum(W, 0).ravel(), np.maximum(-W, 0).ravel(), b])
    bounds = [(0.0, None)] * (2 * size) + [(None, None)] * n_classes
    options = {"maxiter": max_epochs, "maxfun": max_epochs, "ftol": 0.0, "gtol": tol}
    result = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds, options=options)
    theta = result.x
    weight = theta[:size].reshape(W.shape) - theta[size : 2 * size].reshape(W.shape)
    return weight, theta[2 * size :].copy(), int(result.nfev), bool(result.status == 0)


def _check_solver_args(l1_ratio, n_lambdas, lam_min_ratio, max_epochs, tol):
    if not 0.0 < l1_ratio <= 1.0:
        raise ValueError(f"l1_ratio must be in (0, 1]; got {l1_ratio!r}.")
    check_int(n_lambdas, "n_lambdas", 1)
    if not 0.0 < lam_min_ratio <= 1.0:
        raise ValueError(f"lam_min_ratio must be in (0, 1]; got {lam_min_ratio!r}.")
    check_int(max_epochs, "max_epochs", 1)
    if not tol > 0.0:
        raise ValueError(f"tol must be positive; got {tol!r}.")


def group_elastic_net_selection(
    F: npt.ArrayLike,
    y: npt.ArrayLike,
    n_keep: int = 50,
    *,
    l1_ratio: float = 0.8,
    lam_factor: float = 0.1,
    n_lambdas: int = 100,
    lam_min_ratio: float = 1e-3,
    max_epochs: int = 2000,
    tol: float = 1e-4,
    n_classes: int | None = None,
    verbose: int | bool = False,
) -> np.ndarray:
    """Pick ``n_keep`` features by the group-elastic-net walk of DINO-SLDD (docs/baselines.md#dino-sldd-selectionsldd, step 2).

    ``F`` are the **raw** training features (the caller's 90 % split). The regularisation path is
    ``λ_k = lam_factor · lambda_path(maxreg_group(F_raw)/α)`` — λ_max from the raw features, as in
    the authors' metadata — while the model is fitted on the standardised features
    ``(F − mean)/max(std, 1e-5)``. Per λ it minimises::

        mean_i CE(softmax(W z_i + b), y_i) + λ·(α·Σ_j ‖W[:, j]‖₂ + (1 − α)/2·‖W‖²_F)

    with the bias unpenalised and the extra rule that only the selected features plus **at most one
    new feature** per proximal step may be non-zero (the unselected feature of largest prox input
    norm, if that norm exceeds the group threshold). As soon as a new feature enters it joins the
    selection and the walk restarts from the top of the path, weights kept. The walk stops when
    ``n_keep`` features are selected. Should it reach the end of the path (λ = 0) short of
    ``n_keep`` — only possible for features with an exactly zero gradient, e.g. constant ones — the
    rest is filled by largest gradient norm, with a ``RuntimeWarning``.

    Parameters
    ----------
    F : array-like of shape (n_samples, n_features)
        Raw (unstandardised) training features.
    y : array-like of shape (n_samples,)
        Integer class codes 0..C-1.
    n_keep : int, default=50
        Number of features to select.
    l1_ratio : float, default=0.8
        Group-L1 share of the penalty, as scikit-learn's ``l1_ratio`` (the authors' ``selalpha``).
    lam_factor : float, default=0.1
        Every λ of the path is multiplied by it (``lam_fac``).
    n_lambdas, lam_min_ratio : int, float, default=100, 1e-3
        The path: ``n_lambdas`` log-spaced values from λ_max to ``lam_min_ratio·λ_max``, then 0.
    max_epochs : int, default=2000
        Most full-gradient steps per λ visit.
    tol : float, default=1e-4
        A λ visit converges when the proximal-gradient residual is ≤ ``tol·g₀``, ``g₀`` the largest
        gradient group norm of the all-zero model (relative, so the rule is scale-free).
    n_classes : int or None, default=None
        Number of classes C (default ``max(y) + 1``); set it when ``y`` may miss the last classes.
    verbose : bool, default=False
        Progress bar over the selected features.

    Returns
    -------
    selected : ndarray of shape (n_keep,)
        Sorted feature ids.

    Examples
    --------
    >>> import numpy as np
    >>> from qpm_sklearn.glm import group_elastic_net_selection
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 300)
    >>> F = rng.normal(size=(300, 20))
    >>> F[:, [4, 7]] += 3.0 * np.eye(3)[y][:, :2]
    >>> group_elastic_net_selection(F, y, n_keep=2).tolist()
    [4, 7]
    """
    F, y, Y = _check_problem(F, y, n_classes=n_classes)
    n_features = F.shape[1]
    if not 1 <= int(n_keep) <= n_features:
        raise ValueError(f"n_keep must be in [1, {n_features}] (the number of features); got {n_keep!r}.")
    _check_solver_args(l1_ratio, n_lambdas, lam_min_ratio, max_epochs, tol)
    n_keep = int(n_keep)

    lams = lam_factor * lambda_path(_max_reg(F, Y, group=True) / l1_ratio, n_lambdas, lam_min_ratio)
    mean, std = standardisation(F)
    Z = (F - mean) / std
    g0 = _max_reg(Z, Y, group=True)
    if g0 == 0.0:
        raise ValueError("F carries no signal about y: every feature has a zero gradient (constant features?).")
    step = 1.0 / _lipschitz(Z)
    W = np.zeros((Y.shape[1], n_features))
    b = np.zeros(Y.shape[1])
    selected = np.zeros(n_features, dtype=bool)
    bar = progress(range(n_keep), verbose=verbose, desc="group elastic net selection", unit="feature")
    bar_update = getattr(bar, "update", lambda _n: None)
    position = 0
    while selected.sum() < n_keep and position < len(lams):
        W, b, entered, _, _ = _restricted_group_fista(
            Z, y, W, b, lam=lams[position], l1_ratio=l1_ratio, step=step,
            max_epochs=int(max_epochs), tol=tol * g0, allowed=selected,
        )  # fmt: skip
        if entered is None:
            position += 1
        else:
            selected[entered] = True
            bar_update(1)
            position = 0  # restart from the top of the path, weights kept
    if selected.sum() < n_keep:
        _, g_W, _ = _loss_and_grad(Z, y, W, b)
        norms = np.where(selected, -np.inf, np.linalg.norm(g_W, axis=0))
        missing = n_keep - int(selected.sum())
        selected[np.argsort(-norms, kind="stable")[:missing]] = True
        warnings.warn(
            f"group_elastic_net_selection reached the end of the regularisation path with "
            f"{n_keep - missing} of n_keep={n_keep} features; the remaining {missing} were filled by "
            "largest gradient norm.",
            ConvergenceWarning,
            stacklevel=2,
        )
    logger.debug("group elastic net selection: %d features", int(selected.sum()))
    return np.flatnonzero(selected)


def elastic_net_path(
    F: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    l1_ratio: float = 0.99,
    n_lambdas: int = 100,
    lam_min_ratio: float = 1e-3,
    lam_max: float | None = None,
    max_epochs: int = 2000,
    tol: float = 1e-4,
    n_classes: int | None = None,
    verbose: int | bool = False,
) -> list[dict[str, Any]]:
    """The elastic-net multinomial regularisation path of ``glm_saga`` (docs/baselines.md#dino-sldd-selectionsldd, step 3).

    For every λ of ``lambda_path(lam_max, n_lambdas, lam_min_ratio)`` (so ``n_lambdas + 1`` points,
    the last one λ = 0) it minimises, warm-started from the previous point::

        mean_i CE(softmax(W f_i + b), y_i) + λ·(α·‖W‖₁ + (1 − α)/2·‖W‖²_F)

    over ``W`` (C, K) and the unpenalised bias ``b`` (C,), exactly ``glm_saga``'s objective. ``F``
    is used as given (the baselines pass standardised features).

    Parameters
    ----------
    F : array-like of shape (n_samples, n_features)
        Features (standardised by the caller).
    y : array-like of shape (n_samples,)
        Integer class codes 0..C-1.
    l1_ratio : float, default=0.99
        L1 share of the penalty, as scikit-learn's ``l1_ratio`` (glmnet's ``alpha``).
    n_lambdas, lam_min_ratio : int, float, default=100, 1e-3
        Path length (before λ = 0) and ratio of its smallest to its largest λ.
    lam_max : float or None, default=None
        Top of the path. None: ``max|Fᵀ(Y − Ȳ)|/n / α``, the smallest λ with an all-zero solution.
        (The baselines pass the authors' value computed on the raw features, SLDD step 3.)
    max_epochs : int, default=2000
        Most full-gradient evaluations per λ (λ = 0 on separable data never converges; it stops here).
    tol : float, default=1e-4
        A point converges when every entry's KKT violation (the projected gradient of the split
        problem, see ``_elastic_net_lbfgs``) is ≤ ``tol·g₀``, ``g₀`` the largest absolute gradient
        entry of the all-zero model (relative, so the rule is scale-free).
    n_classes : int or None, default=None
        Number of classes C (default ``max(y) + 1``); set it when ``y`` may miss the last classes.
    verbose : bool, default=False
        Progress bar over the path.

    Returns
    -------
    path : list of dict
        One dict per λ, in path order: ``weight`` (C, K), ``bias`` (C,), ``lam``, ``epochs`` (gradient
        evaluations used) and ``converged`` (bool).

    Examples
    --------
    >>> import numpy as np
    >>> from qpm_sklearn.glm import elastic_net_path
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 200)
    >>> F = rng.normal(size=(200, 6)) + np.eye(3)[y] @ rng.normal(size=(3, 6))
    >>> path = elastic_net_path(F, y, n_lambdas=10)
    >>> len(path), path[-1]["lam"], bool(np.abs(path[0]["weight"]).max() < 1e-8)
    (11, 0.0, True)
    """
    F, y, Y = _check_problem(F, y, n_classes=n_classes)
    _check_solver_args(l1_ratio, n_lambdas, lam_min_ratio, max_epochs, tol)
    g0 = _max_reg(F, Y, group=False)
    if lam_max is None:
        lam_max = g0 / l1_ratio
    if not np.isfinite(lam_max) or lam_max < 0:
        raise ValueError(f"lam_max must be a finite non-negative number; got {lam_max!r}.")
    lams = lambda_path(lam_max, n_lambdas, lam_min_ratio)
    W = np.zeros((Y.shape[1], F.shape[1]))
    b = np.log(Y.mean(axis=0) + 1e-12)  # the optimal bias of the all-zero model
    tol_abs = tol * max(g0, np.finfo(np.float64).tiny)
    path: list[dict[str, Any]] = []
    for lam in progress(lams, verbose=verbose, desc="elastic net path", unit="λ"):
        W, b, epochs, converged = _elastic_net_lbfgs(
            F, y, W, b, lam=lam, l1_ratio=l1_ratio, max_epochs=int(max_epochs), tol=tol_abs
        )
        path.append({"weight": W, "bias": b, "lam": float(lam), "epochs": epochs, "converged": converged})
    unconverged = [p["lam"] for p in path[:-1] if not p["converged"]]
    if unconverged:
        warnings.warn(
            f"elastic_net_path: {len(unconverged)} of {len(path) - 1} non-zero λ did not converge within "
            f"max_epochs={max_epochs} (smallest such λ = {min(unconverged):.3g}).",
            ConvergenceWarning,
            stacklevel=2,
        )
    return path
