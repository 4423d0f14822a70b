"""Per-family layout of vision backbones: which outputs are CLS, registers and patches.

:class:`~qpm_sklearn.PatchEmbedder` needs, for any model it loads, a grid of local
features ``(n, h, w, d)`` in row-major order and, where the model has one, its CLS
token. Where these sit in the model's output differs by family, so this module reads
it from the model's own configuration (``model_type``, patch size, register count,
stage strides), never from a fixed token count:

=====================  ===========================  =============================================
``model_type``         ``last_hidden_state``        grid / CLS
=====================  ===========================  =============================================
dinov2                 [CLS, patches]               patches / token 0
dinov2_with_registers  [CLS, R registers, patches]  patches / token 0 (registers dropped)
dinov3_vit             [CLS, R registers, patches]  patches / token 0 (registers dropped)
vit                    [CLS, patches]               patches / token 0
clip (vision tower)    [CLS, patches]               patches / token 0 (before ``post_layernorm``)
siglip (vision tower)  [patches]                    patches / no CLS
siglip2 (NaFlex)       [patches]                    patches / no CLS
dinov3_convnext        [pooled, patches]            patches / token 0 (the model's pooled token)
resnet, convnext       map ``(n, C, h, w)``         the map, channels last / no CLS
=====================  ===========================  =============================================

A CLIP or SigLIP checkpoint holding both towers is loaded as its vision tower only.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _utils

if TYPE_CHECKING:
    import torch
    import transformers

# PIL's resampling filter codes, as image-processor configurations store them.
_PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_TOWERS = {"clip": "vision_config", "siglip": "vision_config", "siglip2": "vision_config"}
# What huggingface_hub / requests / httpx raise (or say) when the hub cannot be reached.
_NETWORK_ERRORS = {
    "ConnectionError", "ConnectError", "ConnectTimeout", "ReadTimeout", "Timeout", "TimeoutError",
    "ProxyError", "SSLError", "OfflineModeIsEnabled", "LocalEntryNotFoundError",
}
_NETWORK_PHRASES = ("couldn't connect", "could not connect", "offline mode", "connection", "timed out")


@dataclass(frozen=True)
class Layout:
    """Where a backbone's features sit in its output.

    Built by :func:`layout_of`; each parameter is kept as the attribute of the same name.

    Parameters
    ----------
    family : str
        The configuration's ``model_type`` (a key of :data:`FAMILIES`).
    model_class : str
        The transformers class that loads the (vision) model.
    config : transformers.PretrainedConfig
        The configuration of what ``model_class`` loads (a vision tower's own).
    stride : int
        Input pixels per grid cell: the patch size, or a CNN's total stride.
    width : int
        Feature size ``d``.
    n_prefix : int
        Tokens before the patches in ``last_hidden_state`` (CLS + registers); 0 for maps.
    has_cls : bool
        Whether token 0 is a CLS (or the model's pooled) token.
    channels_first : bool
        ``last_hidden_state`` is an ``(n, C, h, w)`` feature map, not a token sequence.
    patchified : bool
        The model takes pixels as ``(n, h*w, p*p*3)`` patches with their spatial shapes
        (SigLIP 2 NaFlex).
    forward_kwargs : dict
        Extra keyword arguments of the forward pass.
    """

    family: str
    model_class: str
    config: object = field(repr=False)
    stride: int
    width: int
    n_prefix: int = 0
    has_cls: bool = False
    channels_first: bool = False
    patchified: bool = False
    forward_kwargs: dict = field(default_factory=dict)

    def grid(self, image_size: int, model: str) -> int:
        """Grid side for a square input of ``image_size`` pixels; refuses sizes off the stride.

        Parameters
        ----------
        image_size : int
            Side of the square input in pixels.
        model : str
            The model's name, for the error message.

        Returns
        -------
        grid : int
            ``image_size // stride``.

        Raises
        ------
        ValueError
            When ``image_size`` is not a multiple of the stride.
        """
        if image_size % self.stride:
            raise ValueError(
                f"image_size must be a multiple of the model's {self._stride_name} {self.stride}; got "
                f"image_size={image_size} (e.g. use {max(self.stride, round(image_size / self.stride) * self.stride)}) "
                f"for model={model!r}."
            )
        return image_size // self.stride

    @property
    def _stride_name(self) -> str:
        return "total stride" if self.channels_first or self.family == "dinov3_convnext" else "patch size"

    def model_inputs(self, pixel_values: torch.Tensor) -> dict[str, object]:
        """Keyword arguments of the forward pass for normalised pixels ``(B, 3, S, S)``.

        Parameters
        ----------
        pixel_values : torch.Tensor of shape (B, 3, S, S)
            Normalised pixels.

        Returns
        -------
        inputs : dict
            ``pixel_values`` (as patches for NaFlex models, with their mask and spatial
            shapes) and :attr:`forward_kwargs`.
        """
        if not self.patchified:
            return {"pixel_values": pixel_values, **self.forward_kwargs}
        import torch

        # The layout of transformers' Siglip2 image processor: patches in row-major order,
        # each flattened as (row in patch, column in patch, channel).
        batch, channels, side, _ = pixel_values.shape
        p, g = self.stride, side // self.stride
        patches = pixel_values.reshape(batch, channels, g, p, g, p).permute(0, 2, 4, 3, 5, 1)
        return {
            "pixel_values": patches.reshape(batch, g * g, p * p * channels),
            "pixel_attention_mask": torch.ones(batch, g * g, dtype=torch.long, device=pixel_values.device),
            "spatial_shapes": torch.tensor([[g, g]] * batch, dtype=torch.long, device=pixel_values.device),
            **self.forward_kwargs,
        }

    def split(self, hidden: torch.Tensor, grid: int, model: str) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``last_hidden_state`` → (CLS ``(B, d)`` or None, patch grid ``(B, grid, grid, d)``).

        Parameters
        ----------
        hidden : torch.Tensor
            The model's ``last_hidden_state``: tokens ``(B, n_prefix + grid², d)``, or a map
            ``(B, d, grid, grid)`` when :attr:`channels_first`.
        grid : int
            The expected grid side (:meth:`grid`).
        model : str
            The model's name, for the error message.

        Returns
        -------
        cls : torch.Tensor of shape (B, d) or None
            Token 0 when :attr:`has_cls`, else None.
        patches : torch.Tensor of shape (B, grid, grid, d)
            The patch tokens in row-major order (a view, channels last).

        Raises
        ------
        ValueError
            When the output has another token count or map shape than the layout expects.
        """
        if self.channels_first:
            if tuple(hidden.shape[1:]) != (self.width, grid, grid):
                raise ValueError(
                    f"model={model!r} returned a feature map of shape {tuple(hidden.shape[1:])}; expected "
                    f"({self.width}, {grid}, {grid}) from its configuration."
                )
            return None, hidden.permute(0, 2, 3, 1)
        expected = self.n_prefix + grid * grid
        if hidden.shape[1] != expected:
            raise ValueError(
                f"model={model!r} returned {hidden.shape[1]} tokens for a {grid}x{grid} grid; expected "
                f"{self.n_prefix} leading (CLS / register) tokens + {grid * grid} patches."
            )
        cls = hidden[:, 0] if self.has_cls else None
        # row-major: patch token p is grid cell (p // grid, p % grid)
        return cls, hidden[:, self.n_prefix :].reshape(hidden.shape[0], grid, grid, hidden.shape[-1])


def _patch_size(config, model: str) -> int:
    patch = config.patch_size
    if isinstance(patch, (tuple, list)):
        if len(set(patch)) != 1:
            raise ValueError(f"model={model!r} has non-square patches {patch}.")
        patch = patch[0]
    return int(patch)


def _vit(model_class, *, registers=False, cls=True, interpolate=False, patchified=False):
    def layout(family, config, model):
        n_registers = int(getattr(config, "num_register_tokens", 0) or 0) if registers else 0
        return Layout(
            family, model_class, config, _patch_size(config, model), int(config.hidden_size),
            n_prefix=int(cls) + n_registers, has_cls=cls, patchified=patchified,
            forward_kwargs={"interpolate_pos_encoding": True} if interpolate else {},
        )  # fmt: skip

    return layout


def _resnet(family, config, model):
    # Stem: a stride-2 convolution and a stride-2 max-pool; then every stage but the first
    # halves the map, and the first too with downsample_in_first_stage.
    stride = 4 * 2 ** (len(config.depths) - 1) * (2 if config.downsample_in_first_stage else 1)
    return Layout(family, "ResNetModel", config, stride, int(config.hidden_sizes[-1]), channels_first=True)


def _convnext(family, config, model):
    # Stem: a patch_size-strided "patchify" convolution; every later stage halves the map.
    stride = _patch_size(config, model) * 2 ** (len(config.hidden_sizes) - 1)
    return Layout(family, "ConvNextModel", config, stride, int(config.hidden_sizes[-1]), channels_first=True)


def _dinov3_convnext(family, config, model):
    # Stride-4 stem, then halved per stage; the output is [pooled token, map as tokens].
    stride = 4 * 2 ** (len(config.hidden_sizes) - 1)
    return Layout(family, "DINOv3ConvNextModel", config, stride, int(config.hidden_sizes[-1]), n_prefix=1, has_cls=True)


# model_type → layout builder. "*_vision_model" are the towers saved on their own.
FAMILIES = {
    "dinov2": _vit("Dinov2Model"),
    "dinov2_with_registers": _vit("Dinov2WithRegistersModel", registers=True),
    "dinov3_vit": _vit("DINOv3ViTModel", registers=True),
    "vit": _vit("ViTModel", interpolate=True),
    "clip": _vit("CLIPVisionModel", interpolate=True),
    "clip_vision_model": _vit("CLIPVisionModel", interpolate=True),
    "siglip": _vit("SiglipVisionModel", cls=False, interpolate=True),
    "siglip_vision_model": _vit("SiglipVisionModel", cls=False, interpolate=True),
    "siglip2": _vit("Siglip2VisionModel", cls=False, patchified=True),
    "siglip2_vision_model": _vit("Siglip2VisionModel", cls=False, patchified=True),
    "resnet": _resnet,
    "convnext": _convnext,
    "dinov3_convnext": _dinov3_convnext,
}


def layout_of(config: transformers.PretrainedConfig, model: str) -> Layout:
    """The :class:`Layout` of the model whose (top-level) configuration is ``config``.

    Parameters
    ----------
    config : transformers.PretrainedConfig
        The model's configuration (for a two-tower checkpoint, its vision tower is used).
    model : str
        The model's name, for error messages.

    Returns
    -------
    layout : Layout
        Where the model's CLS, register and patch tokens sit.

    Raises
    ------
    ValueError
        For a family this module does not know, naming the supported ones.
    """
    family = getattr(config, "model_type", None)
    if family not in FAMILIES:
        raise ValueError(
            f"model={model!r} is a {type(config).__name__} (model_type={family!r}), a family the "
            f"embedder does not know the token layout of. Supported model types: {', '.join(FAMILIES)}."
        )
    tower = _TOWERS.get(family)
    return FAMILIES[family](family, getattr(config, tower) if tower else config, model)


# --------------------------------------------------------------------------------------------
# The model's own image-processor configuration (preprocessing="auto")
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessorSettings:
    """What ``preprocessing="auto"`` takes from ``preprocessor_config.json``.

    Built by :func:`processor_settings`; each parameter is kept as the attribute of the same name.

    Parameters
    ----------
    mean, std : tuple of 3 floats
        The normalisation statistics.
    resample : str
        A PIL filter name (see :data:`qpm_sklearn.images.RESAMPLING_FILTERS`).
    image_size : int or None
        The side of the processor's output, if its configuration says.
    """

    mean: tuple
    std: tuple
    resample: str
    image_size: int | None


def processor_settings(name: str, *, local_files_only: bool) -> ProcessorSettings:
    """Read the image-processor configuration saved with model ``name`` (folder or hub id).

    The normalisation, the resampling filter and the processor's output side are taken;
    its resize-then-crop geometry is not (the embedder squash-resizes the whole image,
    docs/method.md#preprocessing, so the grid covers all of it).

    Parameters
    ----------
    name : str
        Hub id or local folder (as :func:`hub_name` gives it).
    local_files_only : bool
        Never contact the hub.

    Returns
    -------
    settings : ProcessorSettings
        Statistics, filter and output side.

    Raises
    ------
    ValueError
        When the configuration is missing, rescales other than by 1/255, has no
        statistics, or names an unknown filter.
    """
    from transformers.image_processing_utils import ImageProcessingMixin

    try:
        settings, _ = ImageProcessingMixin.get_image_processor_dict(name, local_files_only=local_files_only)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"preprocessing='auto' reads the model's image-processor configuration "
            f"(preprocessor_config.json), but model={name!r} has none that could be read ({exc}). "
            f"Pass preprocessing='imagenet' (with mean/std if needed) instead."
        ) from exc
    if settings.get("do_rescale", True) and not math.isclose(settings.get("rescale_factor", 1 / 255), 1 / 255):
        raise ValueError(
            f"model={name!r}: its image processor rescales by {settings['rescale_factor']}, not 1/255; "
            f"preprocessing='auto' supports only 8-bit scaling. Pass preprocessing='imagenet' with mean/std."
        )
    if settings.get("do_normalize", True):
        mean, std = settings.get("image_mean"), settings.get("image_std")
        if mean is None or std is None:
            raise ValueError(f"model={name!r}: its image-processor configuration has no image_mean/image_std.")
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    resample = settings.get("resample", 3)
    if resample not in _PIL_FILTERS:
        raise ValueError(f"model={name!r}: unknown resampling filter {resample!r} in its image-processor configuration.")
    return ProcessorSettings(
        tuple(float(v) for v in mean), tuple(float(v) for v in std), _PIL_FILTERS[resample], _output_side(settings)
    )


def _output_side(settings: dict) -> int | None:
    if settings.get("max_num_patches") and settings.get("patch_size"):  # SigLIP 2 NaFlex
        return math.isqrt(int(settings["max_num_patches"])) * int(settings["patch_size"])
    size = settings.get("crop_size") if settings.get("do_center_crop") else None
    size = size or settings.get("size")
    if isinstance(size, int):
        return size
    if isinstance(size, dict):
        for key in ("height", "shortest_edge", "longest_edge"):
            if key in size:
                return int(size[key])
    return None


# --------------------------------------------------------------------------------------------
# Loading from the hub or a local folder
# --------------------------------------------------------------------------------------------


def hub_name(model: str | os.PathLike[str]) -> str:
    """The name transformers loads ``model`` by: an expanded local folder, or the hub id.

    Parameters
    ----------
    model : str or path-like
        A hub id (``name`` or ``org/name``) or a local folder.

    Returns
    -------
    name : str
        The folder with ``~`` expanded when it exists, else ``model`` itself.

    Raises
    ------
    FileNotFoundError
        When ``model`` is written as a path (``./x``, ``/x``, ``a/b/c`` ...) that is no folder.

    Examples
    --------
    >>> from qpm_sklearn.backbones import hub_name
    >>> hub_name("facebook/dinov2-small")
    'facebook/dinov2-small'
    """
    name = os.fspath(model)
    folder = Path(name).expanduser()
    if _looks_like_path(name) and not folder.is_dir():
        raise FileNotFoundError(f"model={name!r}: no such model folder.")
    return str(folder) if folder.is_dir() else name


def from_pretrained(
    auto_class: Any,
    model: str | os.PathLike[str],
    *,
    local_files_only: bool = False,
    verbose: bool | int = False,
    **kwargs: Any,
) -> Any:
    """``auto_class.from_pretrained(model)`` with errors that say what to do.

    Parameters
    ----------
    auto_class : type
        A transformers class with ``from_pretrained`` (``AutoConfig``, a model class ...).
    model : str or path-like
        Hub id or local folder.
    local_files_only : bool, default=False
        Never contact the hub.
    verbose : bool or int, default=False
        Let transformers print its warnings and download bars.
    **kwargs
        Passed to ``from_pretrained``.

    Returns
    -------
    loaded : object
        What ``from_pretrained`` returns.

    Raises
    ------
    OSError
        When the model is not local and the hub may not (``local_files_only``) or could
        not be reached.
    ValueError
        When anything else prevents loading it.

    Examples
    --------
    >>> import tempfile
    >>> from transformers import AutoConfig
    >>> from qpm_sklearn.backbones import from_pretrained
    >>> from qpm_sklearn.testing import save_random_model
    >>> folder = save_random_model(tempfile.mkdtemp(), "resnet")
    >>> from_pretrained(AutoConfig, folder, local_files_only=True).model_type
    'resnet'
    """
    name = hub_name(model)
    try:
        with _utils.quiet_transformers(verbose):
            return auto_class.from_pretrained(name, local_files_only=local_files_only, **kwargs)
    except Exception as exc:  # transformers raises OSError, ValueError, hub errors ...
        if not Path(name).is_dir() and local_files_only:
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


def load_config(
    model: str | os.PathLike[str], *, local_files_only: bool = False, verbose: bool | int = False
) -> transformers.PretrainedConfig:
    """The configuration of ``model``, refused when its family's token layout is unknown.

    Parameters
    ----------
    model : str or path-like
        Hub id or local folder.
    local_files_only : bool, default=False
        Never contact the hub.
    verbose : bool or int, default=False
        Let transformers print its warnings and download bars.

    Returns
    -------
    config : transformers.PretrainedConfig
        The top-level configuration (for a two-tower checkpoint, both towers').

    Examples
    --------
    >>> import tempfile
    >>> from qpm_sklearn.backbones import load_config
    >>> from qpm_sklearn.testing import save_random_model
    >>> load_config(save_random_model(tempfile.mkdtemp(), "vit")).model_type
    'vit'
    """
    from transformers import AutoConfig

    config = from_pretrained(AutoConfig, model, local_files_only=local_files_only, verbose=verbose)
    layout_of(config, os.fspath(model))  # an unknown family fails here
    return config


def load_layout(model: str | os.PathLike[str], *, local_files_only: bool = False) -> Layout:
    """The :class:`Layout` of a hub id or local folder; reads only its configuration.

    Parameters
    ----------
    model : str or path-like
        Hub id or local folder.
    local_files_only : bool, default=False
        Never contact the hub.

    Returns
    -------
    layout : Layout
        Where the model's CLS, register and patch tokens sit.

    Examples
    --------
    >>> import tempfile
    >>> from qpm_sklearn.backbones import load_layout
    >>> from qpm_sklearn.testing import save_random_model
    >>> layout = load_layout(save_random_model(tempfile.mkdtemp(), "dinov3_vit"))
    >>> layout.family, layout.stride, layout.n_prefix, layout.has_cls
    ('dinov3_vit', 16, 5, True)
    """
    return layout_of(load_config(model, local_files_only=local_files_only), os.fspath(model))


def load_backbone(
    model: str | os.PathLike[str], layout: Layout, *, local_files_only: bool = False, verbose: bool | int = False
) -> torch.nn.Module:
    """The weights of ``model`` as ``layout.model_class`` (a two-tower checkpoint's vision tower).

    Parameters
    ----------
    model : str or path-like
        Hub id or local folder.
    layout : Layout
        Its layout (:func:`load_layout`), which names the class to load.
    local_files_only : bool, default=False
        Never contact the hub.
    verbose : bool or int, default=False
        Let transformers print its warnings and download bars.

    Returns
    -------
    backbone : torch.nn.Module
        The model on the CPU, as loaded (not yet frozen or in ``eval`` mode).

    Examples
    --------
    >>> import tempfile
    >>> from qpm_sklearn.backbones import load_backbone, load_layout
    >>> from qpm_sklearn.testing import save_random_model
    >>> folder = save_random_model(tempfile.mkdtemp(), "resnet")
    >>> type(load_backbone(folder, load_layout(folder))).__name__
    'ResNetModel'
    """
    import transformers

    model_class = getattr(transformers, layout.model_class)
    return from_pretrained(model_class, model, local_files_only=local_files_only, verbose=verbose, config=layout.config)


def folder_signature(model: str | os.PathLike[str]) -> str | None:
    """Names, sizes and modification times of a local model folder's files, hashed.

    Parameters
    ----------
    model : str or path-like
        Hub id or local folder.

    Returns
    -------
    signature : str or None
        A hex digest that changes when the folder is re-saved; None for a hub id.

    Examples
    --------
    >>> from qpm_sklearn.backbones import folder_signature
    >>> folder_signature("facebook/dinov2-small") is None
    True
    """
    folder = Path(os.fspath(model)).expanduser()
    if not folder.is_dir():
        return None
    digest = hashlib.blake2b(digest_size=16)
    for file in sorted(folder.iterdir()):
        if file.is_file():
            stat = file.stat()
            digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def model_revision(model: str | os.PathLike[str], config: transformers.PretrainedConfig) -> str:
    """What identifies the weights: a local folder's signature or the hub commit hash.

    Parameters
    ----------
    model : str or path-like
        Hub id or local folder.
    config : transformers.PretrainedConfig
        Its configuration as loaded (:func:`load_config`), which carries the commit hash.

    Returns
    -------
    revision : str
        ``"folder:<signature>"`` or ``"hub:<commit hash>"`` (``"hub:None"`` when the hub
        gave none, with a logged warning).

    Examples
    --------
    >>> import tempfile
    >>> from qpm_sklearn.backbones import load_config, model_revision
    >>> from qpm_sklearn.testing import save_random_model
    >>> folder = save_random_model(tempfile.mkdtemp(), "vit")
    >>> model_revision(folder, load_config(folder)).startswith("folder:")
    True
    """
    signature = folder_signature(model)
    if signature is not None:
        return "folder:" + signature
    commit = getattr(config, "_commit_hash", None)
    if commit is None:
        _utils.logger.warning("model=%r has no hub commit hash; the cache is keyed by its name only.", os.fspath(model))
    return f"hub:{commit}"


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a folder."""
    return name.startswith((".", "~", "/")) or "\\" in name or Path(name).is_absolute() or name.count("/") > 1


def _looks_like_network_failure(exc: BaseException | None) -> bool:
    while exc is not None:
        if type(exc).__name__ in _NETWORK_ERRORS or any(p in str(exc).lower() for p in _NETWORK_PHRASES):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
