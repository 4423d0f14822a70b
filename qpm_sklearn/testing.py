"""Random-weight backbones built locally (no download), for tests, examples and docs.

Tests, the offline quickstart and the speed benchmarks need a model that loads
through exactly the ``from_pretrained`` path a hub id takes. These helpers build
one from a configuration written here and ``save_pretrained`` it to a folder,
together with an image-processor configuration (``preprocessor_config.json``) as
hub models have, so ``preprocessing="auto"`` works on it.

* :func:`save_random_backbone`: DINOv2 (with or without registers) at the hub
  architectures' sizes or a tiny one. Speed does not depend on weight values, so the
  real sizes serve benchmarks.
* :func:`save_random_model`: a tiny model of any family the embedder supports
  (:data:`TINY_MODELS`), for tests of the token layout.

The weights are random: nothing learned should be read into their features.

Examples
--------
>>> import tempfile
>>> from qpm_sklearn.testing import save_random_model
>>> folder = save_random_model(tempfile.mkdtemp(), "dinov3_vit")
>>> sorted(p.name for p in folder.iterdir())
['config.json', 'model.safetensors', 'preprocessor_config.json']
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ._utils import quiet_transformers

__all__ = ["BACKBONE_SIZES", "TINY_MODELS", "save_random_backbone", "save_random_model"]

_IMAGENET = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
_HALF = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
_CLIP = dict(image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])

# The architecture of facebook/dinov2-with-registers-{small,base,large} (and
# facebook/dinov2-{small,base,large} with no registers), as in their config.json.
BACKBONE_SIZES = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=56),
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=518),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, image_size=518),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, image_size=518),
}

_VIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
             pad_token_id=1, bos_token_id=0, eos_token_id=2)  # fmt: skip
_STAGES = dict(hidden_sizes=[8, 12, 16, 32], depths=[1, 1, 1, 1])
# family → (model class, config class, config, processor class, processor settings). The
# processors' settings are those of the family's hub models, at the tiny models' 64 px
# (56 px, four 14-px patches, for DINOv2).
TINY_MODELS: dict[str, tuple[str, str, dict[str, Any], str, dict[str, Any]]] = {
    "dinov2": ("Dinov2Model", "Dinov2Config", dict(_VIT, patch_size=14, image_size=56, layerscale_value=1.0),
               "BitImageProcessorPil", dict(_IMAGENET, size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56})),
    "dinov2_with_registers": ("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig",
                              dict(_VIT, patch_size=14, image_size=56, layerscale_value=1.0, num_register_tokens=4),
                              "BitImageProcessorPil", dict(_IMAGENET, size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56})),
    "dinov3_vit": ("DINOv3ViTModel", "DINOv3ViTConfig", dict(_VIT, patch_size=16, image_size=64, num_register_tokens=4),
                   "ViTImageProcessorPil", dict(_IMAGENET, size={"height": 64, "width": 64}, resample=2)),
    "vit": ("ViTModel", "ViTConfig", dict(_VIT, patch_size=16, image_size=64),
            "ViTImageProcessorPil", dict(_HALF, size={"height": 64, "width": 64}, resample=2)),
    "clip": ("CLIPModel", "CLIPConfig", dict(vision_config=dict(_VIT, patch_size=16, image_size=64), text_config=_TEXT, projection_dim=16),
             "CLIPImageProcessorPil", dict(_CLIP, size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})),
    "siglip": ("SiglipModel", "SiglipConfig", dict(vision_config=dict(_VIT, patch_size=16, image_size=64), text_config=_TEXT),
               "SiglipImageProcessorPil", dict(_HALF, size={"height": 64, "width": 64}, resample=2)),
    "siglip2": ("Siglip2Model", "Siglip2Config", dict(vision_config=dict(_VIT, patch_size=16, num_patches=16), text_config=_TEXT),
                "Siglip2ImageProcessorPil", dict(_HALF, patch_size=16, max_num_patches=16, resample=2)),
    "resnet": ("ResNetModel", "ResNetConfig", dict(_STAGES, embedding_size=8, layer_type="basic"),
               "ConvNextImageProcessorPil", dict(_IMAGENET, size={"shortest_edge": 64}, crop_pct=0.875, resample=3)),
    "convnext": ("ConvNextModel", "ConvNextConfig", dict(_STAGES, patch_size=4),
                 "ConvNextImageProcessorPil", dict(_IMAGENET, size={"shortest_edge": 64}, crop_pct=0.875, resample=3)),
    "dinov3_convnext": ("DINOv3ConvNextModel", "DINOv3ConvNextConfig", dict(_STAGES),
                        "ViTImageProcessorPil", dict(_IMAGENET, size={"height": 64, "width": 64}, resample=2)),
}  # fmt: skip


def save_random_model(
    folder: str | os.PathLike[str], family: str, *, seed: int = 0, image_processor: bool = True, **config_overrides: Any
) -> Path:
    """Build a tiny random-weight model of ``family`` and save it to ``folder``.

    Parameters
    ----------
    folder : str or path-like
        Where ``save_pretrained`` writes the configuration and the weights.
    family : str
        A key of :data:`TINY_MODELS`: "dinov2", "dinov2_with_registers", "dinov3_vit",
        "vit", "clip", "siglip", "siglip2" (both towers, as the hub checkpoints),
        "resnet", "convnext", "dinov3_convnext". ViTs take 64 px in 16-px patches
        (DINOv2: 56 px in 14-px ones); CNNs have a total stride of 32.
    seed : int, default=0
        Seeds the weight initialisation.
    image_processor : bool, default=True
        Also save the family's image-processor configuration.
    **config_overrides
        Passed to the configuration (e.g. ``hidden_size=48``).

    Returns
    -------
    path : pathlib.Path
        The folder, ready for ``PatchEmbedder(model=str(path))``.
    """
    if family not in TINY_MODELS:
        raise ValueError(f"family must be one of {sorted(TINY_MODELS)}; got {family!r}.")
    model_class, config_class, settings, processor_class, processor_settings = TINY_MODELS[family]
    config = _transformers_class(config_class)(**{**settings, **config_overrides})
    processor = _transformers_class(processor_class)(**processor_settings) if image_processor else None
    return _save(_transformers_class(model_class), config, folder, seed, processor)


def save_random_backbone(
    folder: str | os.PathLike[str],
    size: Literal["tiny", "small", "base", "large"] = "tiny",
    *,
    num_register_tokens: int = 4,
    patch_size: int = 14,
    seed: int = 0,
    **config_overrides: Any,
) -> Path:
    """Build a random-weight DINOv2(-with-registers) model and save it to ``folder``.

    Parameters
    ----------
    folder : str or path-like
        Where ``save_pretrained`` writes ``config.json``, the weights and the image
        processor's configuration (the hub's: ImageNet statistics, bicubic).
    size : {"tiny", "small", "base", "large"}
        "tiny" is a 2-layer, 32-wide model for tests; the others copy the hub
        architectures.
    num_register_tokens : int, default=4
        0 builds a plain ``Dinov2Model`` (no registers).
    patch_size : int, default=14
    seed : int, default=0
        Seeds the weight initialisation.
    **config_overrides
        Passed to the configuration (e.g. ``hidden_size=48``).

    Returns
    -------
    path : pathlib.Path
        The folder, ready for ``Dinov2Embedder(model=str(path))``.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from qpm_sklearn import Dinov2Embedder
    >>> from qpm_sklearn.testing import save_random_backbone
    >>> folder = save_random_backbone(tempfile.mkdtemp(), "tiny")
    >>> images = np.zeros((1, 28, 28, 3), np.uint8)
    >>> Dinov2Embedder(str(folder), image_size=28, device="cpu", output="cls").transform(images).shape
    (1, 32)
    """
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    if size not in BACKBONE_SIZES:
        raise ValueError(f"size must be one of {sorted(BACKBONE_SIZES)}; got {size!r}.")
    settings: dict[str, Any] = dict(BACKBONE_SIZES[size], patch_size=patch_size, layerscale_value=1.0)
    settings.update(config_overrides)
    model_class: type[Dinov2Model | Dinov2WithRegistersModel]
    config: Dinov2Config | Dinov2WithRegistersConfig
    if num_register_tokens > 0:
        model_class, config = Dinov2WithRegistersModel, Dinov2WithRegistersConfig(num_register_tokens=num_register_tokens, **settings)
    else:
        model_class, config = Dinov2Model, Dinov2Config(**settings)
    # The hub's processor: shortest edge 256, centre crop 224 (the tiny model: 64 and 56).
    crop = 56 if size == "tiny" else 224
    processor = _transformers_class("BitImageProcessorPil")(
        **_IMAGENET, size={"shortest_edge": crop * 8 // 7}, crop_size={"height": crop, "width": crop}
    )
    return _save(model_class, config, folder, seed, processor)


def _transformers_class(name: str):
    """The class ``name`` of the installed transformers.

    transformers 5 names the PIL image processors ``...ImageProcessorPil``; before it
    they are the plain ``...ImageProcessor`` (the same processor, and the same
    ``image_processor_type`` in the saved JSON), so either spelling is found.
    """
    import transformers

    for candidate in (name, name.removesuffix("Pil")):
        found = getattr(transformers, candidate, None)
        if found is not None:
            return found
    raise ImportError(
        f"transformers {transformers.__version__} has no {name}; this tiny model needs a newer transformers."
    )


def _save(model_class, config, folder, seed: int, processor) -> Path:
    # Seeded through a private generator state: the caller's global torch RNG is restored.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config).eval()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with quiet_transformers(verbose=False):
        model.save_pretrained(folder)
        if processor is not None:
            processor.save_pretrained(folder)
    return folder


def fitted_toy_classifier(seed: int = 0) -> tuple:
    """A small QPMClassifier fitted in about a second on a synthetic 3-class patch grid.

    For examples and tests of what takes a fitted model (export, serving, explanations).

    Parameters
    ----------
    seed : int, default=0

    Returns
    -------
    clf : QPMClassifier
    X : ndarray of float32, shape (60, 4, 4, 8)
    y : ndarray of int, shape (60,)

    Examples
    --------
    >>> from qpm_sklearn.testing import fitted_toy_classifier
    >>> clf, X, y = fitted_toy_classifier()
    >>> clf.predict(X[:3]).shape
    (3,)
    """
    from .classifier import QPMClassifier

    rng = np.random.RandomState(seed)
    X = rng.normal(size=(60, 4, 4, 8)).astype(np.float32)
    y = np.repeat([0, 1, 2], 20)
    X[y == 1, :2] += 2.0
    X[y == 2, 2:] += 2.0
    clf = QPMClassifier(n_features=12, n_selected=6, n_per_class=2, hidden_size=16, n_layers=2,
                        dense_epochs=5, sparse_epochs=3, device="cpu", random_state=seed)  # fmt: skip
    return clf.fit(X, y), X, y


def fitted_toy_pipeline(folder: str | os.PathLike[str] | None = None, seed: int = 0) -> tuple:
    """A tiny random DINOv2 embedder and a QPMClassifier fitted on its patch grids of 2-class images.

    Parameters
    ----------
    folder : str or path-like, default=None
        Where the random backbone is saved (a new temporary folder when None).
    seed : int, default=0

    Returns
    -------
    embedder : Dinov2Embedder
        ``image_size=28`` on the CPU (a 2 x 2 grid).
    clf : QPMClassifier
    images : ndarray of uint8, shape (24, 30, 36, 3)
        Bright images are class "bright", dark ones "dark".

    Examples
    --------
    >>> from qpm_sklearn.testing import fitted_toy_pipeline
    >>> embedder, clf, images = fitted_toy_pipeline()
    >>> clf.predict(embedder.transform(images[:2])).shape
    (2,)
    """
    import tempfile

    from .classifier import QPMClassifier
    from .embedding import Dinov2Embedder

    folder = tempfile.mkdtemp() if folder is None else folder
    backbone = save_random_backbone(folder, "tiny")
    rng = np.random.RandomState(seed)
    labels = np.array(["dark", "bright"])[np.arange(24) % 2]
    images = rng.randint(0, 128, (24, 30, 36, 3)).astype(np.uint8)
    images[labels == "bright"] += 127
    embedder = Dinov2Embedder(str(backbone), image_size=28, device="cpu", n_jobs=1)
    clf = QPMClassifier(n_features=8, n_selected=4, n_per_class=2, hidden_size=16, n_layers=1,
                        dense_epochs=3, sparse_epochs=2, device="cpu", random_state=seed)  # fmt: skip
    clf.fit(embedder.transform(images), labels)
    return embedder, clf, images
