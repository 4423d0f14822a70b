"""qpm_sklearn: globally interpretable image classifiers on frozen DINOv2 features.

Public names: :class:`Dinov2Embedder` (and :class:`PatchEmbedder` for other backbones), :class:`QPMClassifier`, :class:`Explanation`;
:data:`SKOPS_TRUSTED_TYPES` (what to trust when loading a skops or MLflow artifact of them).
"""

import importlib
import typing

__version__ = "0.1.0"

# The estimators are imported on first use (PEP 562): image-decoding worker processes
# import qpm_sklearn.images, which must not pay for importing torch and scikit-learn.
_PUBLIC = {"Dinov2Embedder": "embedding", "PatchEmbedder": "embedding", "QPMClassifier": "classifier", "Explanation": "explanation",
           "SKOPS_TRUSTED_TYPES": "artifacts"}

if typing.TYPE_CHECKING:  # what __getattr__ returns, for type checkers (explicit re-exports: "X as X")
    from .artifacts import SKOPS_TRUSTED_TYPES as SKOPS_TRUSTED_TYPES
    from .classifier import QPMClassifier as QPMClassifier
    from .embedding import Dinov2Embedder as Dinov2Embedder
    from .embedding import PatchEmbedder as PatchEmbedder
    from .explanation import Explanation as Explanation

# A literal list: type checkers read __all__ statically (tests/test_typing.py checks it names _PUBLIC).
__all__ = ["Dinov2Embedder", "Explanation", "PatchEmbedder", "QPMClassifier", "SKOPS_TRUSTED_TYPES", "__version__"]


def __getattr__(name: str) -> typing.Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
