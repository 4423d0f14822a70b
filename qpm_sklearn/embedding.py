"""The embedder estimators: images → frozen backbone features (patch grid, CLS or mean).

:class:`PatchEmbedder` serves every backbone family :mod:`qpm_sklearn.backbones` knows
(DINOv2, DINOv3, CLIP, SigLIP, ViT, ResNet / ConvNeXt feature maps);
:class:`Dinov2Embedder` is the same estimator with the defaults of the paper's DINOv2.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from numbers import Integral
from typing import Literal, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils._param_validation import Options, StrOptions

from . import backbones as _backbones
from . import images as _images
from ._cache import EmbeddingCache
from .image_sources import as_images
from ._doc_links import DocLinkMixin
from ._device import download, host_tensor, resolve_device, resolve_dtype, upload, wait_upload
from ._utils import StrictInterval, progress

_OUTPUT_DTYPES = {"float32": np.float32, "float16": np.float16}
_DEFAULT_IMAGE_SIZE = 224
_Embedder = TypeVar("_Embedder", bound="PatchEmbedder")


@dataclass(frozen=True)
class _Plan:
    """What a transform needs, resolved from the parameters and the model's configurations."""

    layout: _backbones.Layout
    image_size: int
    grid: int
    mean: tuple
    std: tuple
    # "imagenet" / "paper" (standing for their filters, images.PREPROCESSING_FILTERS) or the
    # PIL filter name of the model's image processor ("auto"); part of the cache key as is.
    resample: str

    def row_shape(self, output: str) -> tuple:
        return (self.grid, self.grid, self.layout.width) if output == "patch" else (self.layout.width,)


class _OutputConfig(dict):
    """An embedder's own ``set_output`` settings (scikit-learn's ``_sklearn_output_config``).

    For the 4-D patch grid (``grid`` True) an unset "transform" reads "default", with a
    warning when a global ``set_config(transform_output=...)`` asks for a table: the grid has
    no table form, and a global setting meant for the rest of a pipeline must not break it.
    A setting made on the embedder itself (``set_output``) is kept and honoured (and refused
    for the grid by ``transform``).
    """

    grid = False

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key) or (key == "transform" and self.grid)

    def __missing__(self, key: str) -> str:
        if key != "transform" or not self.grid:
            raise KeyError(key)
        from sklearn import get_config

        if get_config()["transform_output"] != "default":
            warnings.warn(
                f"set_config(transform_output={get_config()['transform_output']!r}) does not apply to "
                "output='patch': a 4-D grid (n, h, w, d) has no table form, so transform returns an array.",
                UserWarning,
                stacklevel=4,
            )
        return "default"


class PatchEmbedder(DocLinkMixin, TransformerMixin, BaseEstimator):
    """Embed images with a frozen vision backbone (Hugging Face transformers).

    The model's output is read with its family's token layout
    (:mod:`qpm_sklearn.backbones`): for ViTs the last layer (``last_hidden_state``) is
    split into [CLS, registers, patches] and registers are dropped (docs/method.md#tokens);
    CNN feature maps ``(n, C, h, w)`` become the same channels-last grid. The model is
    loaded lazily on the first :meth:`transform`, kept on the instance, run frozen in
    ``eval`` mode under ``torch.inference_mode``, and never pickled.

    Supported families (the configuration's ``model_type``): DINOv2 with and without
    registers, DINOv3 ViT and ConvNeXt, CLIP and SigLIP / SigLIP 2 vision towers (a
    checkpoint with both towers loads its vision tower), ViT, ResNet and ConvNeXt. See
    docs/backbones.md for hub ids and the grid each gives.

    Parameters
    ----------
    model : str or path-like, default="facebook/dinov2-with-registers-base"
        Hugging Face hub id or local folder (saved with ``save_pretrained``).
    output : {"patch", "cls", "mean"}, default="patch"
        "patch": the grid ``(n, h, w, d)`` in row-major order with
        ``h = w = image_size // stride`` (the patch size, or a CNN's total stride);
        "cls": the CLS token ``(n, d)`` of the same layer (for DINOv3 ConvNeXt its pooled
        token; refused for SigLIP and CNN maps, which have none: use "mean");
        "mean": the mean of the grid's features ``(n, d)``.
    image_size : int, default=None
        Images are squash-resized (no crop, aspect ratio not kept) to this square; it
        must be a multiple of the stride. None: with ``preprocessing="auto"`` the side
        the model's image processor outputs (rounded down to a multiple of the stride),
        otherwise 224.
    preprocessing : {"auto", "imagenet", "paper"}, default="auto"
        "auto": normalisation statistics and resampling filter from the model's own
        image-processor configuration (``preprocessor_config.json`` saved with it; read
        offline with ``local_files_only``); ``mean``/``std`` replace its statistics when
        given. "imagenet": bicubic resize, ``(x/255 − mean)/std`` with the ImageNet
        statistics (or ``mean``/``std`` when given). "paper": the authors' pipeline
        (docs/method.md#preprocessing): bilinear resize, normalisation with the dataset statistics
        ``mean``/``std`` (required), then each image min–max rescaled to [0, 1]. The
        position-embedding interpolation is the model's own (docs/method.md#backbone).
    mean, std : sequence of 3 floats, default=None
        Per-channel statistics; see ``preprocessing``.
    exif_transpose : bool, default=True
        Apply the EXIF orientation of image files (``PIL.ImageOps.exif_transpose``), so
        that a photo is embedded as a viewer shows it. False reproduces pipelines that
        read the stored pixels (torchvision's ``ImageFolder`` loader, for one). PIL
        images and arrays are used as given.
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
    embedding_cache : str or path-like, default=None
        A folder for the embeddings (not the weights: those stay in the Hugging Face
        cache). When given, embeddings are stored there as float16 memory-mapped
        ``.npy`` files keyed by image content, model family and revision and every
        setting above that changes the numbers (see :mod:`qpm_sklearn._cache`). A
        collection is then embedded once; an interrupted run resumes; a changed image or
        setting is recomputed. ``transform`` returns the read-only float16 memory map
        itself when ``output_dtype="float16"`` (so collections larger than memory work)
        and a float32 array read from it otherwise; values are float16-rounded in both
        cases. The model revision is the hub commit hash, or for a local folder the
        names, sizes and modification times of its files. Every read verifies each
        committed block of rows against its SHA-256 (about 1.5 s per GB on a 2-core
        CPU, benchmarks/cache_verify.py) and recomputes a damaged one with a warning;
        several processes, or machines sharing the folder, may write to it at once.
    n_jobs : int, default=None
        Workers that decode and resize images (None: up to 8; -1: all cores). Image
        files are decoded in that many worker processes (joblib's loky executor, kept
        alive between calls) when ``n_jobs > 1``, in-memory images by threads; the
        pixels are the same either way. Decoding runs two batches ahead of the
        forward pass.
    verbose : bool or int, default=False
        Show a progress bar over batches (and the hub's download bars).
    image_column : str, default=None
        The column holding the images when ``X`` is a Hugging Face ``datasets.Dataset`` (or
        the key in dict items of a torch dataset). None: the dataset's one column of
        ``Image`` type, or a column named "image" or "img".

    See Also
    --------
    Dinov2Embedder : the same with the paper's DINOv2 defaults.
    QPMClassifier : the interpretable classifier fitted on the patch grid.

    Notes
    -----
    Inputs: a sequence of file paths, PIL images or uint8 arrays (mixed freely), or a
    uint8 array ``(n, H, W, 3)`` / ``(n, H, W)``. Gray, palette, RGBA, CMYK and 16-bit
    images are converted to RGB (alpha dropped). Float arrays are refused (their scale
    is ambiguous): convert with ``(x * 255).round().astype(np.uint8)``. From PyTorch
    (docs/pytorch.md, :mod:`qpm_sklearn.image_sources`): a tensor batch ``(N, C, H, W)``
    or a sequence of ``(C, H, W)`` tensors, uint8 or float in [0, 1]; a map-style
    ``Dataset`` (read lazily) or a ``DataLoader`` (read whole) yielding images or
    ``(image, label)`` (labels ignored); a Hugging Face ``datasets.Dataset``; a
    one-column polars or pandas DataFrame.

    The vector outputs ("cls", "mean") have feature names (:meth:`get_feature_names_out`)
    and follow ``set_output(transform="pandas")``; the 4-D patch grid has no columns.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from qpm_sklearn import PatchEmbedder
    >>> from qpm_sklearn.testing import save_random_model
    >>> folder = save_random_model(tempfile.mkdtemp(), "resnet")  # offline stand-in for microsoft/resnet-50
    >>> images = np.random.default_rng(0).integers(0, 256, (2, 40, 50, 3), dtype=np.uint8)
    >>> PatchEmbedder(model=str(folder), image_size=64, device="cpu").transform(images).shape
    (2, 2, 2, 32)
    """

    _parameter_constraints: dict = {
        "model": [str, os.PathLike],
        "output": [StrOptions({"patch", "cls", "mean"})],
        "image_size": [StrictInterval(Integral, 1, None, closed="left"), None],
        "preprocessing": [StrOptions(set(_images.PREPROCESSINGS))],
        "mean": ["array-like", None],
        "std": ["array-like", None],
        "exif_transpose": ["boolean"],
        "batch_size": [StrictInterval(Integral, 1, None, closed="left")],
        "device": [str, torch.device, None],
        "dtype": [StrOptions({"float32", "bfloat16", "float16"}), torch.dtype, None],
        "output_dtype": [StrOptions(set(_OUTPUT_DTYPES))],
        "local_files_only": ["boolean"],
        "embedding_cache": [str, os.PathLike, None],
        "n_jobs": [StrictInterval(Integral, 1, None, closed="left"), Options(Integral, {-1}), None],
        "verbose": ["verbose"],
        "image_column": [str, None],
    }

    def __init__(
        self,
        model: str | os.PathLike[str] = "facebook/dinov2-with-registers-base",
        *,
        output: Literal["patch", "cls", "mean"] = "patch",
        image_size: int | None = None,
        preprocessing: Literal["auto", "imagenet", "paper"] = "auto",
        mean: npt.ArrayLike | None = None,
        std: npt.ArrayLike | None = None,
        exif_transpose: bool = True,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] | torch.dtype | None = None,
        output_dtype: Literal["float32", "float16"] = "float32",
        local_files_only: bool = False,
        embedding_cache: str | os.PathLike[str] | None = None,
        n_jobs: int | None = None,
        verbose: bool | int = False,
        image_column: str | None = None,
    ) -> None:
        self.model = model
        self.output = output
        self.image_size = image_size
        self.preprocessing = preprocessing
        self.mean = mean
        self.std = std
        self.exif_transpose = exif_transpose
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.output_dtype = output_dtype
        self.local_files_only = local_files_only
        self.embedding_cache = embedding_cache
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.image_column = image_column

    # ----------------------------------------------------------------------------------------
    # scikit-learn protocol
    # ----------------------------------------------------------------------------------------

    def fit(self: _Embedder, X: object, y: object = None) -> _Embedder:
        """Validate the parameters; nothing is learned (the backbone is frozen).

        Parameters
        ----------
        X : ignored
        y : ignored

        Returns
        -------
        self : PatchEmbedder
        """
        self._check_params()
        return self

    def _check_params(self):
        self._validate_params()
        if self.preprocessing != "auto":
            _images.resolve_statistics(self.preprocessing, self.mean, self.std)

    def __sklearn_is_fitted__(self):
        return True  # stateless: transform needs no fit

    @property
    def _sklearn_output_config(self) -> _OutputConfig:
        # scikit-learn reads (and set_output writes) this dict; see _OutputConfig.
        config = self.__dict__.get("_output_config")
        if not isinstance(config, _OutputConfig):  # unset, or a plain dict from a pickle
            config = self.__dict__["_output_config"] = _OutputConfig(config or {})
        config.grid = self.output == "patch"
        return config

    @_sklearn_output_config.setter
    def _sklearn_output_config(self, value: dict) -> None:
        self.__dict__["_output_config"] = _OutputConfig(value)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        # Input: a list of paths / images (or uint8 image arrays), not a numeric table.
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        # Output: float32 / float16 whatever the input; no input dtype is preserved.
        tags.transformer_tags.preserves_dtype = []
        return tags

    def __getstate__(self):
        state = super().__getstate__()
        # The weights are reloaded from `model` on demand; they are never pickled.
        for cached in ("_backbone", "_backbone_config", "_plan_cache", "_effective_batch_size"):
            state.pop(cached, None)
        # set_output's settings as a plain dict, so that pickles and skops files hold no class of
        # this module beyond the estimator itself.
        config = state.pop("_output_config", None)
        if config:
            state["_output_config"] = dict(config)
        return state

    def get_feature_names_out(self, input_features: npt.ArrayLike | None = None) -> npt.NDArray[np.object_]:
        """Names of the output columns for ``output="cls"`` or ``"mean"``.

        Parameters
        ----------
        input_features : ignored
            The input is images, which have no feature names.

        Returns
        -------
        feature_names_out : ndarray of str, shape (d,)
            ``"cls0" … "cls{d-1}"`` or ``"mean0" …``.

        Raises
        ------
        ValueError
            For ``output="patch"``: a 4-D grid has no columns.
        """
        self._check_params()
        if self.output == "patch":
            raise ValueError(
                "output='patch' gives a 4-D grid (n, h, w, d), which has no column names and no "
                "pandas form; use output='cls' or 'mean' for a table."
            )
        return np.asarray([f"{self.output}{i}" for i in range(self._resolve().layout.width)], dtype=object)

    def transform(self, X: _images.Images) -> np.ndarray:
        """Embed images.

        Parameters
        ----------
        X : sequence of paths / PIL images / uint8 arrays, or uint8 ndarray (n, H, W, 3) or (n, H, W)
            Or a torch tensor, Dataset or DataLoader, a Hugging Face dataset, a one-column
            DataFrame (see Notes).

        Returns
        -------
        embeddings : ndarray
            ``(n, h, w, d)`` for ``output="patch"``, ``(n, d)`` for "cls" and "mean", of
            ``output_dtype`` (a read-only memory map with ``embedding_cache`` and float16).
        """
        self._check_params()
        # Only a setting made on the embedder is refused; a global one is ignored (_OutputConfig).
        if self.output == "patch" and self._sklearn_output_config.get("transform", "default") != "default":
            self.get_feature_names_out()  # raises: a 4-D grid has no table form
        X = _images.check_images(as_images(X, image_column=self.image_column))
        _images.check_files_exist(X)
        plan = self._resolve()
        row_shape = plan.row_shape(self.output)
        out_dtype = _OUTPUT_DTYPES[self.output_dtype]
        device = resolve_device(self.device)
        compute_dtype = resolve_dtype(self.dtype, device)
        n_jobs = _images.resolve_n_jobs(self.n_jobs)

        if self.embedding_cache is None:
            result = np.empty((len(X), *row_shape), dtype=out_dtype)

            def sink(batch, values):  # batches are consecutive rows: a slice, not fancy indexing
                # torch converts and writes on all cores (numpy would use one).
                torch.from_numpy(result[batch[0] : batch[0] + len(batch)]).copy_(values)

            self._run(X, np.arange(len(X)), sink, device, compute_dtype, plan, n_jobs)
            return result
        with ThreadPoolExecutor(n_jobs) as pool:
            keys = np.stack([np.frombuffer(k, np.uint8) for k in pool.map(_images.image_key, X)])
        settings = self._cache_settings(self._load_config(), compute_dtype)
        cache = EmbeddingCache(self.embedding_cache, settings, keys, row_shape)

        def store(batch, values):
            cache.store(batch, values.to(torch.float16).numpy())

        # fill recomputes the missing rows, and any that fail verification when read back.
        embeddings = cache.fill(lambda rows: self._run(X, rows, store, device, compute_dtype, plan, n_jobs))
        return embeddings if out_dtype == np.float16 else np.asarray(embeddings, dtype=out_dtype)

    # ----------------------------------------------------------------------------------------
    # Model loading and the resolved settings
    # ----------------------------------------------------------------------------------------

    def _model_key(self) -> tuple:
        # A local folder's signature is part of the key: a re-saved model is reloaded.
        return os.fspath(self.model), self.local_files_only, _backbones.folder_signature(self.model)

    def _load_config(self):
        key = self._model_key()
        cached = getattr(self, "_backbone_config", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            config = _backbones.load_config(self.model, local_files_only=self.local_files_only, verbose=self.verbose)
        except OSError as exc:
            # A pickled or skops-saved embedder names its backbone by folder or hub id; a
            # moved folder, or a machine without the hub, surfaces here.
            raise type(exc)(
                f"{type(self).__name__}: the backbone model={os.fspath(self.model)!r} cannot be found ({exc}). "
                "If it is a local folder that was moved or deleted, point the embedder at its new place with "
                "set_params(model=...). To carry the backbone with a fitted pipeline, save the pipeline with "
                "qpm_sklearn.artifacts.save_pipeline(pipeline, folder) and load it with load_pipeline(folder), "
                "or copy the weights with qpm_sklearn.artifacts.save_backbone(embedder, folder)."
            ) from exc
        self._backbone_config = (key, config)
        return config

    def _resolve(self) -> _Plan:
        """Layout, image size, statistics and filter for the current parameters and model."""
        key = (self._model_key(), self.output, self.image_size, self.preprocessing, _hashable(self.mean), _hashable(self.std))
        cached = getattr(self, "_plan_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        name = os.fspath(self.model)
        layout = _backbones.layout_of(self._load_config(), name)
        if self.output == "cls" and not layout.has_cls:
            raise ValueError(
                f"output='cls': model={name!r} (family {layout.family!r}) has no CLS token; use "
                f"output='mean' (the mean of its grid features) instead."
            )
        image_size = self.image_size
        if self.preprocessing == "auto":
            processor = _backbones.processor_settings(_backbones.hub_name(self.model), local_files_only=self.local_files_only)
            mean, std = _images.resolve_statistics(
                "auto", processor.mean if self.mean is None else self.mean, processor.std if self.std is None else self.std
            )
            resample = processor.resample
            if image_size is None:
                if processor.image_size is None:
                    raise ValueError(
                        f"image_size=None takes the output size of model={name!r}'s image processor, "
                        f"whose configuration names none; pass image_size."
                    )
                image_size = max(layout.stride, processor.image_size // layout.stride * layout.stride)
        else:
            mean, std = _images.resolve_statistics(self.preprocessing, self.mean, self.std)
            resample = self.preprocessing
            image_size = _DEFAULT_IMAGE_SIZE if image_size is None else image_size
        plan = _Plan(layout, int(image_size), layout.grid(int(image_size), name), mean, std, resample)
        self._plan_cache = (key, plan)
        return plan

    def _load_model(self, device, dtype):
        key = (*self._model_key(), str(device), dtype)
        cached = getattr(self, "_backbone", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        self._backbone = None  # free the previous model before loading another
        backbone = _backbones.load_backbone(
            self.model, self._resolve().layout, local_files_only=self.local_files_only, verbose=self.verbose
        )
        backbone = backbone.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self._backbone = (key, backbone)
        return backbone

    def _cache_settings(self, config, compute_dtype) -> dict:
        plan = self._resolve()
        return {
            "model": os.fspath(self.model),
            "family": plan.layout.family,
            "revision": _backbones.model_revision(self.model, config),
            "preprocessing": self.preprocessing,
            "mean": plan.mean,
            "std": plan.std,
            "resample": plan.resample,
            "exif_transpose": bool(self.exif_transpose),
            "image_size": plan.image_size,
            "output": self.output,
            "compute_dtype": str(compute_dtype),
        }

    # ----------------------------------------------------------------------------------------
    # The embedding loop
    # ----------------------------------------------------------------------------------------

    def _run(self, X, rows, sink, device, compute_dtype, plan, n_jobs):
        """Embed the images ``X[rows]`` batch by batch and hand each result to ``sink``."""
        backbone = self._load_model(device, compute_dtype)
        batches = [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        resample = _images.PREPROCESSING_FILTERS.get(plan.resample, plan.resample)
        decoded = _images.decode_batches(
            X, batches, plan.image_size, resample, exif_transpose=self.exif_transpose, n_jobs=n_jobs
        )
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
                pixels = wait_upload(*upload(host_tensor(pixels), device, upload_stream))
                embedded = self._embed_pixels(backbone, pixels, device, compute_dtype, plan)
                host, copied = download(embedded, download_stream)
                if writing is not None:
                    writing.result()  # at most one batch in flight; surfaces write errors
                writing = writer.submit(write, batch, host, copied)
            writing.result()

    def _embed_pixels(self, backbone, pixels, device, compute_dtype, plan):
        """uint8 (B, S, S, 3) → embeddings on the device; halves the batch on CUDA out-of-memory."""
        parts, start = [], 0
        while start < len(pixels):
            stop = start + self._effective_batch_size
            try:
                parts.append(self._embed_chunk(backbone, pixels[start:stop], compute_dtype, plan))
                start = stop
            except torch.cuda.OutOfMemoryError:
                if self._effective_batch_size == 1:
                    raise
                self._effective_batch_size //= 2
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                warnings.warn(
                    f"{type(self).__name__}: a batch did not fit in GPU memory; retrying with "
                    f"batch_size={self._effective_batch_size}.",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _embed_chunk(self, backbone, pixels, compute_dtype, plan):
        with torch.inference_mode():
            pixel_values = _images.normalize(pixels, preprocessing=self.preprocessing, mean=plan.mean, std=plan.std)
            hidden = self._forward(backbone, pixel_values.to(compute_dtype), plan.layout)
            cls, grid = plan.layout.split(hidden, plan.grid, os.fspath(self.model))
            if self.output == "cls":
                result = cls
            elif self.output == "mean":
                result = grid.float().mean((1, 2))
            else:
                result = grid
            # Still in the compute dtype (bfloat16 on CUDA): half the bytes to move to the
            # host, where the writer converts to output_dtype exactly as the device would.
            return result.contiguous()

    def _forward(self, backbone, pixel_values, layout) -> torch.Tensor:
        return backbone(**layout.model_inputs(pixel_values)).last_hidden_state


class Dinov2Embedder(PatchEmbedder):
    """Embed images with a frozen DINOv2 backbone: :class:`PatchEmbedder` with the paper's defaults.

    The default entry point: DINOv2 with registers (ViT-B/14), 224 px, ImageNet
    normalisation. Every parameter is :class:`PatchEmbedder`'s; only the defaults of
    ``image_size`` (224) and ``preprocessing`` ("imagenet", so that a local DINOv2
    folder needs no image-processor configuration) differ. Other backbone families
    load here too, though :class:`PatchEmbedder` is the name for them.

    Parameters
    ----------
    model : str or path-like, default="facebook/dinov2-with-registers-base"
    output : {"patch", "cls", "mean"}, default="patch"
    image_size : int, default=224
        A multiple of the patch size (14 for DINOv2).
    preprocessing : {"imagenet", "paper", "auto"}, default="imagenet"
    mean, std : sequence of 3 floats, default=None
    exif_transpose : bool, default=True
    batch_size : int, default=64
    device : str or torch.device, default=None
    dtype : {"float32", "bfloat16", "float16"}, default=None
    output_dtype : {"float32", "float16"}, default="float32"
    local_files_only : bool, default=False
    embedding_cache : str or path-like, default=None
    n_jobs : int, default=None
    verbose : bool or int, default=False
    image_column : str, default=None

    See Also
    --------
    PatchEmbedder : the meaning of each parameter, and the other backbone families.
    QPMClassifier : the interpretable classifier fitted on the patch grid.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from qpm_sklearn import Dinov2Embedder
    >>> from qpm_sklearn.testing import save_random_backbone
    >>> folder = save_random_backbone(tempfile.mkdtemp(), "tiny")  # offline stand-in for a hub id
    >>> images = np.random.default_rng(0).integers(0, 256, (2, 40, 50, 3), dtype=np.uint8)
    >>> Dinov2Embedder(model=str(folder), image_size=56, device="cpu").transform(images).shape
    (2, 4, 4, 32)
    """

    def __init__(
        self,
        model: str | os.PathLike[str] = "facebook/dinov2-with-registers-base",
        *,
        output: Literal["patch", "cls", "mean"] = "patch",
        image_size: int | None = 224,
        preprocessing: Literal["auto", "imagenet", "paper"] = "imagenet",
        mean: npt.ArrayLike | None = None,
        std: npt.ArrayLike | None = None,
        exif_transpose: bool = True,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] | torch.dtype | None = None,
        output_dtype: Literal["float32", "float16"] = "float32",
        local_files_only: bool = False,
        embedding_cache: str | os.PathLike[str] | None = None,
        n_jobs: int | None = None,
        verbose: bool | int = False,
        image_column: str | None = None,
    ) -> None:
        super().__init__(
            model,
            output=output,
            image_size=image_size,
            preprocessing=preprocessing,
            mean=mean,
            std=std,
            exif_transpose=exif_transpose,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            output_dtype=output_dtype,
            local_files_only=local_files_only,
            embedding_cache=embedding_cache,
            n_jobs=n_jobs,
            verbose=verbose,
            image_column=image_column,
        )


def cache_settings(embedder: PatchEmbedder, compute_dtype: torch.dtype) -> tuple[dict, tuple[int, ...]]:
    """What keys ``embedder``'s entries in an embedding cache, and the shape of one row.

    The settings are every parameter that changes the numbers, resolved against the
    model's configuration (family, revision, statistics, filter, image size, output and
    compute dtype); two embedders with equal settings write the same rows.

    Parameters
    ----------
    embedder : PatchEmbedder
        Its parameters are validated first.
    compute_dtype : torch.dtype
        The dtype the forward pass runs in (see :func:`qpm_sklearn._device.resolve_dtype`).

    Returns
    -------
    settings : dict
        The JSON-serialisable settings :class:`~qpm_sklearn._cache.EmbeddingCache` is keyed by.
    row_shape : tuple of int
        ``(h, w, d)`` for ``output="patch"``, ``(d,)`` otherwise.

    Examples
    --------
    >>> import tempfile
    >>> import torch
    >>> from qpm_sklearn import PatchEmbedder
    >>> from qpm_sklearn.embedding import cache_settings
    >>> from qpm_sklearn.testing import save_random_model
    >>> embedder = PatchEmbedder(str(save_random_model(tempfile.mkdtemp(), "resnet")), image_size=64)
    >>> settings, row_shape = cache_settings(embedder, torch.float32)
    >>> settings["family"], row_shape
    ('resnet', (2, 2, 32))
    """
    embedder._check_params()
    settings = embedder._cache_settings(embedder._load_config(), compute_dtype)
    return settings, tuple(int(size) for size in embedder._resolve().row_shape(embedder.output))

def _hashable(value):
    return None if value is None else tuple(np.asarray(value, dtype=np.float64).ravel().tolist())

