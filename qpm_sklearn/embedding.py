"""Dinov2Embedder: images → frozen DINOv2 token features, scikit-learn style."""

from __future__ import annotations

import hashlib
import inspect
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils._param_validation import Interval, Options, StrOptions

from . import images as _images
from ._cache import EmbeddingCache
from ._device import host_tensor, resolve_device, resolve_dtype
from ._utils import logger, progress, quiet_transformers

_OUTPUT_DTYPES = {"float32": np.float32, "float16": np.float16}
# What huggingface_hub / requests / httpx raise (or say) when the hub cannot be reached.
_NETWORK_ERRORS = {
    "ConnectionError", "ConnectError", "ConnectTimeout", "ReadTimeout", "Timeout", "TimeoutError",
    "ProxyError", "SSLError", "OfflineModeIsEnabled", "LocalEntryNotFoundError",
}
_NETWORK_PHRASES = ("couldn't connect", "could not connect", "offline mode", "connection", "timed out")


class Dinov2Embedder(TransformerMixin, BaseEstimator):
    """Embed images with a frozen DINOv2 backbone (Hugging Face transformers).

    The backbone's last layer after its final LayerNorm (``last_hidden_state``) is split
    into [CLS, registers, patches]; registers are dropped (SPEC 1.3, 13.3). The model is
    loaded lazily on the first :meth:`transform`, kept on the instance, run frozen in
    ``eval`` mode under ``torch.inference_mode``, and never pickled.

    Parameters
    ----------
    model : str or path-like, default="facebook/dinov2-with-registers-base"
        Hugging Face hub id or local folder of a DINOv2 model (with or without
        registers; other ViTs with a CLS token and a square patch grid also work).
    output : {"patch", "cls", "mean"}, default="patch"
        "patch": the patch-token grid ``(n, h, w, d)`` in row-major order with
        ``h = w = image_size // patch_size``; "cls": the CLS token ``(n, d)``;
        "mean": the mean of the patch tokens ``(n, d)``.
    image_size : int, default=224
        Images are squash-resized (no crop, aspect ratio not kept) to this square.
        Must be a multiple of the model's patch size (14 for DINOv2).
    preprocessing : {"imagenet", "paper"}, default="imagenet"
        "imagenet": bicubic resize, ``(x/255 − mean)/std`` with the ImageNet statistics
        (or ``mean``/``std`` when given). "paper": the authors' pipeline (SPEC 1.2):
        bilinear resize, normalisation with the dataset statistics ``mean``/``std``
        (required), then each image min–max rescaled to [0, 1]. Either way the
        position-embedding interpolation is transformers' (SPEC 13.1).
    mean, std : sequence of 3 floats, default=None
        Per-channel statistics; see ``preprocessing``.
    batch_size : int, default=64
        Images per forward pass. On a CUDA out-of-memory error the batch is halved
        (with a warning) and retried.
    device : str or torch.device, default=None
        None picks cuda, then mps, then cpu.
    dtype : {"float32", "bfloat16", "float16"}, default=None
        Compute dtype; None means bfloat16 on CUDA and float32 elsewhere.
    output_dtype : {"float32", "float16"}, default="float32"
        dtype of the returned array.
    local_files_only : bool, default=False
        Never contact the hub: load from a local folder or the local hub cache.
    cache_dir : str or path-like, default=None
        When given, embeddings are stored there as float16 memory-mapped ``.npy``
        files keyed by image content, model revision and every setting above that
        changes the numbers (see :mod:`qpm_sklearn._cache`). A collection is then
        embedded once; an interrupted run resumes; a changed image or setting is
        recomputed. ``transform`` returns the read-only float16 memory map itself when
        ``output_dtype="float16"`` (so collections larger than memory work) and a float32
        array read from it otherwise; values are float16-rounded in both cases.
        The model revision is the hub commit hash, or for a local folder the names,
        sizes and modification times of its files.
    n_jobs : int, default=None
        Workers that decode and resize images (None: up to 8; -1: all cores). Image
        files are decoded in that many worker processes (joblib's loky executor, kept
        alive between calls) when ``n_jobs > 1``, in-memory images by threads; the
        pixels are the same either way. Decoding runs two batches ahead of the
        forward pass.
    verbose : bool or int, default=False
        Show a progress bar over batches (and the hub's download bars).

    See Also
    --------
    QPMClassifier : the interpretable classifier fitted on the patch grid.

    Notes
    -----
    Inputs: a sequence of file paths, PIL images or uint8 arrays (mixed freely), or a
    uint8 array ``(n, H, W, 3)`` / ``(n, H, W)``. Gray, palette, RGBA, CMYK and 16-bit
    images are converted to RGB (alpha dropped). Float arrays are refused (their scale
    is ambiguous): convert with ``(x * 255).round().astype(np.uint8)``.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from qpm_sklearn import Dinov2Embedder
    >>> from qpm_sklearn._testing import save_random_backbone
    >>> folder = save_random_backbone(tempfile.mkdtemp(), "tiny")  # offline stand-in for a hub id
    >>> images = np.random.default_rng(0).integers(0, 256, (2, 40, 50, 3), dtype=np.uint8)
    >>> Dinov2Embedder(model=str(folder), image_size=56, device="cpu").transform(images).shape
    (2, 4, 4, 32)
    """

    _parameter_constraints: dict = {
        "model": [str, os.PathLike],
        "output": [StrOptions({"patch", "cls", "mean"})],
        "image_size": [Interval(Integral, 1, None, closed="left")],
        "preprocessing": [StrOptions(set(_images.PREPROCESSINGS))],
        "mean": ["array-like", None],
        "std": ["array-like", None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": [str, torch.device, None],
        "dtype": [StrOptions({"float32", "bfloat16", "float16"}), torch.dtype, None],
        "output_dtype": [StrOptions(set(_OUTPUT_DTYPES))],
        "local_files_only": ["boolean"],
        "cache_dir": [str, os.PathLike, None],
        "n_jobs": [Interval(Integral, 1, None, closed="left"), Options(Integral, {-1}), None],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        model="facebook/dinov2-with-registers-base",
        *,
        output="patch",
        image_size=224,
        preprocessing="imagenet",
        mean=None,
        std=None,
        batch_size=64,
        device=None,
        dtype=None,
        output_dtype="float32",
        local_files_only=False,
        cache_dir=None,
        n_jobs=None,
        verbose=False,
    ):
        self.model = model
        self.output = output
        self.image_size = image_size
        self.preprocessing = preprocessing
        self.mean = mean
        self.std = std
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.output_dtype = output_dtype
        self.local_files_only = local_files_only
        self.cache_dir = cache_dir
        self.n_jobs = n_jobs
        self.verbose = verbose

    # ----------------------------------------------------------------------------------------
    # scikit-learn protocol
    # ----------------------------------------------------------------------------------------

    def fit(self, X, y=None):
        """Validate the parameters; nothing is learned (the backbone is frozen).

        Parameters
        ----------
        X : ignored
        y : ignored

        Returns
        -------
        self : Dinov2Embedder
        """
        self._check_params()
        return self

    def _check_params(self):
        self._validate_params()
        _images.resolve_statistics(self.preprocessing, self.mean, self.std)

    def __sklearn_is_fitted__(self):
        return True  # stateless: transform needs no fit

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        return tags

    def __getstate__(self):
        state = super().__getstate__()
        # The weights are reloaded from `model` on demand; they are never pickled.
        state.pop("_backbone", None)
        state.pop("_backbone_config", None)
        state.pop("_effective_batch_size", None)
        return state

    def transform(self, X):
        """Embed images.

        Parameters
        ----------
        X : sequence of paths / PIL images / uint8 arrays, or uint8 ndarray (n, H, W, 3) or (n, H, W)

        Returns
        -------
        embeddings : ndarray
            ``(n, h, w, d)`` for ``output="patch"``, ``(n, d)`` for "cls" and "mean", of
            ``output_dtype`` (a read-only memory map with ``cache_dir`` and float16).
        """
        self._check_params()
        X = _images.check_images(X)
        _images.check_files_exist(X)
        config = self._load_config()
        grid = self._grid(config)
        n_registers = int(getattr(config, "num_register_tokens", 0) or 0)
        row_shape = (grid, grid, config.hidden_size) if self.output == "patch" else (config.hidden_size,)
        out_dtype = _OUTPUT_DTYPES[self.output_dtype]
        device = resolve_device(self.device)
        compute_dtype = resolve_dtype(self.dtype, device)
        n_jobs = _images.resolve_n_jobs(self.n_jobs)

        if self.cache_dir is None:
            result = np.empty((len(X), *row_shape), dtype=out_dtype)

            def sink(batch, values):  # batches are consecutive rows: a slice, not fancy indexing
                # torch converts and writes on all cores (numpy would use one).
                torch.from_numpy(result[batch[0] : batch[0] + len(batch)]).copy_(values)

            self._run(X, np.arange(len(X)), sink, device, compute_dtype, n_registers, grid, n_jobs)
            return result
        with ThreadPoolExecutor(n_jobs) as pool:
            keys = np.stack([np.frombuffer(k, np.uint8) for k in pool.map(_images.image_key, X)])
        cache = EmbeddingCache(self.cache_dir, self._cache_settings(config, compute_dtype), keys, row_shape)

        def store(batch, values):
            cache.store(batch, values.to(torch.float16).numpy())

        # fill: the missing rows, then (with a warning) those of any block that fails verification.
        embeddings = cache.fill(lambda rows: self._run(X, rows, store, device, compute_dtype, n_registers, grid, n_jobs))
        return embeddings if out_dtype == np.float16 else np.asarray(embeddings, dtype=out_dtype)

    # ----------------------------------------------------------------------------------------
    # Model loading
    # ----------------------------------------------------------------------------------------

    def _load_config(self):
        # A local folder's signature is part of the key: a re-saved model is reloaded.
        key = (os.fspath(self.model), self.local_files_only, _folder_signature(os.fspath(self.model)))
        cached = getattr(self, "_backbone_config", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        from transformers import AutoConfig

        config = self._from_pretrained(AutoConfig)
        if not hasattr(config, "patch_size") or not hasattr(config, "hidden_size"):
            raise ValueError(
                f"model={os.fspath(self.model)!r} is a {type(config).__name__}, not a vision "
                f"transformer with a patch size and hidden size."
            )
        self._backbone_config = (key, config)
        return config

    def _load_model(self, device, dtype):
        key = (os.fspath(self.model), self.local_files_only, _folder_signature(os.fspath(self.model)), str(device), dtype)
        cached = getattr(self, "_backbone", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        from transformers import AutoModel

        self._backbone = None  # free the previous model before loading another
        backbone = self._from_pretrained(AutoModel, config=self._load_config())
        backbone = backbone.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self._backbone = (key, backbone)
        return backbone

    def _from_pretrained(self, auto_class, **kwargs):
        name = os.fspath(self.model)
        if _looks_like_path(name) and not Path(name).expanduser().is_dir():
            raise FileNotFoundError(f"model={name!r}: no such model folder.")
        if Path(name).expanduser().is_dir():
            name = str(Path(name).expanduser())
        try:
            with quiet_transformers(self.verbose):
                return auto_class.from_pretrained(name, local_files_only=self.local_files_only, **kwargs)
        except Exception as exc:  # transformers raises OSError, ValueError, hub errors ...
            if not Path(name).is_dir() and self.local_files_only:
                raise OSError(
                    f"model={name!r} is not a local folder and was not found in the local Hugging "
                    f"Face cache; local_files_only=True forbids downloading it ({exc})."
                ) from exc
            if not Path(name).is_dir() and _looks_like_network_failure(exc):
                raise OSError(
                    f"model={name!r} could not be loaded, apparently because the Hugging Face hub "
                    f"could not be reached ({exc}). Download it once with network access, or pass "
                    f"local_files_only=True with the model in the local hub cache, or give a local "
                    f"folder saved with save_pretrained."
                ) from exc
            raise ValueError(f"model={name!r} could not be loaded as a pretrained model: {exc}") from exc

    def _grid(self, config) -> int:
        patch = config.patch_size
        if isinstance(patch, (tuple, list)):
            if len(set(patch)) != 1:
                raise ValueError(f"model={os.fspath(self.model)!r} has non-square patches {patch}.")
            patch = patch[0]
        if self.image_size % patch:
            raise ValueError(
                f"image_size must be a multiple of the model's patch size {patch}; got "
                f"image_size={self.image_size} (e.g. use {max(patch, round(self.image_size / patch) * patch)})."
            )
        return self.image_size // patch

    def _cache_settings(self, config, compute_dtype) -> dict:
        mean, std = _images.resolve_statistics(self.preprocessing, self.mean, self.std)
        return {
            "model": os.fspath(self.model),
            "revision": _model_revision(os.fspath(self.model), config),
            "preprocessing": self.preprocessing,
            "mean": mean,
            "std": std,
            "image_size": int(self.image_size),
            "output": self.output,
            "compute_dtype": str(compute_dtype),
        }

    # ----------------------------------------------------------------------------------------
    # The embedding loop
    # ----------------------------------------------------------------------------------------

    def _run(self, X, rows, sink, device, compute_dtype, n_registers, grid, n_jobs):
        """Embed the images ``X[rows]`` batch by batch and hand each result to ``sink``."""
        backbone = self._load_model(device, compute_dtype)
        forward_kwargs = {}
        if "interpolate_pos_encoding" in inspect.signature(backbone.forward).parameters:
            forward_kwargs["interpolate_pos_encoding"] = True  # ViT (DINO v1); DINOv2 always does
        batches = [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        decoded = _images.decode_batches(X, batches, int(self.image_size), self.preprocessing, n_jobs=n_jobs)
        # Uploads and downloads each get their own stream: on one, the upload of batch k+1 would
        # queue behind the download of batch k, which waits for batch k's forward pass.
        upload_stream = download_stream = None
        if device.type == "cuda":
            upload_stream, download_stream = torch.cuda.Stream(device), torch.cuda.Stream(device)

        def write(batch, host, copied):
            if copied is not None:
                copied.synchronize()
            sink(batch, host)

        # Three stages overlap: workers decode the next batches, the device embeds batch k,
        # and a writer thread moves batch k-1 from pinned memory into the result (or the
        # cache), converting it to output_dtype on the host's cores on the way.
        self._effective_batch_size = self.batch_size
        with ThreadPoolExecutor(1) as writer:
            writing = None
            batches_and_pixels = progress(
                zip(batches, decoded), verbose=self.verbose, desc="Embedding", total=len(batches), unit="batch"
            )
            for batch, pixels in batches_and_pixels:
                pixels = _upload(host_tensor(pixels), device, upload_stream)
                embedded = self._embed_pixels(backbone, pixels, device, compute_dtype, n_registers, grid, forward_kwargs)
                host, copied = _to_host(embedded, download_stream)
                if writing is not None:
                    writing.result()  # at most one batch in flight; surfaces write errors
                writing = writer.submit(write, batch, host, copied)
            writing.result()

    def _embed_pixels(self, backbone, pixels, device, compute_dtype, n_registers, grid, forward_kwargs):
        """uint8 (B, S, S, 3) → embeddings on the device; halves the batch on CUDA out-of-memory."""
        parts, start = [], 0
        while start < len(pixels):
            stop = start + self._effective_batch_size
            try:
                parts.append(self._embed_chunk(backbone, pixels[start:stop], device, compute_dtype, n_registers, grid, forward_kwargs))
                start = stop
            except torch.cuda.OutOfMemoryError:
                if self._effective_batch_size == 1:
                    raise
                self._effective_batch_size //= 2
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                warnings.warn(
                    f"Dinov2Embedder: a batch did not fit in GPU memory; retrying with "
                    f"batch_size={self._effective_batch_size}.",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _embed_chunk(self, backbone, pixels, device, compute_dtype, n_registers, grid, forward_kwargs):
        with torch.inference_mode():
            pixel_values = _images.normalize(pixels, preprocessing=self.preprocessing, mean=self.mean, std=self.std)
            tokens = self._forward(backbone, pixel_values.to(compute_dtype), forward_kwargs)  # (B, 1+R+h*w, d)
            expected = 1 + n_registers + grid * grid
            if tokens.shape[1] != expected:
                raise ValueError(
                    f"model={os.fspath(self.model)!r} returned {tokens.shape[1]} tokens for a {grid}x{grid} "
                    f"grid; expected 1 CLS + {n_registers} registers + {grid * grid} patches."
                )
            if self.output == "cls":
                result = tokens[:, 0]
            else:
                patches = tokens[:, 1 + n_registers :]  # row-major: token p = row * grid + col
                if self.output == "mean":
                    result = patches.float().mean(1)
                else:
                    result = patches.reshape(len(tokens), grid, grid, -1)
            # Still in the compute dtype (bfloat16 on CUDA): half the bytes to move to the
            # host, where the writer converts to output_dtype exactly as the device would.
            return result.contiguous()

    def _forward(self, backbone, pixel_values, forward_kwargs) -> torch.Tensor:
        return backbone(pixel_values=pixel_values, **forward_kwargs).last_hidden_state


def _upload(pixels: torch.Tensor, device, upload_stream=None) -> torch.Tensor:
    """Upload a uint8 batch (4x fewer bytes than float pixels).

    On CUDA the copy runs from pinned memory on ``upload_stream``, so it overlaps the
    forward pass of the previous batch; the compute stream waits for it.
    """
    if device.type != "cuda":
        return pixels.to(device)
    with torch.inference_mode():
        pinned = pixels.pin_memory()
        with torch.cuda.stream(upload_stream):
            on_device = pinned.to(device, non_blocking=True)
        compute_stream = torch.cuda.current_stream(device)
        compute_stream.wait_stream(upload_stream)
        on_device.record_stream(compute_stream)  # allocated on the upload stream, used on this one
    return on_device


def _to_host(tensor: torch.Tensor, copy_stream=None):
    """Start copying ``tensor`` to host memory; returns (host tensor, CUDA event or None).

    On CUDA the copy runs on ``copy_stream`` into pinned memory, so it overlaps the
    next batch's forward pass instead of delaying it.
    """
    if tensor.device.type != "cuda":
        return tensor.cpu(), None  # e.g. mps: copied here, not from the writer thread
    with torch.inference_mode():
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        copy_stream.wait_stream(torch.cuda.current_stream(tensor.device))
        with torch.cuda.stream(copy_stream):
            host.copy_(tensor, non_blocking=True)
            tensor.record_stream(copy_stream)  # its memory is not reused before the copy ends
            copied = torch.cuda.Event()
            copied.record(copy_stream)
    return host, copied


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a folder."""
    return name.startswith((".", "~", "/")) or "\\" in name or Path(name).is_absolute() or name.count("/") > 1


def _looks_like_network_failure(exc: BaseException) -> bool:
    while exc is not None:
        if type(exc).__name__ in _NETWORK_ERRORS or any(p in str(exc).lower() for p in _NETWORK_PHRASES):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _folder_signature(name: str) -> str | None:
    """Names, sizes and modification times of a local model folder's files (None for hub ids)."""
    folder = Path(name).expanduser()
    if not folder.is_dir():
        return None
    digest = hashlib.blake2b(digest_size=16)
    for file in sorted(folder.iterdir()):
        if file.is_file():
            stat = file.stat()
            digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def _model_revision(name: str, config) -> str:
    """What identifies the weights: a local folder's signature or the hub commit hash."""
    signature = _folder_signature(name)
    if signature is not None:
        return "folder:" + signature
    commit = getattr(config, "_commit_hash", None)
    if commit is None:
        logger.warning("model=%r has no hub commit hash; the cache is keyed by its name only.", name)
    return f"hub:{commit}"
