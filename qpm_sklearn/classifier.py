"""QPMClassifier: the DINO-QPM estimator (dense stage → selection → sparse stage)."""

from __future__ import annotations

import numbers
import os
import warnings
from collections.abc import Sequence
from dataclasses import replace
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from joblib import Memory
from scipy.special import log_softmax, softmax
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context, clone
from sklearn.utils import check_random_state
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils._param_validation import HasMethods, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import (
    _check_feature_names,
    _check_sample_weight,
    _get_feature_names,
    check_is_fitted,
    check_memory,
    column_or_1d,
)

from ._doc_links import DocLinkMixin
from ._device import resolve_device, torch_seed
from ._head import HeadRecord, qpm_head
from ._stages import (
    INFERENCE_BATCH_SIZE,
    QSENN_ROUNDS,
    cached_dense_stage,
    check_tokens,
    dense_network,
    fit_sparse_stage,
    sparse_network,
)
from ._utils import StrictInterval, check_sample_weight
from .adapter import DenseHead, QPMNetwork, SparseHead, TokenMLP, empty_network, load_network_state, standardise
from .baselines import sparse_head
from .counterfactual import Counterfactual, head_logits, single_feature_counterfactuals
from .cpu_cost import estimated_cpu_seconds, warn_if_slow_on_cpu
from .explanation import Explanation, class_summary, estimator_feature_names
from .persistence import (
    FORMAT_VERSION,
    ModelFileDefect,
    read_model_file,
    short,
    take_array,
    take_state,
    take_value,
    write_model_file,
)
from .selection import check_constraints, check_selection_budget, check_solver_options
from .training import forward_in_batches, tokens_on_device

_STAGES = ("sparse", "dense")

#: Parameters added after format version 2 was fixed; a file without them loads with their default (None).
_LATER_PARAMETERS = ("exclude", "include", "fixed")

_Classifier = TypeVar("_Classifier", bound="QPMClassifier")

#: Every constructor parameter of QPMClassifier, in exactly one group. ``dense``: what the
#: dense stage's result depends on -- the ``memory=`` cache key is built from these and
#: nothing else; ``sparse``: the selection and the sparse stage; ``runtime``: where and how
#: verbosely to run, and the seed (the cache key holds the seed drawn from it). A parameter
#: missing here is an error in the tests, so the key cannot silently go stale.
PARAMETER_GROUPS = {
    "dense": (
        "n_features", "hidden_size", "n_layers", "dense_epochs", "dense_batch_size", "dense_lr",
        "dense_weight_decay", "dropout", "dense_diversity", "early_stopping", "validation_fraction",
        "n_iter_no_change", "class_weight",
    ),
    "sparse": (
        "n_selected", "n_per_class", "sparse_epochs", "sparse_batch_size", "sparse_lr", "sparse_weight_decay",
        "sparse_diversity", "l1_maps", "l1_features", "selection", "redundancy", "solver_options",
        "exclude", "include", "fixed",
    ),
    "runtime": ("device", "memory", "random_state", "verbose", "feature_names"),
}  # fmt: skip

#: The fitted state of QPMClassifier: every attribute ``fit`` writes, ``save`` stores and
#: ``load`` reads back, by kind. Arrays with their dtype (for ``classes_`` the dtype kinds
#: allowed: numbers or strings, the labels' own), network states (dicts of arrays, checked on load by building the networks
#: the parameters describe), JSON values, and ``feature_names_in_`` only when X had
#: column names. ``assignment_`` is derived from ``sparse_weight_``: stored for readers
#: of the file and checked on load, never set.
FITTED_ARRAYS: dict[str, Any] = {
    "classes_": "biufU",
    "selected_features_": np.int64,
    "sparse_weight_": np.float32,
    "sparse_bias_": np.float32,
    "feature_mean_": np.float32,
    "feature_std_": np.float32,
}
FITTED_STATES = ("dense_mlp_state_", "dense_head_state_", "sparse_mlp_state_")
FITTED_VALUES = ("n_features_in_", "selection_info_", "history_")
OPTIONAL_FITTED_VALUES = ("feature_names_in_",)


def plain_fitted_value(value: Any) -> Any:
    """``value`` with every torch object replaced, recursively through dicts, lists and tuples.

    A tensor (on any device, with or without gradient, in any dtype) becomes a host numpy
    array -- floating tensors as float32, since numpy has no bfloat16 -- and a 0-d tensor a
    Python number; a ``torch.device`` becomes its string. Fitted state then pickles and
    loads on a machine without the device that trained it.

    Parameters
    ----------
    value : object
        A fitted value as the training code returned it.

    Returns
    -------
    value : object
        The same structure holding numpy arrays and plain Python values only.
    """
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to("cpu")
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float32)
        return tensor.item() if tensor.ndim == 0 else tensor.numpy().copy()
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, dict):
        return {key: plain_fitted_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_fitted_value(item) for item in value)
    return value


def _fitted_state(classes, n_features_in, dense, sparse_mlp_state, head: HeadRecord, sparse_history, feature_names):
    """The fitted attributes of :data:`FITTED_ARRAYS`, :data:`FITTED_STATES` and :data:`FITTED_VALUES` from fit's locals.

    Every value goes through :func:`plain_fitted_value`: whatever the device the stages ran
    on, the fitted state holds numpy arrays and plain Python values only.
    """
    dense, sparse_mlp_state, sparse_history = plain_fitted_value((dense, sparse_mlp_state, sparse_history))
    head = replace(head, **plain_fitted_value({"selected": head.selected, "weight": head.weight, "bias": head.bias,
                                               "mean": head.mean, "std": head.std, "info": head.info}))  # fmt: skip
    head_arrays = {"selected_features_": head.selected, "sparse_weight_": head.weight, "sparse_bias_": head.bias,
                   "feature_mean_": head.mean, "feature_std_": head.std}  # fmt: skip
    fitted: dict[str, Any] = {"classes_": classes}
    fitted.update({name: np.asarray(head_arrays[name], dtype=FITTED_ARRAYS[name]) for name in head_arrays})
    fitted.update(dense_mlp_state_=dense["mlp"], dense_head_state_=dense["head"], sparse_mlp_state_=sparse_mlp_state)
    fitted.update(
        n_features_in_=n_features_in,
        selection_info_=head.info,
        history_=[dict(row, stage="dense") for row in dense["history"]]
        + [dict(row, stage="sparse") for row in sparse_history],
    )
    if feature_names is not None:
        fitted["feature_names_in_"] = feature_names
    return fitted


def _json_constraints(changes: dict) -> dict:
    """An edit's arguments as plain JSON values (labels and ids as Python scalars)."""

    def plain(value):
        if isinstance(value, dict):
            return [[plain(key), plain(item)] for key, item in value.items()]
        if isinstance(value, (list, tuple, np.ndarray)):
            return [plain(item) for item in value]
        return value.item() if isinstance(value, np.generic) else value

    return {name: plain(value) for name, value in changes.items()}


def _kept_feature_names(feature_names, old_selected: np.ndarray, new_selected: np.ndarray):
    """``feature_names`` for a new selection: the names of the channels still selected (as a dict)."""
    if feature_names is None:
        return None
    if isinstance(feature_names, dict):
        named = {int(key): name for key, name in feature_names.items()}
    else:
        named = dict(zip(old_selected.tolist(), feature_names))
    kept = {channel: name for channel, name in named.items() if channel in set(new_selected.tolist())}
    return kept or None


def _storable_classes(classes: np.ndarray) -> np.ndarray:
    if classes.dtype.kind in "biufU":
        return classes
    if classes.dtype == object and all(isinstance(c, str) for c in classes):
        return classes.astype(str)
    raise TypeError(
        "save() stores class labels that are numbers or strings; classes_ holds "
        f"{sorted({type(c).__name__ for c in classes})}. Use pickle/joblib for such a model."
    )


class QPMClassifier(DocLinkMixin, ClassifierMixin, BaseEstimator):
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
    n_per_class : int, array-like of int or dict, default=5
        Features assigned to every class: one budget for all, one per class in
        ``classes_`` order, or ``{label: k}`` naming every class (a confusable class
        may get more features than an easy one; docs/correcting.md).
        ``selection="qpm"`` only for anything but an int.
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
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training samples (stratified, seeded)
        during the dense stage, stop it when their accuracy has not improved for
        ``n_iter_no_change`` epochs, and keep the weights of its best epoch. The
        selection and the sparse stage then use all samples.
    validation_fraction : float, default=0.1
        Share of the samples held out when ``early_stopping``.
    n_iter_no_change : int, default=10
        Epochs without improvement before the dense stage stops.
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes, ``{label: weight}`` (unlisted classes weigh 1) or
        ``"balanced"`` (``n_samples / (n_classes * np.bincount(y))``), as in
        scikit-learn's linear models: they multiply ``sample_weight`` in ``fit``, so
        they act wherever it does (both stages' losses and the selection's
        statistics). ``selection="qpm"`` only.
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
    redundancy : {"paper", "consistent"}, default="paper"
        Which pairs of features the selection penalises as redundant
        (``selection="qpm"`` only; :func:`qpm_sklearn.selection.redundancy_penalty`):
        ``"paper"`` is the authors' procedure (threshold searched on the 2R
        scale, pairs penalised on the R scale, docs/method.md#penalty), which produced
        the paper's numbers; ``"consistent"`` searches and penalises on the
        same scale (our choice) and penalises far more pairs. On our
        measurements neither gives better models, so the default follows the
        paper (docs/selection.md).
    solver_options : dict, default=None
        Extra keyword arguments for :func:`qpm_sklearn.selection.solve_selection`
        (``time_limit``, ``solver``, ``algebra``, ...).
    exclude : array-like of int, default=None
        Adapter channel ids the selection must not use (a feature that fires on a
        watermark or the background; docs/correcting.md). ``selection="qpm"`` only.
    include : array-like of int, default=None
        Adapter channel ids the selection must keep. ``selection="qpm"`` only.
    fixed : dict, default=None
        ``{label: channel ids}``: features a class must use (up to its whole set).
        ``selection="qpm"`` only. :meth:`edit` applies all of these to a fitted
        model without retraining its dense stage; the same values given to ``fit``
        (with ``memory=``) reproduce an edit.
    device : str or torch.device, default=None
        Where to train and predict; None picks CUDA, then MPS, then the CPU.
    memory : str, joblib.Memory or None, default=None
        Caches the dense stage, so that fits that differ only in the selection
        or the sparse stage (a search over ``n_selected``/``n_per_class``)
        train it once. Reuse needs an int ``random_state`` (a warning says so
        otherwise). The key is a content hash of the tokens plus the ``dense``
        parameters of ``qpm_sklearn.classifier.PARAMETER_GROUPS``; fits of one key running at the same
        time (threads, processes sharing the folder) wait for each other, so the
        stage is computed once.
    random_state : int, RandomState instance or None, default=None
        Seeds initialisation, shuffling, dropout and the solver (through seeded
        generators: torch's global random state is left as it was).
    verbose : int or bool, default=False
        0: silent; 1: progress bars; 2: also the solvers' logs.
    feature_names : dict or sequence of str, default=None
        Names for the selected features, given once you have looked at them
        (``clf.set_params(feature_names={17: "red crown"})``; no refit): a dict
        adapter channel id -> name for some or all of ``selected_features_``, or
        one name per selected feature in ``selected_features_`` order. Used by
        :meth:`explain` (so by ``to_frame``, ``to_shap`` and the figures), by
        :meth:`summary` and by the plots; checked against ``selected_features_``
        when used. Unnamed features are called ``"feature <id>"``.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
        Embedding size d.
    selected_features_ : ndarray of shape (n_selected,)
        Adapter channel ids of the selected features, ascending.
    assignment_ : ndarray of shape (n_classes, n_selected)
        0/1 matrix (``sparse_weight_ != 0``, int8): which selected features each class uses. With
        ``selection="qpm"`` every row has exactly ``n_per_class`` ones and no
        two rows are equal; the comparison systems prune globally (docs/baselines.md#dino-sldd-selectionsldd),
        so there a class may use more or fewer features.
    sparse_weight_ : ndarray of shape (n_classes, n_selected)
        Weights of the sparse head (equal to ``assignment_`` for DINO-QPM).
    sparse_bias_ : ndarray of shape (n_classes,)
        Constant of each class (zero for DINO-QPM).
    feature_mean_, feature_std_ : ndarray of shape (n_selected,)
        Standardisation of the selected pooled features in the sparse head.
    selection_info_ : dict
        Objective, upper bound, gap, seconds and status of the selection (for
        ``selection="qpm"`` also ``tau`` and the ``redundancy`` rule); for
        ``selection="qsenn"`` the description of the final head (its last refit).
    history_ : list of dict
        One row per epoch with ``stage``, losses and ``seconds``.
    loss_curve_ : ndarray of shape (``n_iter_``,)
        The training loss of every epoch, dense stage then sparse stage (from ``history_``).
    n_iter_ : int
        Epochs trained, both stages together (``len(history_)``).

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

    # The fitted attributes (FITTED_ARRAYS, FITTED_STATES, FITTED_VALUES), declared for type
    # checkers; annotations only, so an unfitted estimator still has none of them.
    classes_: np.ndarray
    n_features_in_: int
    feature_names_in_: np.ndarray
    selected_features_: np.ndarray
    sparse_weight_: np.ndarray
    sparse_bias_: np.ndarray
    feature_mean_: np.ndarray
    feature_std_: np.ndarray
    dense_mlp_state_: dict[str, np.ndarray]
    dense_head_state_: dict[str, np.ndarray]
    sparse_mlp_state_: dict[str, np.ndarray]
    selection_info_: dict[str, Any]
    history_: list[dict[str, Any]]

    _parameter_constraints: dict = {
        "n_features": [StrictInterval(Integral, 1, None, closed="left")],
        "n_selected": [StrictInterval(Integral, 1, None, closed="left")],
        "n_per_class": [StrictInterval(Integral, 1, None, closed="left"), "array-like", dict],
        "hidden_size": [StrictInterval(Integral, 1, None, closed="left")],
        "n_layers": [StrictInterval(Integral, 1, None, closed="left")],
        "dense_epochs": [StrictInterval(Integral, 1, None, closed="left")],
        "sparse_epochs": [StrictInterval(Integral, 0, None, closed="left")],
        "dense_batch_size": [StrictInterval(Integral, 1, None, closed="left")],
        "sparse_batch_size": [StrictInterval(Integral, 1, None, closed="left")],
        "dense_lr": [StrictInterval(Real, 0, None, closed="neither")],
        "sparse_lr": [StrictInterval(Real, 0, None, closed="neither")],
        "dense_weight_decay": [StrictInterval(Real, 0, None, closed="left")],
        "sparse_weight_decay": [StrictInterval(Real, 0, None, closed="left")],
        "dropout": [StrictInterval(Real, 0, 1, closed="left")],
        "dense_diversity": [StrictInterval(Real, 0, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [StrictInterval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [StrictInterval(Integral, 1, None, closed="left")],
        "class_weight": [dict, StrOptions({"balanced"}), None],
        "sparse_diversity": [StrictInterval(Real, 0, None, closed="left")],
        "l1_maps": [StrictInterval(Real, 0, None, closed="left")],
        "l1_features": [StrictInterval(Real, 0, None, closed="left")],
        "selection": [StrOptions({"qpm", "sldd", "qsenn"})],
        "redundancy": [StrOptions({"consistent", "paper"})],
        "solver_options": [dict, None],
        "exclude": ["array-like", None],
        "include": ["array-like", None],
        "fixed": [dict, None],
        "device": [str, torch.device, None],
        "memory": [None, str, HasMethods(["cache"])],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "feature_names": [dict, "array-like", None],
    }

    def __init__(
        self,
        n_features: int = 512,
        n_selected: int = 50,
        n_per_class: int | Sequence[int] | dict[Any, int] = 5,
        hidden_size: int = 2048,
        n_layers: int = 4,
        dense_epochs: int = 25,
        sparse_epochs: int = 25,
        dense_batch_size: int = 32,
        sparse_batch_size: int = 16,
        dense_lr: float = 1e-3,
        sparse_lr: float = 5e-3,
        dense_weight_decay: float = 7e-4,
        sparse_weight_decay: float = 8e-4,
        dropout: float = 0.2,
        dense_diversity: float = 0.5,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 10,
        class_weight: dict[Any, float] | Literal["balanced"] | None = None,
        sparse_diversity: float = 1.0,
        l1_maps: float = 5.0,
        l1_features: float = 1.0,
        selection: Literal["qpm", "sldd", "qsenn"] = "qpm",
        redundancy: Literal["paper", "consistent"] = "paper",
        solver_options: dict[str, Any] | None = None,
        exclude: Sequence[int] | None = None,
        include: Sequence[int] | None = None,
        fixed: dict[Any, Sequence[int]] | None = None,
        device: str | torch.device | None = None,
        memory: str | Memory | None = None,
        random_state: int | np.random.RandomState | None = None,
        verbose: int | bool = False,
        feature_names: dict[int, str] | Sequence[str] | None = None,
    ) -> None:
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
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.class_weight = class_weight
        self.sparse_diversity = sparse_diversity
        self.l1_maps = l1_maps
        self.l1_features = l1_features
        self.selection = selection
        self.redundancy = redundancy
        self.solver_options = solver_options
        self.exclude = exclude
        self.include = include
        self.fixed = fixed
        self.device = device
        self.memory = memory
        self.random_state = random_state
        self.verbose = verbose
        self.feature_names = feature_names

    # ------------------------------------------------------------------ fit
    def _check_budgets(self, n_classes: int, classes=None) -> None:
        if self.n_selected > self.n_features:
            raise ValueError(
                f"n_selected={self.n_selected} must not exceed n_features={self.n_features} "
                "(the selection picks among the adapter's channels)."
            )
        constrained = not isinstance(self.n_per_class, Integral) or any(
            value is not None for value in (self.exclude, self.include, self.fixed)
        )
        if constrained and self.selection != "qpm":
            raise ValueError(
                "exclude, include, fixed and per-class n_per_class apply to selection='qpm' only; "
                f"got selection={self.selection!r}."
            )
        if constrained or not isinstance(self.n_per_class, Integral):
            if classes is not None:
                self._selection_constraints(classes)
            return
        n_per_class = int(self.n_per_class)
        if n_per_class > self.n_selected:
            raise ValueError(
                f"n_per_class={self.n_per_class} must not exceed n_selected={self.n_selected}."
            )
        if self.selection == "qpm":
            check_selection_budget(self.n_selected, n_per_class, n_classes)

    def _selection_constraints(self, classes: np.ndarray) -> dict[str, Any]:
        """The selection's constraints in the solver's terms (class indices, channel ids), checked.

        ``n_per_class`` and ``fixed`` name classes by label; every error names the parameter.
        """
        n_classes = len(classes)
        budgets: Any = self.n_per_class
        if isinstance(budgets, dict):
            budgets = {self._label_index(classes, label, "n_per_class"): k for label, k in budgets.items()}
        elif not isinstance(budgets, Integral):
            budgets = np.asarray(budgets)
        fixed = None
        if self.fixed is not None:
            fixed = {self._label_index(classes, label, "fixed"): ids for label, ids in self.fixed.items()}
        checked = check_constraints(self.n_features, n_classes, self.n_selected, budgets, self.exclude, self.include,
                                    fixed)  # fmt: skip
        return dict(
            n_per_class=checked.budgets,
            exclude=checked.exclude if checked.exclude.size else None,
            include=checked.include if checked.include.size else None,
            fixed=checked.fixed or None,
        )

    @staticmethod
    def _label_index(classes: np.ndarray, label: object, name: str) -> int:
        matches = np.flatnonzero(classes == label)
        if len(matches) != 1:
            raise ValueError(f"{name} names class {label!r}, which is not one of the classes {classes.tolist()}.")
        return int(matches[0])

    def _solver_options(self) -> dict:
        """``solver_options`` checked before any training (a bad key fails now, not after the dense stage)."""
        if self.selection != "qpm":
            if self.solver_options:
                warnings.warn(
                    f"solver_options={self.solver_options!r} apply to selection='qpm' only; "
                    f"they are ignored with selection={self.selection!r}.",
                    UserWarning,
                    stacklevel=3,
                )
            return {}
        return check_solver_options(self.solver_options)

    def _sample_weight(self, sample_weight, y, tokens):
        """``sample_weight`` times the ``class_weight`` of each sample's class (float64, non-negative),
        or None for unweighted."""
        if sample_weight is None and self.class_weight is None:
            return None
        if self.selection != "qpm":
            given = "sample_weight" if sample_weight is not None else f"class_weight={self.class_weight!r}"
            raise ValueError(
                f"{given} is supported with selection='qpm' only; got selection={self.selection!r} "
                "(its elastic-net solvers are unweighted)."
            )
        sample_weight = _check_sample_weight(sample_weight, tokens, dtype=np.float64, ensure_non_negative=True)
        if self.class_weight is not None:
            per_sample = compute_sample_weight(self.class_weight, y)
            if not np.all(np.isfinite(per_sample) & (per_sample >= 0)):
                raise ValueError(f"class_weight must hold finite non-negative weights; got {self.class_weight!r}.")
            sample_weight = sample_weight * per_sample
        return check_sample_weight(
            sample_weight, len(y), name="sample_weight" if self.class_weight is None else "sample_weight times class_weight"
        )

    def _group_settings(self, group: str) -> dict:
        """The parameters of one group of :data:`PARAMETER_GROUPS`, from ``get_params``."""
        params = self.get_params(deep=False)
        return {name: params[name] for name in PARAMETER_GROUPS[group]}

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(
        self: _Classifier, X: npt.ArrayLike, y: npt.ArrayLike, sample_weight: npt.ArrayLike | None = None
    ) -> _Classifier:
        """Fit the dense stage, select features and fine-tune the sparse stage.

        All or nothing: every option is checked before training starts, the work
        is done in local variables, and the fitted attributes are set together at
        the end -- a fit that raises or is interrupted leaves the estimator as it
        was (unfitted, or with its previous model).

        Parameters
        ----------
        X : array-like of shape (n, h, w, d), (n, p, d) or (n, d)
            Patch embeddings (e.g. from :class:`Dinov2Embedder`).
        y : array-like of shape (n,)
            Class labels of any type.
        sample_weight : array-like of shape (n,), default=None
            Non-negative weight of every sample in both stages' losses and in the
            selection's statistics (feature-class correlations, standardisation):
            a weight of 2 counts as the sample twice. Multiplied by ``class_weight``.
            ``selection="qpm"`` only.

        Returns
        -------
        self : QPMClassifier

        Warns
        -----
        SlowCPUFitWarning
            Once, before training, when the fit runs on the CPU and is estimated to take
            more than 5 minutes of one core's time (:mod:`qpm_sklearn.cpu_cost`); it names
            the CPU-sized configuration.
        """
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None."
            )
        feature_names = _get_feature_names(X)
        tokens, grid = check_tokens(X, min_samples=2)
        labels = column_or_1d(y, warn=True)
        if len(labels) != len(tokens):
            raise ValueError(
                f"X and y must have the same number of samples; got {len(tokens)} samples in X "
                f"and {len(labels)} labels in y."
            )
        check_classification_targets(labels)
        classes, y_codes = np.unique(labels, return_inverse=True)
        n_classes = len(classes)
        if n_classes < 2:
            raise ValueError(
                f"y must contain at least 2 classes to train a classifier; got 1 class: {classes[0]!r}."
            )
        self._check_budgets(n_classes, classes)
        solver_options = self._solver_options()
        y_codes = y_codes.astype(np.int64)
        sample_weight = self._sample_weight(sample_weight, labels, tokens)
        device = resolve_device(self.device)
        if device.type == "cpu":
            rounds = QSENN_ROUNDS if self.selection == "qsenn" else 1
            seconds = estimated_cpu_seconds(
                *tokens.shape, hidden_size=self.hidden_size, n_features=self.n_features, n_layers=self.n_layers,
                epochs=self.dense_epochs + rounds * self.sparse_epochs,
            )  # fmt: skip
            warn_if_slow_on_cpu(seconds, stacklevel=3)
        memory = check_memory(self.memory)
        if getattr(memory, "location", None) is not None and self.random_state is None:
            warnings.warn(
                "memory= is set but random_state=None draws a new seed for every fit, so no cached dense "
                "stage can be reused; pass an int random_state.",
                UserWarning,
                stacklevel=2,
            )
        rng = check_random_state(self.random_state)
        dense_seed, selection_seed, sparse_seed = (torch_seed(rng) for _ in range(3))

        dense, staged = cached_dense_stage(
            memory, tokens, y_codes, sample_weight, grid, n_classes, self._group_settings("dense"), dense_seed, device,
            self.verbose,
        )
        if self.selection == "qpm":
            head = qpm_head(
                dense["features"], y_codes, n_classes, n_selected=self.n_selected, redundancy=self.redundancy,
                solver_options=solver_options, seed=selection_seed, verbose=self.verbose, sample_weight=sample_weight,
                **self._selection_constraints(classes),
            )  # fmt: skip
        else:
            head = sparse_head(
                self.selection, dense["features"], y_codes, n_selected=self.n_selected,
                n_per_class=self.n_per_class, n_classes=n_classes, random_state=selection_seed, verbose=self.verbose,
            )  # fmt: skip
        sparse_mlp_state, head, sparse_history = fit_sparse_stage(
            staged, y_codes, grid, n_classes, dense["mlp"], head, self._group_settings("sparse"),
            split_seed=selection_seed, seed=sparse_seed, device=device, sample_weight=sample_weight,
            verbose=self.verbose,
        )  # fmt: skip

        # The one place fitted state is written: a single dict update, after all the work.
        fitted = _fitted_state(
            classes, tokens.shape[-1], dense, sparse_mlp_state, head, sparse_history, feature_names
        )
        fitted["_networks"] = {}
        self.__dict__.pop("feature_names_in_", None)
        self.__dict__.update(fitted)
        return self

    # ------------------------------------------------------ derived state
    @property
    def assignment_(self) -> np.ndarray:
        return (self.sparse_weight_ != 0).astype(np.int8)

    @property
    def loss_curve_(self) -> np.ndarray:
        return np.array([row["loss"] for row in self.history_])

    @property
    def n_iter_(self) -> int:
        return len(self.history_)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_networks", None)  # torch modules: rebuilt from the numpy state when needed
        return state

    # ------------------------------------------------------------ networks
    def _network(self, stage: str, device: torch.device) -> QPMNetwork:
        """The torch network of ``stage``, built once from the fitted numpy state and cached.

        The cache entry holds the very arrays it was built from, so assigning new fitted
        arrays (a refit, a load) rebuilds it; it is never pickled.
        """
        sources: tuple[Any, ...]  # the fitted arrays (and dicts of arrays) of the stage
        if stage == "dense":
            sources = (self.dense_mlp_state_, self.dense_head_state_)
        else:
            sources = (self.sparse_mlp_state_, self.selected_features_, self.sparse_weight_,
                       self.sparse_bias_, self.feature_mean_, self.feature_std_)  # fmt: skip
        cache = self.__dict__.setdefault("_networks", {})
        entry = cache.get(stage)
        if entry is not None and entry[0] == str(device) and all(a is b for a, b in zip(entry[1], sources)):
            return entry[2]
        if stage == "dense":
            network = dense_network(self.dense_mlp_state_, self.dense_head_state_)
        else:
            head = HeadRecord(selected=self.selected_features_, weight=self.sparse_weight_, bias=self.sparse_bias_,
                              mean=self.feature_mean_, std=self.feature_std_, info={})  # fmt: skip
            network = sparse_network(self.sparse_mlp_state_, head)
        network = network.to(device).eval()
        cache[stage] = (str(device), sources, network)
        return network

    def _forward(self, X: npt.ArrayLike, stage: str, *, return_maps: bool = False) -> dict[str, Any]:
        check_is_fitted(self)
        if stage not in _STAGES:
            raise ValueError(f"stage must be one of {_STAGES}; got {stage!r}.")
        _check_feature_names(self, X, reset=False)
        tokens, grid = check_tokens(X, n_features_in=self.n_features_in_)
        device = resolve_device(self.device)
        out: dict[str, Any] = forward_in_batches(
            self._network(stage, device),
            tokens,
            grid=grid,
            batch_size=INFERENCE_BATCH_SIZE,
            device=device,
            return_maps=return_maps,
            check_input=False,
        )
        out["grid"] = grid
        return out

    # ----------------------------------------------------------- inference
    def decision_function(self, X: npt.ArrayLike, stage: Literal["sparse", "dense"] = "sparse") -> np.ndarray:
        """Class logits (for two classes, the logit of ``classes_[1]`` minus that of ``classes_[0]``).

        Parameters
        ----------
        X : array-like of shape (n, h, w, d), (n, p, d) or (n, d)
            Patch embeddings with the embedding size d seen in ``fit``.
        stage : {"sparse", "dense"}, default="sparse"
            The fine-tuned interpretable model, or the stage-1 dense model.

        Returns
        -------
        scores : ndarray of shape (n, n_classes), or (n,) for two classes
        """
        logits = self._forward(X, stage)["logits"]
        return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits

    def predict_proba(self, X: npt.ArrayLike, stage: Literal["sparse", "dense"] = "sparse") -> np.ndarray:
        """Class probabilities (softmax of the logits), columns in ``classes_`` order.

        Parameters
        ----------
        X : array-like of shape (n, h, w, d), (n, p, d) or (n, d)
            Patch embeddings with the embedding size d seen in ``fit``.
        stage : {"sparse", "dense"}, default="sparse"
            The fine-tuned interpretable model, or the stage-1 dense model.

        Returns
        -------
        proba : ndarray of shape (n, n_classes)
        """
        return softmax(self._forward(X, stage)["logits"], axis=1)

    def predict_log_proba(self, X: npt.ArrayLike, stage: Literal["sparse", "dense"] = "sparse") -> np.ndarray:
        """Logarithm of :meth:`predict_proba` (computed stably from the logits).

        Parameters
        ----------
        X : array-like of shape (n, h, w, d), (n, p, d) or (n, d)
            Patch embeddings with the embedding size d seen in ``fit``.
        stage : {"sparse", "dense"}, default="sparse"
            The fine-tuned interpretable model, or the stage-1 dense model.

        Returns
        -------
        log_proba : ndarray of shape (n, n_classes)
        """
        return log_softmax(self._forward(X, stage)["logits"], axis=1)

    def predict(self, X: npt.ArrayLike, stage: Literal["sparse", "dense"] = "sparse") -> np.ndarray:
        """Predicted class labels.

        Parameters
        ----------
        X : array-like of shape (n, h, w, d), (n, p, d) or (n, d)
            Patch embeddings with the embedding size d seen in ``fit``.
        stage : {"sparse", "dense"}, default="sparse"
            The fine-tuned interpretable model, or the stage-1 dense model.

        Returns
        -------
        labels : ndarray of shape (n,)
            Labels from ``classes_``.
        """
        logits = self._forward(X, stage)["logits"]
        return self.classes_[np.argmax(logits, axis=1)]

    def feature_maps(self, X: npt.ArrayLike, stage: Literal["sparse", "dense"] = "sparse") -> np.ndarray:
        """Raw feature maps on the patch grid.

        Parameters
        ----------
        X : array-like of shape (n, h, w, d), (n, p, d) or (n, d)
            Patch embeddings with the embedding size d seen in ``fit``.
        stage : {"sparse", "dense"}, default="sparse"
            The fine-tuned interpretable model, or the stage-1 dense model.

        Returns
        -------
        maps : ndarray of shape (n, K, h, w)
            K = ``n_selected`` (columns of ``assignment_``, in ``selected_features_``
            order) for the sparse stage, ``n_features`` for the dense stage.
        """
        return self._forward(X, stage, return_maps=True)["maps"]

    def pooled_features(self, X: npt.ArrayLike, stage: Literal["sparse", "dense"] = "sparse") -> np.ndarray:
        """Spatial means of the feature maps (raw, not standardised).

        Parameters
        ----------
        X : array-like of shape (n, h, w, d), (n, p, d) or (n, d)
            Patch embeddings with the embedding size d seen in ``fit``.
        stage : {"sparse", "dense"}, default="sparse"
            The fine-tuned interpretable model, or the stage-1 dense model.

        Returns
        -------
        features : ndarray of shape (n, K)
            K = ``n_selected`` (in ``selected_features_`` order) for the sparse stage,
            ``n_features`` for the dense stage.
        """
        return self._forward(X, stage)["features"]

    def class_weights(self, stage: Literal["sparse", "dense"] = "sparse") -> np.ndarray:
        """Head weights: ``sparse_weight_`` or the dense linear weight.

        Parameters
        ----------
        stage : {"sparse", "dense"}, default="sparse"
            The fine-tuned interpretable model, or the stage-1 dense model.

        Returns
        -------
        weights : ndarray of shape (n_classes, K)
            K = ``n_selected`` for the sparse stage, ``n_features`` for the dense stage.
        """
        check_is_fitted(self)
        if stage not in _STAGES:
            raise ValueError(f"stage must be one of {_STAGES}; got {stage!r}.")
        if stage == "sparse":
            return self.sparse_weight_
        return self.dense_head_state_["linear.weight"].copy()

    def _class_index(self, label: object) -> int:
        check_is_fitted(self)
        matches = np.flatnonzero(self.classes_ == label)
        if len(matches) != 1:
            raise ValueError(f"label must be one of classes_ {self.classes_.tolist()}; got {label!r}.")
        return int(matches[0])

    def class_features(self, label: object) -> np.ndarray:
        """Adapter channel ids of the features class ``label`` uses, ascending.

        Parameters
        ----------
        label : object
            One of ``classes_``.

        Returns
        -------
        features : ndarray of shape (k,)
            Channel ids from ``selected_features_`` (k = ``n_per_class`` for DINO-QPM).
        """
        index = self._class_index(label)
        row = self.sparse_weight_[index]
        return self.selected_features_[row != 0]

    def compare_classes(self, a: object, b: object) -> dict[str, np.ndarray]:
        """Shared and distinguishing features of two classes.

        Parameters
        ----------
        a, b : object
            Two of ``classes_``.

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

    def explain(self, X: npt.ArrayLike, target: object = None) -> Explanation:
        """Explain each prediction of the sparse model as a sum of localised features.

        Parameters
        ----------
        X : array-like of shape (n, h, w, d), (n, p, d) or (n, d)
            Patch embeddings with the embedding size d seen in ``fit``.
        target : label or array-like of shape (n,), default=None
            Explain this class (one label for all rows, or one per row) instead of the
            prediction: ``prediction``, ``logit``, ``features``, ``contributions`` and
            ``maps`` then describe the target class, while ``proba`` stays the model's
            (so ``proba.argmax(1)`` is still the prediction).

        Returns
        -------
        explanation : Explanation
        """
        out = self._forward(X, "sparse", return_maps=True)
        logits, maps, pooled = out["logits"], out["maps"], out["features"]
        predicted = np.argmax(logits, axis=1) if target is None else self._target_indices(target, len(logits))
        weight = self.sparse_weight_[predicted]  # (n, K)
        share = weight * standardise(pooled, self.feature_mean_, self.feature_std_)
        width = int((self.sparse_weight_ != 0).sum(axis=1).max())
        # the class's features, largest contribution first; non-members sort last
        order = np.argsort(np.where(weight != 0, -share, np.inf), axis=1, kind="stable")[:, :width]
        used = np.take_along_axis(weight, order, axis=1) != 0
        rows = np.arange(len(logits))[:, None]
        return Explanation(
            prediction=self.classes_[predicted],
            proba=softmax(logits, axis=1),
            classes=self.classes_,
            logit=logits[np.arange(len(logits)), predicted],
            intercept=self.sparse_bias_[predicted].astype(np.float32),
            features=np.where(used, self.selected_features_[order], -1),
            contributions=np.where(used, share[rows, order], 0.0).astype(np.float32),
            weights=np.where(used, weight[rows, order], 0.0).astype(np.float32),
            maps=np.where(used[:, :, None, None], maps[rows, order], 0.0).astype(np.float32),
            feature_names=estimator_feature_names(self),
        )

    def _target_indices(self, target: object, n: int) -> np.ndarray:
        """Class indices of ``target``: one label for all ``n`` rows, or one label per row."""
        if np.isscalar(target) or (isinstance(target, np.ndarray) and target.ndim == 0):
            return np.full(n, self._class_index(target), dtype=np.intp)
        labels = np.asarray(target, dtype=self.classes_.dtype if self.classes_.dtype.kind in "iuf" else object)
        if labels.shape != (n,):
            raise ValueError(f"target must be one label or one label per sample ({n}); got shape {labels.shape}.")
        return np.array([self._class_index(label) for label in labels], dtype=np.intp)

    # ------------------------------------------------------- what-if
    def intervene(self, X: npt.ArrayLike, interventions: dict) -> np.ndarray:
        """Class probabilities with chosen features forced to a value for every sample.

        Every logit is a sum of standardised pooled features, so forcing feature ``f`` to
        a value changes the logits of exactly the classes that use it.

        Parameters
        ----------
        X : array-like of shape (n, h, w, d), (n, p, d) or (n, d)
            Patch embeddings with the embedding size d seen in ``fit``.
        interventions : dict
            Selected channel id -> ``"off"`` (no activation: pooled value 0), ``"mean"``
            (the training mean ``feature_mean_``: a zero contribution) or a number (the raw
            pooled value to use).

        Returns
        -------
        proba : ndarray of shape (n, n_classes)
            Probabilities under the intervention, columns in ``classes_`` order.

        Examples
        --------
        >>> clf.intervene(X, {17: "off"}).argmax(1)  # doctest: +SKIP
        """
        check_is_fitted(self)
        if not isinstance(interventions, dict):
            raise TypeError(f"interventions must be a dict channel id -> 'off', 'mean' or a number; got {type(interventions).__name__}.")
        pooled = self.pooled_features(X).astype(np.float64)
        for channel, value in interventions.items():
            column = self._selected_column(channel, "interventions")
            if isinstance(value, str) and value in ("off", "mean"):
                pooled[:, column] = 0.0 if value == "off" else float(self.feature_mean_[column])
            elif isinstance(value, Real) and not isinstance(value, bool) and np.isfinite(float(value)):
                pooled[:, column] = float(value)
            else:
                raise ValueError(f"interventions[{channel!r}] must be 'off', 'mean' or a finite number; got {value!r}.")
        return softmax(self._head_logits(pooled), axis=1)

    def _head_logits(self, pooled: np.ndarray) -> np.ndarray:
        return head_logits(pooled, self.sparse_weight_, self.sparse_bias_, self.feature_mean_, self.feature_std_)

    def _selected_column(self, channel: object, name: str) -> int:
        if isinstance(channel, bool) or not isinstance(channel, (Integral, np.integer)):
            raise TypeError(f"{name} keys are adapter channel ids (ints); got {channel!r}.")
        matches = np.flatnonzero(self.selected_features_ == channel)
        if len(matches) != 1:
            raise ValueError(
                f"{name} names channel {channel}, which is not a selected feature; selected_features_ is "
                f"{self.selected_features_.tolist()}."
            )
        return int(matches[0])

    def counterfactual(self, X: npt.ArrayLike, target: object) -> Counterfactual:
        """For every sample, the smallest change of one of the target's features that makes the target the prediction.

        Closed form from the linear head (:func:`qpm_sklearn.counterfactual.single_feature_counterfactuals`):
        the change of one raw pooled activation, all others as they are, at which the
        target's logit meets the best other one; ``inf`` where that feature cannot do it.

        Parameters
        ----------
        X : array-like of shape (n, h, w, d), (n, p, d) or (n, d)
            Patch embeddings with the embedding size d seen in ``fit``.
        target : label or array-like of shape (n,)
            The class to reach, for all samples or per sample.

        Returns
        -------
        counterfactual : Counterfactual
            ``features (n, k)`` (the target's channel ids), ``delta (n, k)`` (raw change),
            ``delta_standardised``, ``best (n,)``.

        Examples
        --------
        >>> cf = clf.counterfactual(X, target="Rusty Blackbird")  # doctest: +SKIP
        >>> cf.to_frame()  # doctest: +SKIP
        """
        pooled = self.pooled_features(X).astype(np.float64)
        targets = self._target_indices(target, len(pooled))
        columns, delta = single_feature_counterfactuals(
            pooled, targets, self.sparse_weight_, self.sparse_bias_, self.feature_mean_, self.feature_std_
        )
        scale = np.maximum(self.feature_std_.astype(np.float64), 1e-6)
        standardised = np.where(columns >= 0, delta / scale[np.maximum(columns, 0)], np.inf)
        finite = np.isfinite(standardised)
        best = np.where(finite.any(1), np.argmin(np.where(finite, np.abs(standardised), np.inf), axis=1), -1)
        prediction = self.classes_[np.argmax(self._head_logits(pooled), axis=1)]
        return Counterfactual(
            target=self.classes_[targets],
            prediction=prediction,
            features=np.where(columns >= 0, self.selected_features_[np.maximum(columns, 0)], -1),
            delta=delta,
            delta_standardised=standardised,
            best=best.astype(np.intp),
            feature_names=estimator_feature_names(self),
        )

    # ------------------------------------------------------------ edit
    def edit(
        self: _Classifier,
        X: npt.ArrayLike,
        y: npt.ArrayLike,
        *,
        exclude: Sequence[int] | None = None,
        include: Sequence[int] | None = None,
        fixed: dict[Any, Sequence[int]] | None = None,
        n_per_class: int | Sequence[int] | dict[Any, int] | None = None,
        sparse_epochs: int | None = None,
        sample_weight: npt.ArrayLike | None = None,
    ) -> _Classifier:
        """A new model with the selection re-solved under constraints; the dense stage is reused.

        The dense stage is not retrained: its pooled features of ``X`` (from the stored
        dense network) give the selection's statistics, the selection is solved again
        under the constraints, warm-started from the current selection (an edit without
        constraints keeps it unless a strictly better one is found), and only the sparse
        stage is trained, from the dense stage's MLP as in ``fit`` (``sparse_epochs=0``:
        the new head on the dense features, no fine-tuning). This model is left as it was.

        Constraints left at None keep this model's values; a given one replaces it (pass
        ``[]`` or ``{}`` to drop one). The edited model's parameters hold the constraints,
        so ``fit`` with them (and ``memory=``) reproduces the edit.

        Parameters
        ----------
        X : array-like of shape (n, h, w, d), (n, p, d) or (n, d)
            Patch embeddings, normally the training set.
        y : array-like of shape (n,)
            Their labels (from ``classes_``).
        exclude, include : array-like of int, optional
            Adapter channel ids the selection must not use / must keep.
        fixed : dict, optional
            ``{label: channel ids}`` a class must use.
        n_per_class : int, array-like of int or dict, optional
            New budgets: one for all, one per class, or ``{label: k}`` for some classes
            (the others keep theirs).
        sparse_epochs : int, optional
            Epochs of the sparse stage (default: the model's ``sparse_epochs``).
        sample_weight : array-like of shape (n,), optional
            As in ``fit``.

        Returns
        -------
        edited : QPMClassifier
            A new fitted model; ``selection_info_["edit"]`` records the constraints, the
            objective before and after and the certified gap.

        Examples
        --------
        >>> edited = clf.edit(X, y, exclude=[17])  # doctest: +SKIP
        >>> 17 in edited.selected_features_  # doctest: +SKIP
        False
        """
        check_is_fitted(self)
        if self.selection != "qpm":
            raise ValueError(
                f"edit() re-solves the DINO-QPM selection; this model was fitted with selection={self.selection!r}, "
                "whose head is no selection an edit could constrain."
            )
        tokens, grid = check_tokens(X, n_features_in=self.n_features_in_, min_samples=2)
        labels = column_or_1d(y, warn=True)
        if len(labels) != len(tokens):
            raise ValueError(f"X and y must have the same number of samples; got {len(tokens)} and {len(labels)}.")
        unknown = [label for label in np.unique(labels).tolist() if not np.any(self.classes_ == label)]
        if unknown:
            raise ValueError(f"y holds labels {unknown} that are not in classes_ {self.classes_.tolist()}.")
        y_codes = np.searchsorted(self.classes_, labels).astype(np.int64)
        changes: dict[str, Any] = {name: value for name, value in
                                   (("exclude", exclude), ("include", include), ("fixed", fixed)) if value is not None}
        if n_per_class is not None:
            if isinstance(n_per_class, dict):  # some classes: the others keep their budget
                current = self._selection_constraints(self.classes_)["n_per_class"]
                budgets = np.broadcast_to(np.asarray(current), (len(self.classes_),)).astype(np.int64).copy()
                for label, k in n_per_class.items():
                    budgets[self._label_index(self.classes_, label, "n_per_class")] = k
                n_per_class = {label: int(k) for label, k in zip(self.classes_.tolist(), budgets)}
            changes["n_per_class"] = n_per_class
        if sparse_epochs is not None:
            changes["sparse_epochs"] = sparse_epochs
        edited = clone(self).set_params(**changes)
        edited._validate_params()
        edited._check_budgets(len(self.classes_), self.classes_)
        constraints = edited._selection_constraints(self.classes_)
        sample_weight = edited._sample_weight(sample_weight, labels, tokens)
        rng = check_random_state(edited.random_state)  # the clone's copy: this model's state stays as it is
        _, selection_seed, sparse_seed = (torch_seed(rng) for _ in range(3))  # the seeds fit draws
        device = resolve_device(self.device)
        dense_features = self._forward(X, "dense")["features"]
        head = qpm_head(
            dense_features, y_codes, len(self.classes_), n_selected=self.n_selected, redundancy=self.redundancy,
            solver_options=self._solver_options(), seed=selection_seed, verbose=self.verbose,
            sample_weight=sample_weight, initial=self.selected_features_, **constraints,
        )  # fmt: skip
        staged = tokens_on_device(tokens, device, check_input=False)
        sparse_mlp_state, head, sparse_history = fit_sparse_stage(
            staged, y_codes, grid, len(self.classes_), self.dense_mlp_state_, head, edited._group_settings("sparse"),
            split_seed=selection_seed, seed=sparse_seed, device=device, sample_weight=sample_weight,
            verbose=self.verbose,
        )  # fmt: skip
        record = {
            "objective_before": float(self.selection_info_.get("objective", float("nan"))),
            "objective_after": float(head.info["objective"]),
            "upper_bound": float(head.info["upper_bound"]),
            "gap": float(head.info["gap"]),
            "selected_before": self.selected_features_.tolist(),
            "removed": np.setdiff1d(self.selected_features_, head.selected).tolist(),
            "added": np.setdiff1d(head.selected, self.selected_features_).tolist(),
            "constraints": _json_constraints(changes),
        }
        head = replace(head, info=dict(head.info, edit=record))
        dense = {"mlp": self.dense_mlp_state_, "head": self.dense_head_state_,
                 "history": [{k: v for k, v in row.items() if k != "stage"} for row in self.history_
                             if row.get("stage") == "dense"]}  # fmt: skip
        fitted = _fitted_state(self.classes_, self.n_features_in_, dense, sparse_mlp_state, head, sparse_history,
                               getattr(self, "feature_names_in_", None))  # fmt: skip
        fitted["_networks"] = {}
        edited.__dict__.update(fitted)
        edited.feature_names = _kept_feature_names(self.feature_names, self.selected_features_, head.selected)
        return edited

    def summary(self) -> str:
        """A text table of each class and the features it uses, with their weights.

        Features are named by ``feature_names`` (else ``"feature <id>"``) and
        ordered by decreasing absolute weight; a column of class constants is
        added when any is non-zero (the comparison systems).

        Returns
        -------
        text : str
            A title line, then one line per class.

        Examples
        --------
        >>> print(clf.set_params(feature_names={3: "red crown"}).summary())  # doctest: +SKIP
        QPMClassifier(selection='qpm'): 3 classes, 6 selected features, 2 per class
        class  features (weight)
        -----  ---------------------------
        0      red crown (+1), feature 7 (+1)
        ...
        """
        check_is_fitted(self)
        per_class = np.count_nonzero(self.sparse_weight_, axis=1)
        width = f"{per_class.min()}" if per_class.min() == per_class.max() else f"{per_class.min()} to {per_class.max()}"
        title = (
            f"{type(self).__name__}(selection={self.selection!r}): {len(self.classes_)} classes, "
            f"{len(self.selected_features_)} selected features, {width} per class"
        )
        return class_summary(
            self.classes_, self.selected_features_, self.sparse_weight_, self.sparse_bias_,
            estimator_feature_names(self), title,
        )  # fmt: skip

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save the fitted model to ``path`` (``.npz``: arrays + JSON, no pickle).

        Loading it with :meth:`load` executes no code, unlike pickle. The file holds the
        parameters (``memory`` as ``null``) and the attributes of :data:`FITTED_ARRAYS`,
        :data:`FITTED_STATES` and :data:`FITTED_VALUES`; see :mod:`qpm_sklearn.persistence`.

        Parameters
        ----------
        path : str or os.PathLike
            Where to write, atomically (a failed save leaves a previous file intact).
            A name that does not end in ``.npz`` gets it appended (``"model"`` writes
            ``model.npz``, ``"model.v1"`` writes ``model.v1.npz``); :meth:`load` applies the
            same rule, so ``load("model")`` reads it back.

        Returns
        -------
        path : pathlib.Path
            The file written.
        """
        check_is_fitted(self)
        name = type(self).__name__
        declared = set(FITTED_ARRAYS) | set(FITTED_STATES) | set(FITTED_VALUES) | set(OPTIONAL_FITTED_VALUES)
        undeclared = sorted(k for k in vars(self) if k.endswith("_") and not k.startswith("_") and k not in declared)
        if undeclared:
            raise TypeError(f"save(): {name} has fitted attributes {undeclared} that format version {FORMAT_VERSION} does not declare.")
        arrays = {attribute: np.asarray(getattr(self, attribute)) for attribute in FITTED_ARRAYS}
        arrays["classes_"] = _storable_classes(arrays["classes_"])
        arrays["assignment_"] = self.assignment_
        values = {attribute: getattr(self, attribute) for attribute in FITTED_VALUES}
        if "feature_names_in_" in vars(self):
            values["feature_names_in_"] = [str(feature) for feature in self.feature_names_in_]
        params = self.get_params(deep=False)
        params["memory"] = None  # a cache location belongs to a machine, not to the model
        states = {attribute: getattr(self, attribute) for attribute in FITTED_STATES}
        return write_model_file(path, name, params, arrays, states, values)

    @classmethod
    def load(cls: type[_Classifier], path: str | os.PathLike[str]) -> _Classifier:
        """Load a model written by :meth:`save`, checked as ``fit`` checks its inputs.

        The parameters go through the parameter validation and the budget checks of
        ``fit``; the fitted attributes must be exactly those :meth:`save` writes, with
        their dtypes and shapes consistent with each other and with the parameters; the
        network states are loaded, strictly, into networks built from the parameters.

        Parameters
        ----------
        path : str or os.PathLike
            A file written by :meth:`save`: ``path`` as given when it exists, else ``path``
            with ``.npz`` appended (the name :meth:`save` writes for a path without it).

        Returns
        -------
        estimator : QPMClassifier
            The fitted estimator (``memory=None``; set it again with ``set_params``).

        Raises
        ------
        FileNotFoundError
            When neither ``path`` nor ``path`` + ``.npz`` exists.
        ValueError
            For any defect of the file (another format version -- a newer one asks to
            upgrade qpm_sklearn --, invalid parameters, a
            missing, extra or misshapen array), naming the file and the defect.
        """
        return read_model_file(path, cls.__name__, cls._from_model_file)

    @classmethod
    def _from_model_file(cls: type[_Classifier], params: dict, contents: dict, values: dict) -> _Classifier:
        """The estimator of a model file's decoded parameters and stored fitted state, checked."""
        estimator = cls()
        expected = set(estimator.get_params(deep=False))
        for name in _LATER_PARAMETERS:  # files written before these parameters existed hold their default
            params.setdefault(name, None)
        if set(params) != expected:
            missing, unknown = sorted(expected - set(params)), sorted(set(params) - expected)
            raise ModelFileDefect(f"the parameters do not match {cls.__name__}'s: missing {missing}, unknown {unknown}")
        if params["memory"] is not None:
            raise ModelFileDefect(f"parameter 'memory' must be null in a model file (it is never saved); got {params['memory']!r}")
        try:
            estimator.set_params(**params)
            estimator._validate_params()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "ignored with selection=..." is no defect of the file
                estimator._solver_options()
        except (ValueError, TypeError) as exc:
            raise ModelFileDefect(f"invalid parameters: {exc}") from None
        estimator.__dict__.update(estimator._checked_fitted_state(contents, values))
        return estimator

    def _checked_fitted_state(self, contents: dict, values: dict) -> dict:
        """The fitted attributes of a model file, checked against the schema and the parameters."""
        fitted: dict[str, Any] = {}

        def is_count(value):
            return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)) and value >= 1

        def is_records(value):
            return isinstance(value, list) and all(isinstance(row, dict) for row in value)

        n_in = fitted["n_features_in_"] = take_value(values, "n_features_in_", is_count, "a positive int")
        fitted["selection_info_"] = take_value(values, "selection_info_", lambda v: isinstance(v, dict), "a dict")
        fitted["history_"] = take_value(values, "history_", is_records, "a list of dicts")
        if "feature_names_in_" in values:
            names = values.pop("feature_names_in_")
            if not (isinstance(names, list) and len(names) == n_in and all(type(n) is str for n in names)):
                raise ModelFileDefect(f"feature_names_in_ must be a list of {n_in} strings; got {short(names)}")
            fitted["feature_names_in_"] = np.asarray(names, dtype=object)
        if values:
            raise ModelFileDefect(f"unexpected values {sorted(values)}: format version {FORMAT_VERSION} does not declare them")

        classes = fitted["classes_"] = take_array(contents, "classes_", FITTED_ARRAYS["classes_"], (None,))
        if len(classes) < 2 or not np.array_equal(classes, np.unique(classes)):
            raise ModelFileDefect(f"classes_ must be at least 2 distinct labels in sorted order; got {short(classes.tolist())}")
        n_classes = len(classes)
        try:
            self._check_budgets(n_classes, classes)
            budgets = self._selection_constraints(classes)["n_per_class"] if self.selection == "qpm" else None
        except (ValueError, TypeError) as exc:
            raise ModelFileDefect(f"invalid parameters: {exc}") from None
        selected = fitted["selected_features_"] = take_array(
            contents, "selected_features_", FITTED_ARRAYS["selected_features_"], (None,)
        )
        n_selected = len(selected)
        if n_selected == 0 or np.any(np.diff(selected) <= 0) or selected[0] < 0 or selected[-1] >= self.n_features:
            raise ModelFileDefect(f"selected_features_ must be increasing channel ids in [0, n_features={self.n_features})")
        shapes = {"sparse_weight_": (n_classes, n_selected), "sparse_bias_": (n_classes,),
                  "feature_mean_": (n_selected,), "feature_std_": (n_selected,)}  # fmt: skip
        for name, shape in shapes.items():
            fitted[name] = take_array(contents, name, FITTED_ARRAYS[name], shape)
        weight = fitted["sparse_weight_"]
        if np.any(fitted["feature_std_"] < 0):
            raise ModelFileDefect("feature_std_ holds negative values")
        if self.selection == "qpm":
            ones = weight != 0
            if n_selected != self.n_selected or np.any(weight[ones] != 1) or np.any(ones.sum(axis=1) != budgets):
                raise ModelFileDefect(
                    f"with selection='qpm' the sparse head must be 0/1 with n_per_class={self.n_per_class} ones per "
                    f"class over n_selected={self.n_selected} features; got shape {weight.shape}"
                )
        assignment = take_array(contents, "assignment_", "iub", (n_classes, n_selected))
        if not np.array_equal(assignment, weight != 0):
            raise ModelFileDefect("assignment_ does not match the non-zeros of sparse_weight_")
        try:
            SparseHead(weight, fitted["feature_mean_"], fitted["feature_std_"], bias=fitted["sparse_bias_"])
        except (ValueError, TypeError) as exc:
            raise ModelFileDefect(str(exc)) from None

        def mlp():
            return TokenMLP(n_in, self.hidden_size, self.n_features, self.n_layers)

        builders = {"dense_mlp_state_": mlp, "sparse_mlp_state_": mlp,
                    "dense_head_state_": lambda: DenseHead(self.n_features, n_classes)}  # fmt: skip
        for attribute in FITTED_STATES:
            state = fitted[attribute] = take_state(contents, attribute)
            try:
                load_network_state(empty_network(builders[attribute]), state)
            except (ValueError, TypeError, RuntimeError) as exc:
                raise ModelFileDefect(f"{attribute} does not fit the network the parameters describe: {exc}") from None
        if contents:
            raise ModelFileDefect(f"unexpected entries {sorted(contents)}: format version {FORMAT_VERSION} does not declare them")
        return fitted

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        # X is (n, d), (n, p, d) or (n, h, w, d); scikit-learn's tags have no 4-D entry.
        tags.input_tags.three_d_array = True
        return tags

