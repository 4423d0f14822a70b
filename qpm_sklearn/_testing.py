"""Former name of :mod:`qpm_sklearn.testing`, kept so that existing imports keep working."""

from .testing import BACKBONE_SIZES, TINY_MODELS, save_random_backbone, save_random_model

__all__ = ["BACKBONE_SIZES", "TINY_MODELS", "save_random_backbone", "save_random_model"]
