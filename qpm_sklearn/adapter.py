"""Torch modules of the QPM adapter (docs/method.md#adapter); no training logic here.

The adapter sits on frozen backbone patch tokens: a token-wise MLP turns every
token into ``N_f`` non-negative channels (the feature maps), average pooling
gives the feature vector, and a head maps it to class logits -- a dense linear
layer in the first stage, the fixed binary assignment ("BLDD") in the sparse
stage. Only patch tokens enter the MLP and its BatchNorm statistics (docs/method.md#tokens).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

__all__ = [
    "TokenMLP",
    "DenseHead",
    "SparseHead",
    "QPMNetwork",
    "standardise",
    "standardise_tensor",
    "empty_network",
    "init_parameters",
    "mlp_from_state",
    "network_state",
    "load_network_state",
]

# Standardisation divides by max(std, STD_FLOOR) (docs/method.md#sparse-head).
STD_FLOOR = 1e-6

_Module = TypeVar("_Module", bound=nn.Module)
# standardise works on either, the three arguments of one kind.
_Array = TypeVar("_Array", torch.Tensor, np.ndarray)


class TokenMLP(nn.Module):
    """Token-wise MLP: ``n_layers`` blocks of Linear -> BatchNorm -> ReLU (docs/method.md#adapter).

    The last block maps to ``n_features`` channels and also ends in a ReLU, so
    every feature map is non-negative. BatchNorm statistics are pooled over
    batch x tokens (eps 1e-5, momentum 0.1). The Linear layers have no bias:
    the BatchNorm after each subtracts the batch mean, so a bias there is the
    same model with a parameter whose true gradient is zero -- and AdamW turned
    its rounding noise into learning-rate-sized steps that differ with the
    number of CPU threads. Weights use PyTorch's default initialisation drawn
    from the global RNG at construction; the estimators build the MLP with
    :func:`empty_network` and draw from a seeded generator
    (:func:`init_parameters`) instead.

    Parameters
    ----------
    in_features : int
        Backbone embedding size ``D``.
    hidden_size : int
        Width of the hidden blocks.
    n_features : int
        Number of output channels ``N_f`` (feature maps).
    n_layers : int
        Number of Linear/BatchNorm/ReLU blocks; 1 means a single ``D -> N_f`` block.
    """

    def __init__(self, in_features: int, hidden_size: int, n_features: int, n_layers: int) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1; got {n_layers!r}.")
        widths = [in_features] + [hidden_size] * (n_layers - 1) + [n_features]
        blocks = []
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            # ReLU in place: BatchNorm's backward needs its input, not its output.
            blocks += [nn.Linear(width_in, width_out, bias=False), nn.BatchNorm1d(width_out), nn.ReLU(inplace=True)]
        self.layers = nn.Sequential(*blocks)
        self.n_features = n_features

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, n_tokens, dim = tokens.shape  # (B, P, D)
        # Rows of a 2-D BatchNorm1d input are the statistics population: B*P tokens.
        out = tokens.reshape(batch * n_tokens, dim)
        if torch.jit.is_scripting():  # TorchScript (export, serving): PyTorch's own BatchNorm kernel
            return self.layers(out).reshape(batch, n_tokens, -1)
        for layer in self.layers:
            if isinstance(layer, nn.BatchNorm1d) and layer.training and out.device.type == "cpu":
                out = _thread_stable_batch_norm(out, layer)
            else:
                out = layer(out)  # (B*P, width)
        return out.reshape(batch, n_tokens, -1)  # (B, P, N_f)


def _thread_stable_batch_norm(rows: torch.Tensor, norm: nn.BatchNorm1d) -> torch.Tensor:
    """Training-mode BatchNorm1d of ``rows`` (N, C) whose result does not depend on the CPU thread count.

    PyTorch's CPU kernel splits the statistics' sums over threads, so 1 and 2 threads
    round differently and training drifts apart. Here the statistics are column means --
    reductions torch parallelises over the columns only -- in a function with its own
    backward (:class:`_ColumnBatchNorm`), whose reductions are column sums as well. Same
    formula as the kernel: biased variance to normalise, unbiased variance into
    ``running_var``, ``momentum`` (default 0.1) for both running statistics.
    """
    n_rows = rows.shape[0]
    weight = norm.weight if norm.affine else torch.ones(rows.shape[1], dtype=rows.dtype, device=rows.device)
    bias = norm.bias if norm.affine else torch.zeros(rows.shape[1], dtype=rows.dtype, device=rows.device)
    out, mean, var = _ColumnBatchNorm.apply(rows, weight, bias, norm.eps)
    tracked, running_mean, running_var = norm.num_batches_tracked, norm.running_mean, norm.running_var
    if norm.track_running_stats and tracked is not None and running_mean is not None and running_var is not None:
        with torch.no_grad():
            tracked.add_(1)
            momentum = norm.momentum if norm.momentum is not None else 1.0 / float(tracked)
            unbiased = var * (n_rows / max(n_rows - 1, 1))
            running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
            running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
    return out


class _ColumnBatchNorm(torch.autograd.Function):
    """``(x - mean) / sqrt(var + eps) * weight + bias`` over the rows, with a hand-written backward.

    Autograd through the plain formula kept six (N, C) intermediates and ran a dozen passes
    over them; this keeps the normalised rows and makes four passes each way. The backward is
    the standard one, ``dx = weight / sqrt(var + eps) * (g - mean(g) - x_hat * mean(g * x_hat))``,
    with column sums only (thread-count independent, like the forward's statistics).
    Returns ``(out, mean, var)``; the statistics carry no gradient.
    """

    @staticmethod
    def forward(ctx, rows, weight, bias, eps):
        mean = rows.mean(0)
        centered = rows - mean
        var = (centered * centered).mean(0)
        inverse_std = torch.rsqrt(var + eps)
        normalised = centered.mul_(inverse_std)  # in place: centered is not needed any more
        out = torch.addcmul(bias, normalised, weight)
        ctx.save_for_backward(normalised, weight, inverse_std)
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        normalised, weight, inverse_std = ctx.saved_tensors
        n_rows = normalised.shape[0]
        grad_bias = grad_out.sum(0)
        grad_weight = (grad_out * normalised).sum(0)
        grad_rows = None
        if ctx.needs_input_grad[0]:
            # (g - sum(g)/N - x_hat * sum(g x_hat)/N) * weight * inverse_std, two passes over (N, C)
            grad_rows = torch.addcmul(grad_out - grad_bias / n_rows, normalised, grad_weight / -n_rows)
            grad_rows.mul_(weight * inverse_std)
        return grad_rows, grad_weight, grad_bias, None


class DenseHead(nn.Module):
    """Stage-1 head: Dropout(p) -> Linear(N_f -> C) with bias (docs/method.md#dense-head).

    ``forward(f)`` returns ``(logits (B, C), f_tilde (B, N_f))``, ``f_tilde`` being
    the post-dropout feature vector the diversity loss reads. ``.weight`` is the
    (C, N_f) weight parameter.
    """

    def __init__(self, n_features: int, n_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(n_features, n_classes)

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features_tilde = self.dropout(features)  # (B, N_f)
        return self.linear(features_tilde), features_tilde  # (B, C), (B, N_f)


class SparseHead(nn.Module):
    """Sparse (BLDD) head: ``logits = W (dropout(f_S) - mu) / max(sigma, 1e-6) + bias`` (docs/method.md#sparse-head).

    ``W`` (C, K) and ``bias`` (C,) are frozen buffers. ``mean``/``std`` (K,) are
    frozen buffers too, or trainable parameters when ``train_stats=True`` (the
    SLDD / Q-SENN fine-tuning of docs/baselines.md).

    Parameters
    ----------
    weight : array-like or Tensor of shape (C, K)
        The class-feature weights (0/1 assignment for QPM).
    mean, std : array-like or Tensor of shape (K,)
        Standardisation statistics of the selected features.
    bias : array-like or Tensor of shape (C,), default=None
        No bias when None (QPM).
    train_stats : bool, default=False
    dropout : float, default=0.0
        Dropout on the selected feature vector before standardisation.
    """

    if TYPE_CHECKING:
        # Buffers (parameters for mean/std when train_stats), registered in __init__. For type
        # checkers only: torch.jit.script infers the types from the values and cannot parse these.
        weight: torch.Tensor
        bias: torch.Tensor | None
        mean: torch.Tensor
        std: torch.Tensor

    def __init__(
        self,
        weight: npt.ArrayLike | torch.Tensor,
        mean: npt.ArrayLike | torch.Tensor,
        std: npt.ArrayLike | torch.Tensor,
        bias: npt.ArrayLike | torch.Tensor | None = None,
        train_stats: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        weight = _float_tensor(weight, "weight")
        mean, std = _float_tensor(mean, "mean"), _float_tensor(std, "std")
        if weight.ndim != 2:
            raise ValueError(f"weight must be 2-D (n_classes, n_selected); got shape {tuple(weight.shape)}.")
        n_classes, n_selected = weight.shape
        for name, value in (("mean", mean), ("std", std)):
            if value.shape != (n_selected,):
                raise ValueError(f"{name} must have shape ({n_selected},) to match weight; got {tuple(value.shape)}.")
        self.register_buffer("weight", weight)
        if bias is None:
            self.register_buffer("bias", None)
        else:
            bias = _float_tensor(bias, "bias")
            if bias.shape != (n_classes,):
                raise ValueError(f"bias must have shape ({n_classes},) to match weight; got {tuple(bias.shape)}.")
            self.register_buffer("bias", bias)
        if train_stats:
            self.mean, self.std = nn.Parameter(mean), nn.Parameter(std)
        else:
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features_tilde = self.dropout(features)  # (B, K)
        logits = standardise_tensor(features_tilde, self.mean, self.std) @ self.weight.T  # (B, C)
        if self.bias is not None:
            logits = logits + self.bias
        return logits, features_tilde


class QPMNetwork(nn.Module):
    """MLP + pooling + head; optionally restricted to the selected channels (sparse stage).

    ``forward(tokens (B, P, D), grid (h, w))`` returns ``(logits (B, C), maps
    (B, K, h, w), features_tilde (B, K))`` where ``K = N_f`` without selection
    and ``len(selected)`` with it; ``features_tilde`` is the pooled feature
    vector *after* the head's dropout (the one the diversity loss reads), equal
    to the pooled features in eval mode. Maps and pooled features are computed in
    float32 even when the MLP runs under bf16 autocast; the head (tiny) is
    evaluated in float32 as well so logits do not carry bf16 rounding.

    Parameters
    ----------
    mlp : TokenMLP
    head : DenseHead or SparseHead
    selected : sequence of int or LongTensor, default=None
        Adapter channel ids kept in the sparse stage (the head then has K inputs).
    """

    if TYPE_CHECKING:  # a buffer, registered in __init__ (hidden from torch.jit.script, as in SparseHead)
        selected: torch.Tensor | None

    def __init__(
        self, mlp: TokenMLP, head: DenseHead | SparseHead, selected: npt.ArrayLike | torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.mlp = mlp
        self.head = head
        if selected is not None:
            selected = torch.as_tensor(np.asarray(selected), dtype=torch.long)
            if selected.ndim != 1:
                raise ValueError(f"selected must be 1-D channel ids; got shape {tuple(selected.shape)}.")
        # Not persistent: the estimator stores the selection itself.
        self.register_buffer("selected", selected, persistent=False)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        height, width = grid
        batch, n_tokens, _ = tokens.shape  # (B, P, D)
        if n_tokens != height * width:
            raise ValueError(f"grid {tuple(grid)} does not match the {n_tokens} tokens per sample.")
        out = self.mlp(tokens)  # (B, P, N_f)
        if self.selected is not None:
            out = out.index_select(2, self.selected)  # (B, P, K)
        out = out.float()
        maps = out.transpose(1, 2).reshape(batch, -1, height, width)  # (B, K, h, w), a view
        features = out.mean(1)  # (B, K)
        if torch.jit.is_scripting():  # TorchScript takes no autocast of a runtime device; it runs without one
            logits, features_tilde = self.head(features)
        else:
            with torch.autocast(device_type=tokens.device.type, enabled=False):
                logits, features_tilde = self.head(features)  # (B, C), (B, K)
        return logits, maps, features_tilde


def standardise(features: _Array, mean: _Array, std: _Array) -> _Array:
    """The standardised feature ``(f - mean) / max(std, 1e-6)`` (docs/method.md#sparse-head), on tensors or numpy arrays.

    The sparse head's forward pass and the classifier's explanations both use it, so a
    contribution always equals its share of the logit.
    """
    if isinstance(features, torch.Tensor) and isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor):
        return standardise_tensor(features, mean, std)
    return (features - mean) / np.maximum(std, STD_FLOOR)


def standardise_tensor(
    features: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, floor: float = STD_FLOOR
) -> torch.Tensor:
    """:func:`standardise` on tensors, in a form ``torch.jit.script`` compiles (the floor an argument, not a global)."""
    return (features - mean) / std.clamp(min=floor)


def empty_network(build: Callable[[], _Module]) -> _Module:
    """The module ``build()`` returns, constructed on the meta device: no weights allocated or drawn.

    Fill it with :func:`load_network_state` (which assigns the arrays) or materialise it
    with ``module.to_empty(device="cpu")`` and :func:`init_parameters`.
    """
    with torch.device("meta"):
        return build()


def init_parameters(module: _Module, generator: torch.Generator) -> _Module:
    """PyTorch's default initialisation of every Linear and BatchNorm in ``module``, drawn from ``generator``.

    Linear weights are Kaiming-uniform (``a = sqrt(5)``) and biases uniform on
    ``±1/sqrt(fan_in)``, in module order -- the draws ``nn.Linear.reset_parameters``
    makes from the global RNG, so ``torch.manual_seed(s)`` before construction and
    ``generator.manual_seed(s)`` here give the same weights, without touching the
    global RNG. BatchNorm is reset to ones/zeros (nothing random).
    """
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
                if layer.bias is not None:
                    bound = 1.0 / math.sqrt(layer.in_features) if layer.in_features > 0 else 0.0
                    nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
            elif isinstance(layer, nn.BatchNorm1d):
                layer.reset_parameters()
    return module


def mlp_from_state(state: dict[str, np.ndarray]) -> TokenMLP:
    """The :class:`TokenMLP` whose :func:`network_state` is ``state``; its architecture read from the shapes.

    Built without random initialisation. Raises ``ValueError`` when ``state`` is not the
    state of a TokenMLP.
    """
    weights: list[tuple[int, ...]] = []
    while f"layers.{3 * len(weights)}.weight" in state:
        weights.append(np.shape(state[f"layers.{3 * len(weights)}.weight"]))
    if not weights or any(len(shape) != 2 for shape in weights):
        raise ValueError("state is not the state of a TokenMLP (no 2-D 'layers.<i>.weight' arrays).")
    in_features, hidden_size, n_features = weights[0][1], weights[0][0], weights[-1][0]
    mlp = empty_network(lambda: TokenMLP(in_features, hidden_size, n_features, len(weights)))
    return load_network_state(mlp, state)


def network_state(network: nn.Module) -> dict[str, np.ndarray]:
    """The network's ``state_dict`` as host numpy arrays (float32; integer counters kept as int64).

    BatchNorm running statistics are included, so ``load_network_state`` on a
    freshly built network of the same architecture reproduces it exactly.
    """
    state = {}
    for name, value in network.state_dict().items():
        value = value.detach().to("cpu")
        dtype = torch.float32 if value.is_floating_point() else value.dtype
        state[name] = value.to(dtype).numpy().copy()
    return state


def load_network_state(network: _Module, state: dict[str, np.ndarray]) -> _Module:
    """Load arrays from :func:`network_state` into ``network`` (strict: every key must match).

    The network's tensors are replaced by copies of the arrays (``assign``), so a network
    built by :func:`empty_network` on the meta device is materialised on the CPU, and
    training it never writes into ``state``.
    """
    target = network.state_dict()
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    if missing or unexpected:
        raise ValueError(f"state does not match the network: missing {missing}, unexpected {unexpected}.")
    tensors = {}
    for name, reference in target.items():
        value = np.asarray(state[name])
        if tuple(value.shape) != tuple(reference.shape):
            raise ValueError(
                f"state[{name!r}] has shape {tuple(value.shape)}; the network expects {tuple(reference.shape)}."
            )
        tensors[name] = torch.tensor(value, dtype=reference.dtype, device="cpu")
    network.load_state_dict(tensors, strict=True, assign=True)
    return network


def _float_tensor(value: npt.ArrayLike | torch.Tensor, name: str) -> torch.Tensor:
    """A float32 copy of ``value``: a head may train it in place, never the caller's array."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to(torch.float32).clone()
    else:
        try:
            tensor = torch.tensor(np.asarray(value, dtype=np.float32))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be a numeric array or tensor; got {type(value).__name__}.") from exc
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return tensor
