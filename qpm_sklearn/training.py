"""The training loops of both stages and their losses (docs/method.md#losses, docs/method.md#training).

``train_network`` runs one stage (dense or sparse: the network decides which
parameters train); ``forward_in_batches`` evaluates a network on many samples.
Speed matters here: on CUDA the tokens are moved to the GPU once
when they fit, batches are gathered on the device from a device permutation,
losses are accumulated as device tensors (one host synchronisation per epoch),
and the full-size training steps are replayed from a CUDA graph. The CPU path is
plain eager PyTorch and needs no compiler.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from ._device import (
    as_numpy,
    autocast,
    compute_dtype,
    host_tensor,
    resolve_device,
    seeded_global_rng,
    torch_generator,
    upload,
    wait_upload,
)
from ._utils import check_class_codes, check_sample_weight, logger, progress
from .adapter import QPMNetwork

__all__ = [
    "diversity_loss",
    "l1_maps",
    "l1_features",
    "cosine_schedule",
    "tokens_on_device",
    "train_network",
    "forward_in_batches",
]

# Names of the loss terms, in the order they are accumulated.
_TERMS = ("loss", "ce", "diversity", "l1_maps", "l1_features")
# Fraction of the steps used for the linear learning-rate warm-up (at most one epoch).
_WARMUP_FRACTION = 0.05
# Eager steps before a CUDA graph is captured (lazy optimizer state, cuBLAS workspaces).
_GRAPH_WARMUP_STEPS = 3
# Tokens stay on the GPU when they take at most this share of its free memory.
_RESIDENT_SHARE = 0.5
# torch reduces at most this many entries on one thread (at::internal::GRAIN_SIZE); see thread_stable_sum.
_SERIAL_REDUCTION = 32768
_ROW_WIDTH = 256


def diversity_loss(
    logits: torch.Tensor,
    maps: torch.Tensor,
    features: torch.Tensor,
    head_weight: torch.Tensor,
    beta: float,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Feature diversity loss ``L_div`` (docs/method.md#losses).

    ``-beta/B * sum_b sum_p max_n w[b,n] * s[b,n] * softmax_p(maps[b,n])[p]`` with
    ``w`` the L2-normalised absolute head row of the predicted class (argmax of
    ``logits``, no gradient through it) and ``s`` the feature vector scaled by its
    own maximum. With ``sample_weight`` ``v`` the mean over samples is weighted:
    ``-beta/sum(v) * sum_b v[b] * ...``.

    Parameters
    ----------
    logits : Tensor of shape (B, C)
    maps : Tensor of shape (B, K, h, w)
    features : Tensor of shape (B, K)
        Post-dropout feature vector fed to the head.
    head_weight : Tensor of shape (C, K)
    beta : float
    sample_weight : Tensor of shape (B,), default=None

    Returns
    -------
    loss : scalar Tensor
    """
    predicted = logits.detach().argmax(1)  # (B,)
    rows = head_weight[predicted].abs()  # (B, K)
    weights = rows / (torch.linalg.vector_norm(rows, dim=1, keepdim=True) + 1e-5)  # (B, K)
    scaled = features / features.amax(1, keepdim=True).clamp(min=1e-6)  # (B, K)
    spatial = maps.flatten(2).softmax(-1)  # (B, K, h*w)
    weighted = (weights * scaled).unsqueeze(-1) * spatial  # (B, K, h*w)
    per_sample = weighted.amax(1)  # (B, h*w)
    if sample_weight is None:
        return -beta / logits.shape[0] * thread_stable_sum(per_sample)
    return -beta / sample_weight.sum() * thread_stable_sum(per_sample * sample_weight[:, None])


def l1_maps(maps: torch.Tensor, sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """L1 on the maps (docs/method.md#losses): mean absolute value over all map entries (samples weighted by ``sample_weight``)."""
    return _weighted_mean_abs(maps, sample_weight)


def l1_features(features: torch.Tensor, sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """L1 on the features (docs/method.md#losses): mean absolute feature value (samples weighted)."""
    return _weighted_mean_abs(features, sample_weight)


def _weighted_mean_abs(values: torch.Tensor, sample_weight: torch.Tensor | None) -> torch.Tensor:
    if sample_weight is None:
        return thread_stable_sum(values.abs()) / values.numel()
    per_sample = values.abs().reshape(len(values), -1) * sample_weight[:, None]
    return thread_stable_sum(per_sample) / (sample_weight.sum() * per_sample.shape[1])


def thread_stable_sum(values: torch.Tensor) -> torch.Tensor:
    """The sum of all entries, added in an order that does not depend on the CPU thread count.

    torch splits a large full reduction over threads (so 1 and 2 threads round
    differently); it reduces a tensor of at most ``_SERIAL_REDUCTION`` entries on one
    thread, and the rows of a matrix each on one thread. So: sum rows of
    ``_ROW_WIDTH`` entries (zero-padded: adding 0 is exact) until few enough remain.
    """
    flat = values.reshape(-1)
    while flat.numel() > _SERIAL_REDUCTION:
        flat = F.pad(flat, (0, -flat.numel() % _ROW_WIDTH)).reshape(-1, _ROW_WIDTH).sum(1)
    return flat.sum()


def cosine_schedule(total_steps: int, steps_per_epoch: int) -> np.ndarray:
    """Learning-rate factors per step: short linear warm-up, then cosine decay (docs/method.md#training).

    The warm-up lasts 5 % of the steps (at least 1, at most one epoch) and
    rises linearly to 1; the cosine then decays towards 0 over the remaining steps.
    """
    warmup = max(1, min(steps_per_epoch, int(_WARMUP_FRACTION * total_steps)))
    steps = np.arange(total_steps, dtype=np.float64)
    decay = 0.5 * (1.0 + np.cos(math.pi * (steps - warmup) / max(1, total_steps - warmup)))
    return np.where(steps < warmup, (steps + 1) / warmup, decay)


def tokens_on_device(
    tokens: np.ndarray | torch.Tensor,
    device: str | torch.device,
    *,
    resident: bool | None = None,
    check_input: bool = True,
) -> np.ndarray | torch.Tensor:
    """Tokens staged once for several ``train_network`` / ``forward_in_batches`` calls.

    On CUDA the tokens are copied to the GPU in bfloat16 (the MLP's autocast
    dtype, so results are unchanged) when they fit in half of the free memory --
    or as ``resident`` forces; otherwise the host array is returned and the
    training loop streams batches. On the CPU a float array becomes a tensor
    without a copy. Passing the result to both stages of a fit saves one
    host-to-device transfer per call.

    Parameters
    ----------
    tokens : ndarray or Tensor of shape (n, P, D)
    device : str or torch.device
    resident : bool or None, default=None
    check_input : bool, default=True
        False skips the checks of ``tokens`` (the caller has validated them).

    Returns
    -------
    tokens : Tensor on ``device``, or the input unchanged when it stays on the host.
    """
    device = _resolve_device(device)
    if check_input:
        _token_counts(tokens)
    dtype = compute_dtype(device)
    if _decide_resident(tokens, device, resident, dtype):
        return _to_device(tokens, device, dtype)
    return tokens


def train_network(
    network: QPMNetwork,
    tokens: np.ndarray | torch.Tensor,
    y: npt.ArrayLike | torch.Tensor,
    *,
    grid: tuple[int, int],
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    diversity: float,
    l1_maps: float = 0.0,
    l1_features: float = 0.0,
    device: str | torch.device,
    seed: int,
    verbose: int | bool = False,
    desc: str = "",
    resident: bool | None = None,
    cuda_graphs: bool | None = None,
    sample_weight: npt.ArrayLike | None = None,
    epoch_callback: Callable[[QPMNetwork, dict[str, float]], bool | None] | None = None,
    check_input: bool = True,
) -> list[dict[str, float]]:
    """Train the parameters of ``network`` that require grad; one stage of QPM.

    Loss per batch: ``CE + L_div(beta=diversity) + l1_maps * L1_FM + l1_features * L1_FV``
    (docs/method.md#losses). Optimiser: ``torch.optim.AdamW`` (fused on CUDA) on the parameters
    with ``requires_grad``, weight decay on all of them, learning rate following
    :func:`cosine_schedule` per step. Shuffling uses a generator seeded by
    ``seed``; dropout draws from the torch RNG seeded by ``seed`` inside a forked
    RNG state (the caller's global RNG is left untouched), so on the CPU two runs
    with the same seed give bit-identical weights. On CUDA the MLP runs under
    bf16 autocast with float32 master weights.

    A final batch of a single sample is dropped when ``n > 1`` (a 1-row BatchNorm
    batch cannot be normalised in training mode, and one-token inputs are what
    scikit-learn's estimator checks use); every other final partial batch is kept.

    Parameters
    ----------
    network : QPMNetwork
        Moved to ``device`` in place; returned in eval mode.
    tokens : ndarray or Tensor of shape (n, P, D)
        float32 or float16 patch tokens, ``P = h * w``. A tensor already on
        ``device`` is used as is.
    y : array-like of shape (n,)
        Integer class codes in ``[0, C)``.
    grid : tuple (h, w)
    epochs, batch_size : int
    lr, weight_decay : float
    diversity : float
        ``beta`` of the diversity loss; 0 skips it.
    l1_maps, l1_features : float, default=0.0
        Weights of L1-FM and L1-FV.
    device : str or torch.device
    seed : int
    verbose : bool, default=False
        Progress bar over epochs.
    desc : str, default=""
        Label of the progress bar.
    resident : bool or None, default=None
        CUDA only: keep all tokens on the GPU (True), stream batches from pinned
        host memory (False), or decide from the free GPU memory (None).
    cuda_graphs : bool or None, default=None
        CUDA only: replay full-size steps from a CUDA graph (None = yes on CUDA
        with resident tokens). False forces the plain eager loop; both give the
        same result up to floating-point rounding.
    sample_weight : array-like of shape (n,), default=None
        Non-negative weight of every sample in every loss term (a weight of 2 counts
        like the sample twice in its batch) and in the epoch means of ``history``.
        Only ratios matter: the weights are divided by the largest one and used in
        float32, so they are checked by :func:`~qpm_sklearn._utils.check_sample_weight`
        (always, even with ``check_input=False``: a weight float32 cannot hold would
        silently count as 0 or overflow). A batch whose samples all weigh 0 is
        **skipped**: no optimiser step (no gradient, weight decay or momentum update),
        though the learning-rate schedule moves on as if it had run. An epoch whose
        batches are all skipped reports NaN losses in ``history``.
    epoch_callback : callable, default=None
        Called as ``epoch_callback(network, row)`` after every epoch (the network in
        training mode, ``row`` the epoch's history row, which it may extend); training
        stops after the epoch when it returns True (early stopping).
    check_input : bool, default=True
        False skips the checks of ``tokens``, ``grid`` and ``y``
        (scikit-learn's ``check_input`` convention: the estimator validated them once in ``fit``).

    Returns
    -------
    history : list of dict
        One row per epoch: ``epoch`` (1-based), ``loss``, ``ce``, ``diversity``
        (``L_div``, beta included), ``l1_maps``, ``l1_features`` (unweighted; the
        loss adds them times their weights), ``lr`` (of the last step), ``seconds``.
        Loss values are means over the epoch's samples.
    """
    device = _resolve_device(device)
    n_samples, n_tokens = _token_counts(tokens) if check_input else tuple(tokens.shape[:2])
    if check_input:
        grid = _check_grid(grid, n_tokens)
    n_classes = network.head.weight.shape[0]
    labels = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if check_input:
        labels = check_class_codes(labels, n_samples, n_classes)
    if sample_weight is not None:
        sample_weight = check_sample_weight(sample_weight, n_samples)
    if n_samples * n_tokens < 2:
        raise ValueError(
            "tokens: training needs at least 2 token rows (BatchNorm statistics); "
            f"got {n_samples} sample(s) of {n_tokens} token(s)."
        )
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size!r}.")

    network.to(device).train()
    params = [p for p in network.parameters() if p.requires_grad]
    if not params:
        raise ValueError("network has no parameter with requires_grad=True: nothing to train.")
    batches = _TokenBatches(tokens, labels, device, batch_size, resident, sample_weight)
    steps_per_epoch = len(batches.bounds)
    if epochs < 1:
        network.eval()
        return []
    schedule = lr * cosine_schedule(epochs * steps_per_epoch, steps_per_epoch)
    on_cuda = device.type == "cuda"
    if on_cuda:
        # capturable + tensor lr: the same optimizer serves the eager and the graphed step.
        optimizer = torch.optim.AdamW(
            params, lr=torch.tensor(lr, device=device), weight_decay=weight_decay, fused=True, capturable=True
        )
    else:
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    def set_lr(step):
        for group in optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(schedule[step])  # a kernel argument, no synchronisation
            else:
                group["lr"] = float(schedule[step])

    totals = torch.zeros(len(_TERMS) + 1, device=device)  # weighted sums of the terms, then the weight
    weights = dict(beta=float(diversity), maps_weight=float(l1_maps), features_weight=float(l1_features))

    def train_step(x, y_batch, w_batch):
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            logits, maps, features = network(x, grid)
        loss, terms = _loss_terms(logits, maps, features, network.head.weight, y_batch, w_batch, **weights)
        loss.backward()
        optimizer.step()
        # Python scalars and views only: this step may be captured into a CUDA graph.
        batch_weight = x.shape[0] if w_batch is None else w_batch.sum()
        totals[:-1].add_(terms * batch_weight)
        totals[-1:].add_(batch_weight)

    use_graphs = on_cuda and batches.resident and cuda_graphs is not False
    graph = _GraphedStep(train_step, batches) if use_graphs else None
    history = []
    step = 0
    epoch_bar = progress(range(epochs), verbose=verbose, desc=desc, total=epochs, unit="epoch")
    with seeded_global_rng(seed, device):
        generator = torch_generator(seed, device)
        for epoch in epoch_bar:
            start = time.perf_counter()
            totals.zero_()
            order = torch.randperm(n_samples, generator=generator, device=device)
            trained = batches.start_epoch(order)
            for index, batch_slice in enumerate(batches.bounds):
                if trained[index]:
                    set_lr(step)
                    if graph is not None and graph.handles(batch_slice):
                        graph.run(order[batch_slice])
                    else:
                        train_step(*batches.get(order, index))
                step += 1  # a skipped batch moves the schedule on too: it stays a function of the epoch's progress
            sums = totals.cpu().numpy().astype(np.float64)  # the one synchronisation per epoch
            row: dict[str, float] = {"epoch": epoch + 1}
            # No batch trained (all weights 0): the epoch's means are undefined, and nothing diverged.
            means = sums[:-1] / sums[-1] if sums[-1] > 0 else np.full(len(_TERMS), math.nan)
            row.update({name: float(value) for name, value in zip(_TERMS, means)})
            row.update(lr=float(schedule[step - 1]), seconds=time.perf_counter() - start)
            if sums[-1] > 0 and not all(math.isfinite(row[name]) for name in _TERMS):
                raise FloatingPointError(
                    f"training diverged at epoch {epoch + 1} ({desc or 'train_network'}): loss {row['loss']}; "
                    "try a smaller learning rate."
                )
            stop = epoch_callback is not None and epoch_callback(network, row)
            history.append(row)
            logger.debug("%s epoch %d: %s", desc, epoch + 1, row)
            if verbose and hasattr(epoch_bar, "set_postfix"):
                epoch_bar.set_postfix(loss=f"{row['loss']:.4f}", ce=f"{row['ce']:.4f}")
            if stop:
                break
    network.eval()
    return history


def forward_in_batches(
    network: QPMNetwork,
    tokens: np.ndarray | torch.Tensor,
    *,
    grid: tuple[int, int],
    batch_size: int,
    device: str | torch.device,
    return_maps: bool = False,
    check_input: bool = True,
) -> dict[str, np.ndarray]:
    """Evaluate ``network`` in eval mode under ``inference_mode``; outputs as float32 numpy.

    Parameters
    ----------
    network : QPMNetwork
        Moved to ``device`` in place; its train/eval mode is restored afterwards.
    tokens : ndarray or Tensor of shape (n, P, D)
    grid : tuple (h, w)
    batch_size : int
    device : str or torch.device
    return_maps : bool, default=False
    check_input : bool, default=True
        False skips the checks of ``tokens`` and ``grid``.

    Returns
    -------
    outputs : dict of ndarray
        ``"logits"`` (n, C), ``"features"`` (n, K) pooled (no dropout), and
        ``"maps"`` (n, K, h, w) when ``return_maps``.
    """
    device = _resolve_device(device)
    n_samples, n_tokens = _token_counts(tokens) if check_input else tuple(tokens.shape[:2])
    if check_input:
        grid = _check_grid(grid, n_tokens)
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size!r}.")
    was_training = network.training
    network.to(device).eval()
    outputs: dict[str, np.ndarray] = {}
    try:
        with torch.inference_mode(), autocast(device):
            for start in range(0, n_samples, batch_size):
                stop = min(start + batch_size, n_samples)
                x = _slice_to_device(tokens, start, stop, device)
                logits, maps, features = network(x, grid)
                batch_out = dict(logits=logits, features=features)
                if return_maps:
                    batch_out["maps"] = maps
                for name, value in batch_out.items():
                    if name not in outputs:
                        outputs[name] = np.empty((n_samples,) + tuple(value.shape[1:]), dtype=np.float32)
                    outputs[name][start:stop] = as_numpy(value)
    finally:
        network.train(was_training)
    if not outputs:  # no samples: shapes from the network itself
        n_out = len(network.selected) if network.selected is not None else network.mlp.n_features
        outputs = dict(
            logits=np.empty((0, network.head.weight.shape[0]), np.float32), features=np.empty((0, n_out), np.float32)
        )
        if return_maps:
            outputs["maps"] = np.empty((0, n_out) + tuple(grid), np.float32)
    return outputs


def _loss_terms(
    logits: torch.Tensor,
    maps: torch.Tensor,
    features: torch.Tensor,
    head_weight: torch.Tensor,
    y_batch: torch.Tensor,
    w_batch: torch.Tensor | None,
    *,
    beta: float,
    maps_weight: float,
    features_weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Total loss and the detached (5,) vector of its terms (order of ``_TERMS``); ``w_batch`` weights samples."""
    if w_batch is None:
        ce = F.cross_entropy(logits, y_batch)
    else:
        ce = (F.cross_entropy(logits, y_batch, reduction="none") * w_batch).sum() / w_batch.sum()
    if beta > 0:
        div = diversity_loss(logits, maps, features, head_weight, beta, w_batch)
    else:
        div = torch.zeros((), device=logits.device)
    # The L1 terms are cheap: always computed, so the history reports them.
    l1m, l1f = l1_maps(maps, w_batch), l1_features(features, w_batch)
    loss = ce + div + maps_weight * l1m + features_weight * l1f
    return loss, torch.stack([loss, ce, div, l1m, l1f]).detach()


class _TokenBatches:
    """Shuffled training batches, from device-resident tokens or streamed from host memory.

    ``bounds`` lists the slices of the permutation that form the epoch's steps
    (the final batch dropped when it holds a single sample of several). Weights are
    divided by the largest one (only their ratios matter), so float32 holds them and
    their sums without overflow; :meth:`start_epoch` marks the batches whose samples
    all weigh 0, which are skipped.
    """

    def __init__(self, tokens, labels, device, batch_size, resident, sample_weight=None):
        n_samples = len(labels)
        self.device = device
        self.batch_size = batch_size
        self.bounds = [slice(start, min(start + batch_size, n_samples)) for start in range(0, n_samples, batch_size)]
        if n_samples > 1 and self.bounds[-1].stop - self.bounds[-1].start == 1:
            self.bounds.pop()
        self.labels = torch.as_tensor(labels, dtype=torch.long).to(device)
        if sample_weight is None:
            self.weights = None
        else:
            relative = np.asarray(sample_weight, dtype=np.float64) / np.max(sample_weight)
            self.weights = torch.as_tensor(relative, dtype=torch.float32).to(device)
            covered = self.bounds[-1].stop if self.bounds else 0
            self.batch_of_position = (torch.arange(covered) // batch_size).to(device)
        self.dtype = compute_dtype(device)
        self.resident = _decide_resident(tokens, device, resident, self.dtype)
        if self.resident:
            self.tokens = _to_device(tokens, device, self.dtype)
        else:
            self.host = tokens.detach().cpu().numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
            self._stream = None

    def gather(self, indices):
        """Batch of the resident tokens at ``indices`` (a device LongTensor)."""
        x = self.tokens.index_select(0, indices).to(self.dtype)
        return x, self.labels.index_select(0, indices), self._weights(indices)

    def _weights(self, indices):
        return None if self.weights is None else self.weights.index_select(0, indices)

    def start_epoch(self, order):
        """Which batches of the epoch with permutation ``order`` to train: one bool per batch.

        A batch whose samples all weigh 0 is False (its weighted losses would be 0/0).
        Weighted training pays one host synchronisation per epoch for this; the
        streamed batches are then only those that train.
        """
        trained = np.ones(len(self.bounds), dtype=bool)
        if self.weights is not None and self.bounds:
            covered = len(self.batch_of_position)
            sums = torch.zeros(len(self.bounds), device=self.device)
            sums.index_add_(0, self.batch_of_position, self.weights.index_select(0, order[:covered]))
            trained = sums.cpu().numpy() > 0  # non-negative weights: a zero sum means all are zero
        if not self.resident:
            bounds = [bound for bound, keep in zip(self.bounds, trained) if keep]
            self._stream = None
            if bounds:
                self._stream = _HostStream(self.host, order.cpu().numpy(), bounds, self.device, self.dtype)
        return trained

    def get(self, order, index):
        """The ``index``-th batch of the epoch whose permutation is ``order`` (after :meth:`start_epoch`).

        Streamed batches come in the order :meth:`start_epoch` planned: ask for every
        batch it marked to train, in increasing ``index``.
        """
        indices = order[self.bounds[index]]
        if self.resident:
            return self.gather(indices)
        return self._stream.next(), self.labels.index_select(0, indices), self._weights(indices)


class _HostStream:
    """Streams batches of host tokens to the device, one batch ahead, through two pinned buffers."""

    def __init__(self, host, order, bounds, device, dtype):
        self.host, self.order, self.bounds, self.device, self.dtype = host, order, bounds, device, dtype
        on_cuda = device.type == "cuda"
        shape = (max(b.stop - b.start for b in bounds),) + host.shape[1:]
        host_dtype = host_tensor(host[:0]).dtype
        self.buffers = [torch.empty(shape, dtype=host_dtype, pin_memory=on_cuda) for _ in range(2)]
        self.copy_stream = torch.cuda.Stream(device) if on_cuda else None
        self.copied = [None, None]  # event per buffer: its last host-to-device copy has finished
        self.position = 0
        self.pending = self._fetch(0)

    def _fetch(self, index):
        slot = index % 2
        if self.copied[slot] is not None:
            self.copied[slot].synchronize()  # waits for a copy only, never for compute
        indices = self.order[self.bounds[index]]
        buffer = self.buffers[slot][: len(indices)]
        np.take(self.host, indices, axis=0, out=buffer.numpy())
        if self.copy_stream is None:
            return buffer.to(self.dtype), None
        x, event = upload(buffer, self.device, self.copy_stream)  # the buffer is pinned already
        self.copied[slot] = event
        return x, event

    def next(self):
        x = wait_upload(*self.pending)
        self.position += 1
        if self.position < len(self.bounds):
            self.pending = self._fetch(self.position)  # host gather overlaps the GPU's work
        return x.to(self.dtype)


class _GraphedStep:
    """Replays the full-size training step from a CUDA graph (resident tokens only).

    The first few full-size steps run eagerly on a side stream (they are real
    training steps, so nothing is computed twice); the next one is captured --
    gather, forward, backward, optimizer step and loss accumulation -- and every
    later full-size step is a copy of the batch indices plus one replay. Partial
    batches stay eager. If capture fails the loop goes on eagerly, with a warning.
    """

    def __init__(self, train_step, batches):
        self.train_step = train_step
        self.batches = batches
        self.full_size = batches.batch_size
        self.indices = torch.zeros(self.full_size, dtype=torch.long, device=batches.device)
        self.graph = None
        self.failed = False
        self.n_eager = 0

    def handles(self, batch_slice):
        return not self.failed and batch_slice.stop - batch_slice.start == self.full_size

    def run(self, indices):
        self.indices.copy_(indices)
        if self.graph is not None:
            self.graph.replay()
            return
        if self.n_eager < _GRAPH_WARMUP_STEPS:
            side = torch.cuda.Stream(self.batches.device)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.train_step(*self.batches.gather(self.indices))
            torch.cuda.current_stream().wait_stream(side)
            self.n_eager += 1
            return
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.train_step(*self.batches.gather(self.indices))
        except RuntimeError as exc:  # capture records only: nothing ran, so the step runs eagerly
            warnings.warn(f"CUDA graph capture failed ({exc}); training continues without graphs.", RuntimeWarning)
            self.failed = True
            torch.cuda.synchronize()
            self.train_step(*self.batches.gather(self.indices))
            return
        self.graph = graph
        graph.replay()


def _resolve_device(device: str | torch.device | None) -> torch.device:
    """``resolve_device`` with the CUDA index made explicit, so ``tensor.device == device`` holds."""
    device = resolve_device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _decide_resident(
    tokens: np.ndarray | torch.Tensor, device: torch.device, resident: bool | None, dtype: torch.dtype
) -> bool:
    if isinstance(tokens, torch.Tensor) and tokens.device == device:
        return True
    if resident is not None:
        return bool(resident)
    if device.type != "cuda":
        return True  # host memory is where the tokens already are
    n_bytes = int(np.prod(tokens.shape)) * torch.empty((), dtype=dtype).element_size()
    free, _ = torch.cuda.mem_get_info(device)
    fits = n_bytes <= _RESIDENT_SHARE * free
    if not fits:
        logger.info("tokens (%.1f GB) do not fit on %s: streaming batches from host memory.", n_bytes / 1e9, device)
    return fits


def _to_device(
    tokens: np.ndarray | torch.Tensor, device: torch.device, dtype: torch.dtype, chunk: int = 512
) -> torch.Tensor:
    """All tokens on ``device``: as they are on the CPU or when already there; else chunk-wise in ``dtype``."""
    if isinstance(tokens, torch.Tensor) and (tokens.device == device or device.type == "cpu"):
        return tokens.detach().to(device)
    if not isinstance(tokens, torch.Tensor):
        tokens = host_tensor(tokens)
        if device.type == "cpu":
            return tokens
    out = torch.empty(tokens.shape, dtype=dtype, device=device)
    for start in range(0, len(tokens), chunk):
        out[start : start + chunk].copy_(tokens[start : start + chunk])
    return out


def _slice_to_device(tokens: np.ndarray | torch.Tensor, start: int, stop: int, device: torch.device) -> torch.Tensor:
    if isinstance(tokens, torch.Tensor):
        x = tokens[start:stop].to(device)
    else:
        x = host_tensor(tokens[start:stop]).to(device)
    # CUDA autocast casts 16/32-bit floats for the MLP but leaves float64 alone.
    return x if device.type == "cuda" and x.dtype != torch.float64 else x.float()


def _token_counts(tokens: object) -> tuple[int, int]:
    """``(n, P)`` of a floating-point token array or tensor of shape ``(n, P, D)``; raises otherwise."""
    if not isinstance(tokens, (np.ndarray, torch.Tensor)):
        raise TypeError(
            f"tokens must be a numpy array or torch tensor of shape (n, P, D); got {type(tokens).__name__}."
        )
    if tokens.ndim != 3:
        raise ValueError(f"tokens must have shape (n, P, D); got shape {tuple(tokens.shape)}.")
    if isinstance(tokens, torch.Tensor):
        floating = tokens.is_floating_point()
    else:
        floating = np.issubdtype(tokens.dtype, np.floating)
    if not floating:
        raise TypeError(f"tokens must be floating point (float32 or float16); got dtype {tokens.dtype}.")
    return int(tokens.shape[0]), int(tokens.shape[1])


def _check_grid(grid: Iterable[int], n_tokens: int) -> tuple[int, int]:
    try:
        height, width = (int(side) for side in grid)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"grid must be a pair (h, w) of ints; got {grid!r}.") from exc
    if height * width != n_tokens:
        raise ValueError(f"grid {(height, width)} has {height * width} positions but tokens have P={n_tokens}.")
    return height, width



