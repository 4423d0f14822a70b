"""qpm_sklearn: globally interpretable image classifiers on frozen DINOv2 features.

Public names: :class:`Dinov2Embedder`, :class:`QPMClassifier`, :class:`Explanation`.
"""

__version__ = "0.1.0"

from .classifier import QPMClassifier
from .embedding import Dinov2Embedder
from .explanation import Explanation

__all__ = ["Dinov2Embedder", "QPMClassifier", "Explanation", "__version__"]
