"""The stages of QPMClassifier.fit as functions of plain arguments.

This module owns the work between validated inputs and the fitted arrays: checking X
(:func:`check_tokens`), the dense stage (:func:`fit_dense_stage`, cached by
:func:`cached_dense_stage` under a content hash of the tokens, :func:`tokens_fingerprint`,
with early stopping on held-out rows), and the sparse stage (:func:`fit_sparse_stage`) under
a head chosen by :func:`qpm_sklearn._head.qpm_head` or :mod:`qpm_sklearn.baselines`; and it
builds the torch networks of both stages from numpy state (:func:`dense_network`,
:func:`sparse_network`). The estimator, its parameters and its fitted attributes live in
:mod:`qpm_sklearn.classifier`.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from sklearn.utils.validation import check_array

from ._device import as_numpy, torch_generator
from ._utils import check_split_weights
from ._head import HeadRecord
from .adapter import (
    DenseHead,
    QPMNetwork,
    SparseHead,
    TokenMLP,
    empty_network,
    init_parameters,
    load_network_state,
    mlp_from_state,
    network_state,
)
from .baselines import qsenn_refit
from .training import forward_in_batches, tokens_on_device, train_network

INFERENCE_BATCH_SIZE = 256
# docs/baselines.md: the comparison systems fine-tune with dropout 0.1 and Q-SENN runs 4 rounds.
_BASELINE_DROPOUT = 0.1
QSENN_ROUNDS = 4
# Bytes per block of rows copied from a chunked array (zarr, dask) into a memory map.
_SPILL_BLOCK = 64 * 2**20
# Bytes per block of tokens_fingerprint (hashed in parallel).
_FINGERPRINT_BLOCK = 32 * 2**20


#: A 4-D X of shape (n, a, b, c) is taken for a channels-first (n, d, h, w) array when its
#: first grid side ``a`` is at least this many times both the second side ``b`` and the
#: embedding size ``c``: DINOv2's patch grids are near square and their d (384 to 1536)
#: exceeds their sides, while a channels-first array puts a large d first.
CHANNELS_FIRST_RATIO = 4


def _not_an_embedding(X) -> str | None:
    """What X holds when it is plainly not numbers (images, file paths), else None."""
    if isinstance(X, (list, tuple)):
        first = X[0] if len(X) else None
        many = True
    elif isinstance(X, np.ndarray) and X.dtype.kind in "OUS" and X.size:
        first, many = X.flat[0], True
    else:
        first, many = X, False
    if type(first).__module__.split(".")[0] == "PIL":
        return "a list of PIL images" if many else "a PIL image"
    if isinstance(first, (str, bytes, os.PathLike)):
        return "file paths or strings" if many else "a file path or string"
    return None


def _given_dtype(X) -> np.dtype | None:
    """The dtype X came in (of its first item for a list of arrays), before any conversion."""
    if hasattr(X, "dtype"):
        return X.dtype
    if isinstance(X, (list, tuple)) and len(X) and hasattr(X[0], "dtype"):
        return X[0].dtype
    return None


def _is_one_dimensional(X) -> bool:
    if hasattr(X, "ndim") and hasattr(X, "__len__"):
        return X.ndim == 1
    return isinstance(X, (list, tuple)) and len(X) > 0 and np.ndim(X[0]) == 0


def check_tokens(
    X: npt.ArrayLike, *, n_features_in: int | None = None, min_samples: int = 1
) -> tuple[np.ndarray, tuple[int, int]]:
    """Validate X once per public call and return ``(tokens (n, p, d), grid (h, w))``.

    Accepts ``(n, h, w, d)`` patch grids, ``(n, p, d)`` tokens with a square
    ``p`` and ``(n, d)`` single tokens. float32 and float16 arrays (such as the
    float16 memory map of an embedding cache) are used without a copy, so a
    collection larger than memory is streamed rather than loaded; float64 is
    cast to float32 and other dtypes converted; torch tensors and chunked arrays go
    through :func:`as_token_array` first. ``n_features_in`` (when given)
    is the embedding size the fitted model expects. The internals called after
    this run with ``check_input=False``.

    What is plainly not an embedding is refused with a ``TypeError``/``ValueError``
    that says what to do: images or file paths (embed them first, e.g. with
    :class:`~qpm_sklearn.Dinov2Embedder`), ``uint8`` arrays of 3 or more axes (pixels),
    a 1-D X, and two layouts read by a heuristic:

    - ``(n, a, b, c)`` with ``a >= CHANNELS_FIRST_RATIO * max(b, c)`` looks like a
      channels-first ``(n, d, h, w)`` array; move the axis
      (``X.transpose(0, 2, 3, 1)``). A grid that really is that narrow can be passed
      with its sides swapped (``X.transpose(0, 2, 1, 3)``): the token-wise MLP and the
      mean pooling make the predictions independent of the grid's orientation.
    - ``(a, a, d)`` with a square ``a`` looks like one sample's ``(h, w, d)`` grid
      without its batch axis; pass ``X[None]``. ``a`` samples of ``a`` tokens each
      can be passed as the grid ``(n, h, w, d)`` instead.
    """
    held = _not_an_embedding(X)
    if held is not None:
        raise TypeError(
            f"X must be patch embeddings (numbers); got {held}. Embed images first, e.g. with "
            "Dinov2Embedder(...).transform(images), or make_pipeline(Dinov2Embedder(...), QPMClassifier())."
        )
    if _is_one_dimensional(X):
        raise ValueError(
            f"X must have a sample axis and an embedding axis, (n, d), (n, p, d) or (n, h, w, d); got a 1-D array "
            f"of {len(X)} values. Reshape your data: X.reshape(1, -1) for one sample."  # type: ignore[arg-type]
        )
    array = check_array(
        as_token_array(X),
        dtype=(np.float32, np.float16, np.float64),
        allow_nd=True,
        ensure_min_samples=min_samples,
        input_name="X",
    )
    if array.ndim >= 3 and _given_dtype(X) == np.uint8:
        raise ValueError(
            f"X looks like raw pixel images (uint8, shape {array.shape}); it must be patch embeddings. Embed the "
            "images first, e.g. with Dinov2Embedder(...).transform(images). Embeddings stored as uint8 can be "
            "passed cast to float (X.astype(np.float32))."
        )
    if array.ndim == 2:
        grid = (1, 1)
    elif array.ndim == 3:
        n_samples, n_tokens = array.shape[:2]
        side = math.isqrt(n_tokens)
        if side * side != n_tokens:
            raise ValueError(
                f"X of shape (n, p, d) must hold a square grid of p patch tokens; got p={n_tokens}, "
                "which is not a perfect square. Pass the grid as (n, h, w, d) instead (and one sample's "
                "(h, w, d) grid with its batch axis, X[None])."
            )
        if n_samples == n_tokens:
            raise ValueError(
                f"X of shape {array.shape} looks like one sample's (h, w, d) grid without its batch axis; pass "
                f"X[None]. For {n_samples} samples of {n_tokens} tokens pass them as a grid, "
                f"X.reshape({n_samples}, {side}, {side}, {array.shape[2]})."
            )
        grid = (side, side)
    elif array.ndim == 4:
        grid = (array.shape[1], array.shape[2])
        if grid[0] >= CHANNELS_FIRST_RATIO * max(grid[1], array.shape[3]):
            raise ValueError(
                f"X of shape {array.shape} looks channels-first, (n, d, h, w); it must be (n, h, w, d) with the "
                "embedding axis last: pass X.transpose(0, 2, 3, 1). If it really is a grid of "
                f"{grid[0]} x {grid[1]} patches of {array.shape[3]}-d embeddings, pass it with the grid's sides "
                "swapped, X.transpose(0, 2, 1, 3) (the predictions do not depend on the grid's orientation)."
            )
    else:
        raise ValueError(
            f"X must be a patch grid (n, h, w, d), tokens (n, p, d) or vectors (n, d); got shape {array.shape}."
        )
    n_dims = array.shape[-1]
    if n_features_in is not None and n_dims != n_features_in:
        raise ValueError(
            f"X has {n_dims} features, but QPMClassifier is expecting "
            f"{n_features_in} features as input (the embedding size d of the last axis)."
        )
    tokens = np.ascontiguousarray(array.reshape(array.shape[0], grid[0] * grid[1], n_dims))
    if tokens.dtype == np.float64:
        with np.errstate(over="ignore"):
            tokens = tokens.astype(np.float32)
        if not np.isfinite(tokens).all():
            raise ValueError("X has values beyond the float32 range (about ±3.4e38); rescale the embeddings.")
    return tokens, grid


def as_token_array(X: object) -> object:
    """Torch tensors and chunked arrays (zarr, dask) as numpy arrays; anything else unchanged.

    A tensor becomes its numpy view (a copy only off the CPU or from bfloat16). A chunked
    array -- anything with ``chunks``, ``shape`` and ``dtype`` that is not an ndarray -- is
    copied block of rows by block of rows into an anonymous temporary file mapped as a
    float32 (or float16) memory map, so peak memory stays about one block
    (:data:`_SPILL_BLOCK` bytes) above what a memory map of the same data costs, and the
    result streams through fit and predict like a memory map does (``np.asarray`` would read
    it whole, in its own dtype, then copy it to float32). The file is deleted when the
    array is no longer used.

    Parameters
    ----------
    X : object

    Returns
    -------
    X : ndarray or object

    Examples
    --------
    >>> import torch
    >>> from qpm_sklearn._stages import as_token_array
    >>> as_token_array(torch.ones(2, 3)).dtype
    dtype('float32')
    """
    if isinstance(X, torch.Tensor):
        X = X.detach()
        return (X.float() if X.dtype == torch.bfloat16 else X).cpu().numpy()
    if isinstance(X, np.ndarray) or not all(hasattr(X, name) for name in ("chunks", "shape", "dtype")):
        return X
    shape = tuple(int(size) for size in X.shape)  # type: ignore[attr-defined]
    dtype = np.float16 if np.dtype(X.dtype) == np.float16 else np.float32  # type: ignore[attr-defined]
    if len(shape) < 2 or 0 in shape:
        return np.asarray(X, dtype=dtype)
    row_bytes = math.prod(shape[1:]) * np.dtype(dtype).itemsize
    rows = max(1, _SPILL_BLOCK // row_bytes)
    # An unlinked file: the mapping keeps its own descriptor, and the space is freed with the array.
    with tempfile.TemporaryFile(prefix="qpm_sklearn_tokens_") as handle:
        array = np.memmap(handle, dtype=dtype, mode="w+", shape=shape)
    for start in range(0, shape[0], rows):
        array[start : start + rows] = np.asarray(X[start : start + rows], dtype=dtype)  # type: ignore[index]
    return array


def tokens_fingerprint(tokens: np.ndarray) -> str:
    """A content hash of an array: SHA-256 of its bytes in 32 MB blocks hashed in parallel, with shape and dtype.

    The ``memory=`` key of the dense stage: exact (never stale, unlike a file date or an
    object id), and faster than ``joblib.hash`` of the array -- SHA-256 runs in the CPU's
    SHA instructions where it has them, and hashlib releases the GIL, so the blocks are
    hashed on all cores (benchmarks/dense_cache_key.py).
    """
    # numpy declares ndarray.__buffer__ for Python >= 3.12 only; every ndarray is a buffer.
    flat = memoryview(np.ascontiguousarray(tokens).reshape(-1)).cast("B")  # type: ignore[arg-type]
    blocks = [flat[start : start + _FINGERPRINT_BLOCK] for start in range(0, len(flat), _FINGERPRINT_BLOCK)]
    workers = min(len(blocks), os.cpu_count() or 1)
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            digests = list(pool.map(lambda block: hashlib.sha256(block).digest(), blocks))
    else:
        digests = [hashlib.sha256(block).digest() for block in blocks]
    summary = hashlib.sha256(repr((tokens.shape, np.dtype(tokens.dtype).str)).encode())
    for digest in digests:
        summary.update(digest)
    return summary.hexdigest()


def fit_dense_stage(tokens, fingerprint, y, sample_weight, grid, n_classes, settings, seed, device, verbose=False):
    """Train the token-wise MLP with a dense linear head (stage 1) and describe the training set.

    A module-level function of plain arguments so that ``joblib.Memory`` can
    cache it: a budget search refits only the selection and the sparse stage.
    The cache key holds ``fingerprint`` (a content hash of ``tokens``) instead of
    ``tokens``, which may already be staged on the device. The MLP is initialised
    from a generator seeded by ``seed``; the global torch RNG is left alone.

    Returns
    -------
    result : dict
        ``mlp`` and ``head`` (numpy weights of the network), ``features`` (n, n_features)
        pooled training features in eval mode, ``history`` (per-epoch rows).
    """
    del fingerprint  # part of the cache key only
    network = empty_network(
        lambda: QPMNetwork(
            TokenMLP(tokens.shape[-1], settings["hidden_size"], settings["n_features"], settings["n_layers"]),
            DenseHead(settings["n_features"], n_classes, settings["dropout"]),
        )
    )
    init_parameters(network.to_empty(device="cpu"), torch_generator(seed))
    train_tokens, train_y, train_weight, stopping = tokens, y, sample_weight, None
    if settings["early_stopping"]:
        train_rows, stopping = _EarlyStopping.split(tokens, y, sample_weight, grid, settings, seed, device)
        train_tokens, train_y = _take(tokens, train_rows), y[train_rows]
        train_weight = None if sample_weight is None else sample_weight[train_rows]
    history = train_network(
        network,
        train_tokens,
        train_y,
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
        sample_weight=train_weight,
        epoch_callback=stopping,
        check_input=False,
    )
    if stopping is not None:
        stopping.restore_best(network)
    features = forward_in_batches(
        network, tokens, grid=grid, batch_size=INFERENCE_BATCH_SIZE, device=device, check_input=False
    )["features"]
    return {
        "mlp": network_state(network.mlp),
        "head": network_state(network.head),
        "features": features,
        "history": history,
    }


def _take(tokens, rows):
    """Rows of staged tokens (a device tensor or a host array)."""
    if isinstance(tokens, torch.Tensor):
        return tokens.index_select(0, torch.as_tensor(rows, device=tokens.device))
    return tokens[rows]


class _EarlyStopping:
    """Epoch callback of the dense stage: validation accuracy, patience, best weights kept.

    Stops when the accuracy on the held-out rows has not risen above its best for
    ``n_iter_no_change`` epochs; :meth:`restore_best` then loads the weights of the best
    epoch (as scikit-learn's MLP does). Each epoch's history row gets ``validation_score``.
    """

    def __init__(self, tokens, y, weight, grid, patience, device):
        self.tokens, self.y, self.weight, self.grid = tokens, y, weight, grid
        self.patience, self.device = patience, device
        self.best_score, self.best_state, self.waited = -np.inf, None, 0

    @classmethod
    def split(cls, tokens, y, sample_weight, grid, settings, seed, device):
        """The training rows and the callback holding the stratified, seeded validation rows."""
        from sklearn.model_selection import train_test_split

        try:
            train_rows, validation_rows = train_test_split(
                np.arange(len(y)), test_size=settings["validation_fraction"], stratify=y, random_state=seed
            )
        except ValueError as exc:
            raise ValueError(
                f"early_stopping: validation_fraction={settings['validation_fraction']} of {len(y)} samples cannot "
                f"hold out every class ({exc}); raise validation_fraction or turn early_stopping off."
            ) from exc
        train_rows, validation_rows = np.sort(train_rows), np.sort(validation_rows)
        check_split_weights(sample_weight, train_rows, validation_rows)
        weight = None if sample_weight is None else sample_weight[validation_rows]
        callback = cls(_take(tokens, validation_rows), y[validation_rows], weight, grid,
                       settings["n_iter_no_change"], device)  # fmt: skip
        return train_rows, callback

    def __call__(self, network, row) -> bool:
        logits = forward_in_batches(
            network, self.tokens, grid=self.grid, batch_size=INFERENCE_BATCH_SIZE, device=self.device,
            check_input=False,
        )["logits"]  # fmt: skip
        score = float(np.average(np.argmax(logits, axis=1) == self.y, weights=self.weight))
        row["validation_score"] = score
        if score > self.best_score:
            self.best_score, self.waited = score, 0
            self.best_state = (network_state(network.mlp), network_state(network.head))
        else:
            self.waited += 1
        return self.waited >= self.patience

    def restore_best(self, network):
        load_network_state(network.mlp, self.best_state[0])
        load_network_state(network.head, self.best_state[1])
        network.to(self.device)


def dense_stage_checksum(result: dict) -> str:
    """SHA-256 of a :func:`fit_dense_stage` result: every array's name, dtype, shape and bytes, and the history.

    Parameters
    ----------
    result : dict
        ``mlp`` and ``head`` (dicts of arrays), ``features`` (array), ``history`` (list of dicts).

    Returns
    -------
    checksum : str
        Hex digest; equal results give equal digests.
    """
    digest = hashlib.sha256()
    arrays = [(f"{group}.{key}", result[group][key]) for group in ("mlp", "head") for key in sorted(result[group])]
    for name, array in arrays + [("features", result["features"])]:
        array = np.ascontiguousarray(array)
        digest.update(repr((name, array.dtype.str, array.shape)).encode())
        digest.update(memoryview(array.reshape(-1)).cast("B"))
    digest.update(repr(result["history"]).encode())
    return digest.hexdigest()


def checksummed_dense_stage(tokens, fingerprint, y, sample_weight, grid, n_classes, settings, seed, device,
                            verbose=False):  # fmt: skip
    """What ``memory=`` stores: :func:`fit_dense_stage`'s result with its checksum, taken when it is computed.

    Returns
    -------
    entry : dict
        ``result`` (the dense stage) and ``checksum`` (:func:`dense_stage_checksum` of it).
    """
    result = fit_dense_stage(tokens, fingerprint, y, sample_weight, grid, n_classes, settings, seed, device, verbose)
    return {"result": result, "checksum": dense_stage_checksum(result)}


def cached_dense_stage(memory, tokens, y, sample_weight, grid, n_classes, settings, seed, device, verbose):
    """:func:`fit_dense_stage` through ``memory``, verified; concurrent fits of one key compute it once.

    With a cache location, a file lock per key (beside the cache) makes a second process
    or thread that asks for the same dense stage wait for the first and then load its
    result instead of training it again. Every entry carries the checksum of its arrays
    (:func:`checksummed_dense_stage`), checked when it is read: an entry whose contents
    no longer match (altered on disk while its pickle stays readable) is never used -- a
    ``UserWarning`` says so and the stage is computed again and stored afresh.
    """
    location = getattr(memory, "location", None)
    fingerprint = tokens_fingerprint(tokens) if location is not None else None
    staged = tokens_on_device(tokens, device, check_input=False)  # once per fit, for both stages
    args = (staged, fingerprint, y, sample_weight, grid, n_classes, settings, seed, str(device), verbose)
    if location is None:  # no cache folder: nothing stored to verify
        return memory.cache(fit_dense_stage, ignore=["tokens", "verbose"])(*args), staged
    from filelock import FileLock
    from joblib import hash as joblib_hash

    cached = memory.cache(checksummed_dense_stage, ignore=["tokens", "verbose"])
    key = joblib_hash((fingerprint, y, sample_weight, grid, n_classes, settings, seed, str(device)))
    lock_dir = Path(location) / "qpm_sklearn_locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_dir / f"dense-{key}.lock")):
        entry = cached(*args)
        if _entry_is_intact(entry):
            return entry["result"], staged
        warnings.warn(
            f"memory={str(location)!r}: the cached dense stage does not match the checksum written with it (the "
            "entry was altered or damaged); it is not used, the dense stage is trained again.",
            UserWarning,
            stacklevel=3,
        )
        if hasattr(cached, "call"):  # joblib: compute and store again under the same key
            entry = cached.call(*args)
            entry = entry[0] if isinstance(entry, tuple) else entry
            return entry["result"], staged
        return fit_dense_stage(*args), staged


def _entry_is_intact(entry) -> bool:
    try:
        return entry["checksum"] == dense_stage_checksum(entry["result"])
    except (KeyError, TypeError, AttributeError, ValueError):
        return False


def sparse_network(mlp_state, head: HeadRecord, *, train_stats=False, dropout=0.0) -> QPMNetwork:
    """The sparse-stage network from numpy state, without random initialisation."""
    return QPMNetwork(
        mlp_from_state(mlp_state),
        SparseHead(head.weight, head.mean, head.std, bias=head.bias, train_stats=train_stats, dropout=dropout),
        selected=head.selected,
    )


def dense_network(mlp_state, head_state) -> QPMNetwork:
    """The dense-stage network from numpy state, without random initialisation (dropout is off in eval)."""
    n_classes, n_features = np.shape(head_state["linear.weight"])
    head = load_network_state(empty_network(lambda: DenseHead(n_features, n_classes)), head_state)
    return QPMNetwork(mlp_from_state(mlp_state), head)


def fit_sparse_stage(tokens, y_codes, grid, n_classes, mlp_state, head, settings, *, split_seed, seed, device,
                      sample_weight=None, verbose=False):  # fmt: skip
    """Fine-tune the MLP under the sparse head (stage 3), beside :func:`fit_dense_stage`.

    DINO-QPM trains with frozen head and statistics, CE + diversity + the two L1
    terms. The comparison systems (docs/baselines.md) train the standardisation too,
    with dropout 0.1 and without L1 terms; Q-SENN refits and re-quantises its head
    on the current features before each of its rounds after the first.

    Parameters
    ----------
    tokens : ndarray or Tensor (n, P, D), validated (and staged) by the caller
    y_codes : ndarray (n,) int64
    grid : (h, w)
    n_classes : int
    mlp_state : dict of ndarray
        The dense stage's MLP, where fine-tuning starts.
    head : HeadRecord
        The selected head.
    settings : dict
        The ``sparse`` parameter group (:data:`qpm_sklearn.classifier.PARAMETER_GROUPS`).

    Returns
    -------
    mlp_state : dict of ndarray
    head : HeadRecord
        The final head (Q-SENN's last refit; trained statistics for the baselines).
    history : list of dict
    """
    method = settings["selection"]
    baseline = method != "qpm"
    rounds = QSENN_ROUNDS if method == "qsenn" else 1
    history, network = [], None
    for round_index in range(rounds):
        if round_index > 0:
            features = forward_in_batches(
                network, tokens, grid=grid, batch_size=INFERENCE_BATCH_SIZE, device=device, check_input=False
            )["features"]
            refit = qsenn_refit(
                features, y_codes, settings["n_per_class"], n_classes=n_classes, random_state=split_seed,
                selected=head.selected, verbose=verbose,
            )  # fmt: skip
            head = replace(refit, info=dict(refit.info, round=round_index, rounds=rounds))
        network = sparse_network(
            mlp_state, head, train_stats=baseline, dropout=_BASELINE_DROPOUT if baseline else 0.0
        )
        rows = train_network(
            network,
            tokens,
            y_codes,
            grid=grid,
            epochs=settings["sparse_epochs"],
            batch_size=settings["sparse_batch_size"],
            lr=settings["sparse_lr"],
            weight_decay=settings["sparse_weight_decay"],
            diversity=settings["sparse_diversity"],
            l1_maps=0.0 if baseline else settings["l1_maps"],
            l1_features=0.0 if baseline else settings["l1_features"],
            device=device,
            seed=seed + round_index,
            verbose=verbose,
            desc="sparse",
            sample_weight=sample_weight,
            check_input=False,
        )
        history += [dict(row, round=round_index) for row in rows]
        mlp_state = network_state(network.mlp)
        if baseline:  # the standardisation was trained
            head = replace(head, mean=as_numpy(network.head.mean), std=as_numpy(network.head.std))
    return mlp_state, head, history
