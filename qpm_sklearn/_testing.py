"""Random-weight DINOv2 backbones built locally (no download).

Tests, the offline quickstart and the speed benchmarks need a model that loads
through exactly the ``from_pretrained`` path a hub id takes. These helpers build
one from a configuration written here (the hub configurations of the real
sizes, or a tiny one) and ``save_pretrained`` it to a folder. Speed does not
depend on weight values, so the real sizes serve benchmarks; the weights are
random, so nothing learned should be read into their features.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ._utils import quiet_transformers

# The architecture of facebook/dinov2-with-registers-{small,base,large} (and
# facebook/dinov2-{small,base,large} with no registers), as in their config.json.
BACKBONE_SIZES = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=56),
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=518),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, image_size=518),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, image_size=518),
}


def save_random_backbone(
    folder,
    size: str = "tiny",
    *,
    num_register_tokens: int = 4,
    patch_size: int = 14,
    seed: int = 0,
    **config_overrides,
) -> Path:
    """Build a random-weight DINOv2(-with-registers) model and save it to ``folder``.

    Parameters
    ----------
    folder : str or path-like
        Where ``save_pretrained`` writes ``config.json`` and the weights.
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
    """
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    if size not in BACKBONE_SIZES:
        raise ValueError(f"size must be one of {sorted(BACKBONE_SIZES)}; got {size!r}.")
    settings = dict(BACKBONE_SIZES[size], patch_size=patch_size, layerscale_value=1.0)
    settings.update(config_overrides)
    torch.manual_seed(seed)
    if num_register_tokens > 0:
        config = Dinov2WithRegistersConfig(num_register_tokens=num_register_tokens, **settings)
        model = Dinov2WithRegistersModel(config)
    else:
        config = Dinov2Config(**settings)
        model = Dinov2Model(config)
    model.eval()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with quiet_transformers(verbose=False):
        model.save_pretrained(folder)
    return folder
