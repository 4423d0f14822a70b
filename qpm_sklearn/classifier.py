"""QPMClassifier: the DINO-QPM estimator (dense stage → selection → sparse stage)."""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import (
    _check_feature_names,
    check_array,
    check_is_fitted,
    check_memory,
    column_or_1d,
)

from ._device import as_numpy, resolve_device, torch_seed
from .adapter import DenseHead, QPMNetwork, SparseHead, TokenMLP, load_network_state, network_state
from .baselines import qsenn_refit, sparse_head
from .explanation import Explanation
from .persistence import load_estimator, save_estimator
from .selection import feature_class_correlation, feature_similarity, redundancy_penalty, solve_selection
from .training import forward_in_batches, tokens_on_device, train_network

_STAGES = ("sparse", "dense")


def _check_tokens(X, estimator, *, reset: bool):
    """Validate X and return ``(tokens (n, p, d), grid (h, w))``.

    Accepts ``(n, h, w, d)`` patch grids, ``(n, p, d)`` tokens with a square
    ``p`` and ``(n, d)`` single tokens. float32 and float16 arrays (such as the
    float16 memory map of an embedding cache) are used without a copy, so a
    collection larger than memory is streamed rather than loaded; float64 is
    cast to float32 and other dtypes converted.
    """
    _check_feature_names(estimator, X, reset=reset)
    X = check_array(
        X,
        dtype=(np.float32, np.float16, np.float64),
        allow_nd=True,
        ensure_min_samples=2 if reset else 1,
        input_name="X",
    )
    if X.ndim == 2:
        grid = (1, 1)
    elif X.ndim == 3:
        side = math.isqrt(X.shape[1])
        if side * side != X.shape[1]:
            raise ValueError(
                f"X of shape (n, p, d) must hold a square grid of p patch tokens; got p={X.shape[1]}, "
                "which is not a perfect square. Pass the grid as (n, h, w, d) instead."
            )
        grid = (side, side)
    elif X.ndim == 4:
        grid = (X.shape[1], X.shape[2])
    else:
        raise ValueError(
            f"X must be a patch grid (n, h, w, d), tokens (n, p, d) or vectors (n, d); got shape {X.shape}."
        )
    n_dims = X.shape[-1]
    if reset:
        estimator.n_features_in_ = n_dims
    elif n_dims != estimator.n_features_in_:
        raise ValueError(
            f"X has {n_dims} features, but {type(estimator).__name__} is expecting "
            f"{estimator.n_features_in_} features as input (the embedding size d of the last axis)."
        )
    tokens = np.ascontiguousarray(X.reshape(X.shape[0], grid[0] * grid[1], n_dims))
    if tokens.dtype == np.float64:
        with np.errstate(over="ignore"):
            tokens = tokens.astype(np.float32)
        if not np.isfinite(tokens).all():
            raise ValueError("X has values beyond the float32 range (about ±3.4e38); rescale the embeddings.")
    return tokens, grid


def _fit_dense_stage(tokens, y, grid, n_classes, settings, seed, device, verbose=False):
    """Train the token-wise MLP with a dense linear head (stage 1) and describe the training set.

    A module-level function of plain arguments so that ``joblib.Memory`` can
    cache it: a budget search refits only the selection and the sparse stage.

    Returns
    -------
    result : dict
        ``mlp`` and ``head`` (numpy weights of the network), ``features`` (n, n_features)
        pooled training features in eval mode, ``history`` (per-epoch rows).
    """
    tokens = tokens_on_device(tokens, device)  # staged once for training and the feature pass
    torch.manual_seed(seed)
    network = QPMNetwork(
        TokenMLP(tokens.shape[-1], settings["hidden_size"], settings["n_features"], settings["n_layers"]),
        DenseHead(settings["n_features"], n_classes, settings["dropout"]),
    )
    history = train_network(
        network,
        tokens,
        y,
        grid=grid,
        epochs=settings["dense_epochs"],
        batch_size=settings["dense_batch_size"],
        lr=settings["dense_lr"],
        weight_decay=settings["dense_weight_decay"],
        diversity=settings["dense_diversity"],
        device=device,
        seed=seed,
        verbose=verbose,
        desc="dense",
    )
    features = forward_in_batches(
        network, tokens, grid=grid, batch_size=settings["inference_batch_size"], device=device
    )["features"]
    return {
        "mlp": network_state(network.mlp),
        "head": network_state(network.head),
        "features": features,
        "history": history,
    }


class QPMClassifier(ClassifierMixin, BaseEstimator):
    """Globally interpretable classifier on frozen patch embeddings (DINO-QPM).

    A token-wise MLP turns every patch embedding into ``n_features``
    non-negative feature maps whose spatial means feed a linear head (the
    *dense* stage). A quadratic program then picks ``n_selected`` features and
    gives every class exactly ``n_per_class`` of them, no two classes the same
    set; the MLP is fine-tuned under that fixed binary assignment (the *sparse*
    stage). Every prediction is then a sum of ``n_per_class`` standardised
    feature activations, each with a map of where it fired.

    Parameters
    ----------
    n_features : int, default=512
        Adapter channels (feature maps) learned in the dense stage.
    n_selected : int, default=50
        Features kept by the selection, shared by all classes.
    n_per_class : int, default=5
        Features assigned to every class.
    hidden_size : int, default=2048
        Width of the MLP's hidden layers.
    n_layers : int, default=4
        Linear → BatchNorm → ReLU blocks of the MLP.
    dense_epochs, sparse_epochs : int, default=25
        Training epochs of each stage.
    dense_batch_size : int, default=32
    sparse_batch_size : int, default=16
    dense_lr : float, default=1e-3
    sparse_lr : float, default=5e-3
    dense_weight_decay : float, default=7e-4
    sparse_weight_decay : float, default=8e-4
        AdamW settings of each stage (cosine learning-rate schedule).
    dropout : float, default=0.2
        Dropout on the pooled features before the dense head.
    dense_diversity : float, default=0.5
    sparse_diversity : float, default=1.0
        Weight β of the feature-diversity loss in each stage.
    l1_maps : float, default=5.0
        Weight of the L1 penalty on the selected feature maps (sparse stage of
        ``selection="qpm"``).
    l1_features : float, default=1.0
        Weight of the L1 penalty on the selected pooled features (sparse stage
        of ``selection="qpm"``).
    selection : {"qpm", "sldd", "qsenn"}, default="qpm"
        How the sparse head is chosen: the quadratic program of DINO-QPM, or
        the paper's comparison systems DINO-SLDD and DINO-QSENN (real-valued
        weights with a bias, trainable standardisation, dropout 0.1 and no L1
        terms in fine-tuning; Q-SENN runs 4 refit → quantise → fine-tune rounds
        of ``sparse_epochs`` each). The paper trained their dense stage for 40
        epochs with ``dense_diversity=0.196`` and fine-tuned SLDD for 50 epochs;
        see docs/baselines.md.
    solver_options : dict, default=None
        Extra keyword arguments for :func:`qpm_sklearn.selection.solve_selection`
        (``time_limit``, ``solver``, ``algebra``, ...).
    device : str or torch.device, default=None
        Where to train and predict; None picks CUDA, then MPS, then the CPU.
    memory : str, joblib.Memory or None, default=None
        Caches the dense stage, so that fits that differ only in the selection
        or the sparse stage (a search over ``n_selected``/``n_per_class``)
        train it once. Reuse needs an int ``random_state``.
    random_state : int, RandomState instance or None, default=None
        Seeds initialisation, shuffling, dropout and the solver.
    verbose : bool, default=False
        Show progress bars.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
        Embedding size d.
    selected_features_ : ndarray of shape (n_selected,)
        Adapter channel ids of the selected features, ascending.
    assignment_ : ndarray of shape (n_classes, n_selected)
        0/1 matrix: which selected features each class uses. With
        ``selection="qpm"`` every row has exactly ``n_per_class`` ones and no
        two rows are equal; the comparison systems prune globally (SPEC 7.3),
        so there a class may use more or fewer features.
    sparse_weight_ : ndarray of shape (n_classes, n_selected)
        Weights of the sparse head (equal to ``assignment_`` for DINO-QPM).
    sparse_bias_ : ndarray of shape (n_classes,)
        Constant of each class (zero for DINO-QPM).
    feature_mean_, feature_std_ : ndarray of shape (n_selected,)
        Standardisation of the selected pooled features in the sparse head.
    selection_info_ : dict
        Objective, upper bound, gap, seconds and status of the selection.
    history_ : list of dict
        One row per epoch with ``stage``, losses and ``seconds``.

    Examples
    --------
    >>> import numpy as np
    >>> from qpm_sklearn import QPMClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(60, 4, 4, 8)).astype(np.float32)
    >>> y = np.repeat([0, 1, 2], 20)
    >>> X[y == 1, :2] += 2.0
    >>> X[y == 2, 2:] += 2.0
    >>> clf = QPMClassifier(n_features=12, n_selected=6, n_per_class=2, hidden_size=16,
    ...                     n_layers=2, dense_epochs=5, sparse_epochs=5, random_state=0)
    >>> clf.fit(X, y).assignment_.sum(axis=1)
    array([2, 2, 2])
    >>> clf.explain(X[:2]).maps.shape
    (2, 2, 4, 4)
    """

    _parameter_constraints: dict = {
        "n_features": [Interval(Integral, 1, None, closed="left")],
        "n_selected": [Interval(Integral, 1, None, closed="left")],
        "n_per_class": [Interval(Integral, 1, None, closed="left")],
        "hidden_size": [Interval(Integral, 1, None, closed="left")],
        "n_layers": [Interval(Integral, 1, None, closed="left")],
        "dense_epochs": [Interval(Integral, 1, None, closed="left")],
        "sparse_epochs": [Interval(Integral, 0, None, closed="left")],
        "dense_batch_size": [Interval(Integral, 1, None, closed="left")],
        "sparse_batch_size": [Interval(Integral, 1, None, closed="left")],
        "dense_lr": [Interval(Real, 0, None, closed="neither")],
        "sparse_lr": [Interval(Real, 0, None, closed="neither")],
        "dense_weight_decay": [Interval(Real, 0, None, closed="left")],
        "sparse_weight_decay": [Interval(Real, 0, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "dense_diversity": [Interval(Real, 0, None, closed="left")],
        "sparse_diversity": [Interval(Real, 0, None, closed="left")],
        "l1_maps": [Interval(Real, 0, None, closed="left")],
        "l1_features": [Interval(Real, 0, None, closed="left")],
        "selection": [StrOptions({"qpm", "sldd", "qsenn"})],
        "solver_options": [dict, None],
        "device": [str, torch.device, None],
        "memory": [None, str, HasMethods(["cache"])],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        n_features=512,
        n_selected=50,
        n_per_class=5,
        hidden_size=2048,
        n_layers=4,
        dense_epochs=25,
        sparse_epochs=25,
        dense_batch_size=32,
        sparse_batch_size=16,
        dense_lr=1e-3,
        sparse_lr=5e-3,
        dense_weight_decay=7e-4,
        sparse_weight_decay=8e-4,
        dropout=0.2,
        dense_diversity=0.5,
        sparse_diversity=1.0,
        l1_maps=5.0,
        l1_features=1.0,
        selection="qpm",
        solver_options=None,
        device=None,
        memory=None,
        random_state=None,
        verbose=False,
    ):
        self.n_features = n_features
        self.n_selected = n_selected
        self.n_per_class = n_per_class
        self.hidden_size = hidden_size
        self.n_layers = n_layers
        self.dense_epochs = dense_epochs
        self.sparse_epochs = sparse_epochs
        self.dense_batch_size = dense_batch_size
        self.sparse_batch_size = sparse_batch_size
        self.dense_lr = dense_lr
        self.sparse_lr = sparse_lr
        self.dense_weight_decay = dense_weight_decay
        self.sparse_weight_decay = sparse_weight_decay
        self.dropout = dropout
        self.dense_diversity = dense_diversity
        self.sparse_diversity = sparse_diversity
        self.l1_maps = l1_maps
        self.l1_features = l1_features
        self.selection = selection
        self.solver_options = solver_options
        self.device = device
        self.memory = memory
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fit
    def _check_budgets(self, n_classes: int) -> None:
        if self.n_selected > self.n_features:
            raise ValueError(
                f"n_selected={self.n_selected} must not exceed n_features={self.n_features} "
                "(the selection picks among the adapter's channels)."
            )
        if self.n_per_class > self.n_selected:
            raise ValueError(
                f"n_per_class={self.n_per_class} must not exceed n_selected={self.n_selected}."
            )
        if self.selection == "qpm" and math.comb(self.n_selected, self.n_per_class) < n_classes:
            raise ValueError(
                f"n_selected={self.n_selected} features allow only "
                f"{math.comb(self.n_selected, self.n_per_class)} distinct sets of n_per_class="
                f"{self.n_per_class}, fewer than the {n_classes} classes, which all need a distinct set. "
                "Raise n_selected or change n_per_class."
            )

    def _settings(self) -> dict:
        return {
            "n_features": int(self.n_features),
            "hidden_size": int(self.hidden_size),
            "n_layers": int(self.n_layers),
            "dropout": float(self.dropout),
            "dense_epochs": int(self.dense_epochs),
            "dense_batch_size": int(self.dense_batch_size),
            "dense_lr": float(self.dense_lr),
            "dense_weight_decay": float(self.dense_weight_decay),
            "dense_diversity": float(self.dense_diversity),
            "inference_batch_size": _INFERENCE_BATCH_SIZE,
        }

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Fit the dense stage, select features and fine-tune the sparse stage.

        Parameters
        ----------
        X : array-like of shape (n, h, w, d), (n, p, d) or (n, d)
            Patch embeddings (e.g. from :class:`Dinov2Embedder`).
        y : array-like of shape (n,)
            Class labels of any type.

        Returns
        -------
        self : QPMClassifier
        """
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None."
            )
        tokens, grid = _check_tokens(X, self, reset=True)
        y = column_or_1d(y, warn=True)
        if len(y) != len(tokens):
            raise ValueError(
                f"X and y must have the same number of samples; got {len(tokens)} samples in X "
                f"and {len(y)} labels in y."
            )
        check_classification_targets(y)
        self.classes_, y_codes = np.unique(y, return_inverse=True)
        n_classes = len(self.classes_)
        if n_classes < 2:
            raise ValueError(
                f"y must contain at least 2 classes to train a classifier; got 1 class: {self.classes_[0]!r}."
            )
        self._check_budgets(n_classes)
        y_codes = y_codes.astype(np.int64)

        device = resolve_device(self.device)
        rng = check_random_state(self.random_state)
        dense_seed, selection_seed, sparse_seed = (torch_seed(rng) for _ in range(3))
        memory = check_memory(self.memory)
        dense = memory.cache(_fit_dense_stage, ignore=["verbose"])(
            tokens, y_codes, grid, n_classes, self._settings(), dense_seed, str(device), self.verbose
        )
        self.dense_mlp_state_, self.dense_head_state_ = dense["mlp"], dense["head"]
        self.history_ = [dict(row, stage="dense") for row in dense["history"]]

        head = self._select(dense["features"], y_codes, n_classes, selection_seed)
        self.selected_features_ = head["selected"]
        self.selection_info_ = head["info"]
        self._set_head(head)
        self.sparse_mlp_state_, sparse_history = self._fine_tune(
            tokens, y_codes, grid, n_classes, selection_seed, sparse_seed, device
        )
        self.history_ += [dict(row, stage="sparse") for row in sparse_history]
        return self

    def _set_head(self, head: dict) -> None:
        self.sparse_weight_ = np.asarray(head["weight"], dtype=np.float32)
        self.sparse_bias_ = np.asarray(head["bias"], dtype=np.float32)
        self.assignment_ = (self.sparse_weight_ != 0).astype(np.int8)
        self.feature_mean_ = np.asarray(head["mean"], dtype=np.float32)
        self.feature_std_ = np.asarray(head["std"], dtype=np.float32)

    def _select(self, features, y_codes, n_classes, seed) -> dict:
        """Choose the sparse head from the dense training features (stage 2)."""
        if self.selection != "qpm":
            return sparse_head(
                self.selection,
                features,
                y_codes,
                n_selected=self.n_selected,
                n_per_class=self.n_per_class,
                n_classes=n_classes,
                random_state=seed,
                verbose=self.verbose,
            )
        A = feature_class_correlation(features, y_codes)
        penalty, tau = redundancy_penalty(feature_similarity(A), self.n_selected)
        result = solve_selection(
            A,
            n_selected=self.n_selected,
            n_per_class=self.n_per_class,
            penalty=penalty,
            random_state=seed,
            verbose=self.verbose,
            **(self.solver_options or {}),
        )
        selected = np.asarray(result.selected, dtype=np.int64)
        mean = features.mean(axis=0, dtype=np.float64)[selected]
        std = features.std(axis=0, dtype=np.float64)[selected]  # population std (SPEC 2.4)
        return {
            "selected": selected,
            "weight": np.asarray(result.assignment, dtype=np.float32),
            "bias": np.zeros(n_classes, dtype=np.float32),
            "mean": mean,
            "std": std,
            "info": dict(result.as_dict(), tau=float(tau), method="qpm"),
        }

    def _fine_tune(self, tokens, y_codes, grid, n_classes, split_seed, seed, device):
        """Fine-tune the MLP under the sparse head (stage 3); returns the MLP state and history.

        DINO-QPM trains with frozen head and statistics, CE + diversity + the
        two L1 terms. The comparison systems (SPEC 7.3/7.4) train the
        standardisation too, with dropout 0.1 and without L1 terms; Q-SENN
        refits and re-quantises its head on the current features before each
        of its rounds after the first.
        """
        tokens = tokens_on_device(tokens, device)
        baseline = self.selection != "qpm"
        rounds = _QSENN_ROUNDS if self.selection == "qsenn" else 1
        mlp_state, history, network = self.dense_mlp_state_, [], None
        for round_index in range(rounds):
            if round_index > 0:
                features = forward_in_batches(
                    network, tokens, grid=grid, batch_size=_INFERENCE_BATCH_SIZE, device=device
                )["features"]
                head = qsenn_refit(
                    features, y_codes, self.n_per_class, n_classes=n_classes, random_state=split_seed,
                    verbose=self.verbose,
                )  # fmt: skip
                self._set_head(head)
            torch.manual_seed(seed + round_index)
            network = self._build_network(
                "sparse", mlp_state=mlp_state, train_stats=baseline, dropout=_BASELINE_DROPOUT if baseline else 0.0
            )
            rows = train_network(
                network,
                tokens,
                y_codes,
                grid=grid,
                epochs=self.sparse_epochs,
                batch_size=self.sparse_batch_size,
                lr=self.sparse_lr,
                weight_decay=self.sparse_weight_decay,
                diversity=self.sparse_diversity,
                l1_maps=0.0 if baseline else self.l1_maps,
                l1_features=0.0 if baseline else self.l1_features,
                device=device,
                seed=seed + round_index,
                verbose=self.verbose,
                desc="sparse",
            )
            history += [dict(row, round=round_index) for row in rows]
            mlp_state = network_state(network.mlp)
            if baseline:  # the standardisation was trained
                self.feature_mean_, self.feature_std_ = as_numpy(network.head.mean), as_numpy(network.head.std)
        return mlp_state, history

    # ------------------------------------------------------------ networks
    def _build_network(self, stage: str, mlp_state=None, train_stats=False, dropout=0.0):
        """Rebuild the torch network of ``stage`` from the fitted numpy state.

        ``mlp_state`` overrides the stage's MLP weights (fine-tuning starts from
        the dense MLP); ``train_stats`` and ``dropout`` configure the sparse head
        for fine-tuning.
        """
        mlp = TokenMLP(self.n_features_in_, self.hidden_size, self.n_features, self.n_layers)
        if stage == "dense":
            network = QPMNetwork(mlp, DenseHead(self.n_features, len(self.classes_), self.dropout))
            load_network_state(network.mlp, self.dense_mlp_state_ if mlp_state is None else mlp_state)
            load_network_state(network.head, self.dense_head_state_)
            return network
        head = SparseHead(
            self.sparse_weight_,
            self.feature_mean_,
            self.feature_std_,
            bias=self.sparse_bias_,
            train_stats=train_stats,
            dropout=dropout,
        )
        network = QPMNetwork(mlp, head, selected=torch.as_tensor(self.selected_features_, dtype=torch.long))
        load_network_state(network.mlp, self.sparse_mlp_state_ if mlp_state is None else mlp_state)
        return network

    def _forward(self, X, stage: str, *, return_maps: bool = False) -> dict:
        check_is_fitted(self)
        if stage not in _STAGES:
            raise ValueError(f"stage must be one of {_STAGES}; got {stage!r}.")
        tokens, grid = _check_tokens(X, self, reset=False)
        out = forward_in_batches(
            self._build_network(stage),
            tokens,
            grid=grid,
            batch_size=_INFERENCE_BATCH_SIZE,
            device=resolve_device(self.device),
            return_maps=return_maps,
        )
        out["grid"] = grid
        return out

    # ----------------------------------------------------------- inference
    def decision_function(self, X, stage="sparse"):
        """Class logits (for two classes, the logit of ``classes_[1]`` minus that of ``classes_[0]``).

        Parameters
        ----------
        X : array-like of shape (n, h, w, d), (n, p, d) or (n, d)
        stage : {"sparse", "dense"}, default="sparse"
            The fine-tuned interpretable model, or the stage-1 dense model.

        Returns
        -------
        scores : ndarray of shape (n, n_classes), or (n,) for two classes
        """
        logits = self._forward(X, stage)["logits"]
        return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits

    def predict_proba(self, X, stage="sparse"):
        """Class probabilities (softmax of the logits), columns in ``classes_`` order."""
        return _softmax(self._forward(X, stage)["logits"])

    def predict(self, X, stage="sparse"):
        """Predicted class labels."""
        logits = self._forward(X, stage)["logits"]
        return self.classes_[np.argmax(logits, axis=1)]

    def feature_maps(self, X, stage="sparse"):
        """Raw feature maps on the patch grid.

        Returns
        -------
        maps : ndarray of shape (n, K, h, w)
            K = ``n_selected`` (columns of ``assignment_``, in ``selected_features_``
            order) for the sparse stage, ``n_features`` for the dense stage.
        """
        return self._forward(X, stage, return_maps=True)["maps"]

    def pooled_features(self, X, stage="sparse"):
        """Spatial means of the feature maps (raw, not standardised), shape (n, K)."""
        return self._forward(X, stage)["features"]

    def class_weights(self, stage="sparse"):
        """Head weights, shape (n_classes, K): ``sparse_weight_`` or the dense linear weight."""
        check_is_fitted(self)
        if stage not in _STAGES:
            raise ValueError(f"stage must be one of {_STAGES}; got {stage!r}.")
        if stage == "sparse":
            return self.sparse_weight_
        return self._build_network("dense").head.weight.detach().numpy().copy()

    def _class_index(self, label) -> int:
        check_is_fitted(self)
        matches = np.flatnonzero(self.classes_ == label)
        if len(matches) != 1:
            raise ValueError(f"label must be one of classes_ {self.classes_.tolist()}; got {label!r}.")
        return int(matches[0])

    def class_features(self, label):
        """Adapter channel ids of the features class ``label`` uses, ascending."""
        row = self.sparse_weight_[self._class_index(label)]
        return self.selected_features_[row != 0]

    def compare_classes(self, a, b):
        """Shared and distinguishing features of two classes.

        Returns
        -------
        comparison : dict
            ``shared``, ``only_a``, ``only_b``: arrays of adapter channel ids.
        """
        features_a, features_b = self.class_features(a), self.class_features(b)
        return {
            "shared": np.intersect1d(features_a, features_b),
            "only_a": np.setdiff1d(features_a, features_b),
            "only_b": np.setdiff1d(features_b, features_a),
        }

    def explain(self, X):
        """Explain each prediction of the sparse model as a sum of localised features.

        Parameters
        ----------
        X : array-like of shape (n, h, w, d), (n, p, d) or (n, d)

        Returns
        -------
        explanation : Explanation
        """
        out = self._forward(X, "sparse", return_maps=True)
        logits, maps, pooled = out["logits"], out["maps"], out["features"]
        predicted = np.argmax(logits, axis=1)
        weight = self.sparse_weight_[predicted]  # (n, K)
        standardised = (pooled - self.feature_mean_) / np.maximum(self.feature_std_, 1e-6)
        share = weight * standardised
        width = int((self.sparse_weight_ != 0).sum(axis=1).max())
        # the class's features, largest contribution first; non-members sort last
        order = np.argsort(np.where(weight != 0, -share, np.inf), axis=1, kind="stable")[:, :width]
        used = np.take_along_axis(weight, order, axis=1) != 0
        rows = np.arange(len(logits))[:, None]
        return Explanation(
            prediction=self.classes_[predicted],
            proba=_softmax(logits),
            classes=self.classes_,
            logit=logits[np.arange(len(logits)), predicted],
            intercept=self.sparse_bias_[predicted].astype(np.float32),
            features=np.where(used, self.selected_features_[order], -1),
            contributions=np.where(used, share[rows, order], 0.0).astype(np.float32),
            weights=np.where(used, weight[rows, order], 0.0).astype(np.float32),
            maps=np.where(used[:, :, None, None], maps[rows, order], 0.0).astype(np.float32),
        )

    def save(self, path):
        """Save the fitted model to ``path`` (``.npz``: arrays + JSON, no pickle).

        Loading it with :meth:`load` executes no code, unlike pickle.

        Returns
        -------
        path : pathlib.Path
            The file written (``.npz`` is appended when missing).
        """
        check_is_fitted(self)
        return save_estimator(self, path)

    @classmethod
    def load(cls, path):
        """Load a model written by :meth:`save`; refuses files of another format version."""
        return load_estimator(cls, path)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


_INFERENCE_BATCH_SIZE = 256
# SPEC 7.3/7.4: the comparison systems fine-tune with dropout 0.1 and Q-SENN runs 4 rounds.
_BASELINE_DROPOUT = 0.1
_QSENN_ROUNDS = 4


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)
