"""The :class:`Explanation` of a prediction and the saliency upsampling it offers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def upsample_maps(maps: np.ndarray, size) -> np.ndarray:
    """Bilinearly upsample maps ``(..., h, w)`` to ``size`` and min–max normalise each map.

    This is SPEC section 8's saliency: ``F.interpolate(mode="bilinear",
    align_corners=False)`` to the image resolution, then every map scaled to
    [0, 1] on its own (a constant map becomes all zeros).

    Parameters
    ----------
    maps : ndarray of shape (..., h, w)
    size : int or (int, int)
        Output height and width.

    Returns
    -------
    saliency : ndarray of shape (..., size_h, size_w), float32, values in [0, 1]
    """
    import torch
    import torch.nn.functional as F

    out_h, out_w = (size, size) if np.isscalar(size) else tuple(size)
    if int(out_h) < 1 or int(out_w) < 1:
        raise ValueError(f"size must be a positive int or (height, width); got {size!r}.")
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim < 2:
        raise ValueError(f"maps must have at least 2 dimensions (..., h, w); got shape {maps.shape}.")
    lead = maps.shape[:-2]
    flat = torch.from_numpy(np.ascontiguousarray(maps.reshape(-1, 1, *maps.shape[-2:])))
    up = F.interpolate(flat, size=(int(out_h), int(out_w)), mode="bilinear", align_corners=False)
    up = up.reshape(up.shape[0], -1)
    low = up.min(dim=1, keepdim=True).values
    span = up.max(dim=1, keepdim=True).values - low
    up = torch.where(span > 0, (up - low) / span.clamp_min(1e-12), torch.zeros_like(up))
    return up.reshape(*lead, int(out_h), int(out_w)).numpy()


@dataclass(frozen=True)
class Explanation:
    """Why each sample got its prediction: a sum of a few named, localised features.

    For sample ``i`` of predicted class ``c`` the predicted logit is
    ``intercept[i] + contributions[i].sum()``, where ``contributions[i, j]`` is
    ``W[c, f] * (pooled_f - mean_f) / std_f`` for the class's feature
    ``f = features[i, j]`` (an adapter channel id), and ``maps[i, j]`` is the
    raw map of that feature on the patch grid (its spatial mean is ``pooled_f``).
    Features are ordered by decreasing contribution. Where a class uses fewer
    features than the widest class (possible for the SLDD baseline), ``features``
    is padded with -1, ``contributions`` with 0 and ``maps`` with zeros.

    Attributes
    ----------
    prediction : ndarray of shape (n,)
        Predicted labels (the classifier's ``classes_`` values).
    proba : ndarray of shape (n, n_classes)
        Class probabilities (softmax of the logits).
    classes : ndarray of shape (n_classes,)
        The class labels, in the column order of ``proba``.
    logit : ndarray of shape (n,)
        The predicted class's logit.
    intercept : ndarray of shape (n,)
        The predicted class's constant term (0 for DINO-QPM, which has no bias).
    features : ndarray of shape (n, k), int
        Adapter channel ids of the predicted class's features.
    contributions : ndarray of shape (n, k)
        Each feature's additive share of the predicted logit.
    weights : ndarray of shape (n, k)
        The head weight ``W[c, f]`` of each feature (1 for DINO-QPM's binary assignment).
    maps : ndarray of shape (n, k, h, w)
        Raw (non-negative) feature maps on the patch grid.

    Examples
    --------
    >>> import numpy as np
    >>> from qpm_sklearn import Explanation
    >>> e = Explanation(prediction=np.array([1]), proba=np.array([[0.2, 0.8]]),
    ...                 classes=np.array([0, 1]), logit=np.array([1.5]),
    ...                 intercept=np.array([0.0]), features=np.array([[7, 3]]),
    ...                 contributions=np.array([[1.0, 0.5]]), weights=np.ones((1, 2)),
    ...                 maps=np.zeros((1, 2, 4, 4)))
    >>> e.saliency(8).shape
    (1, 2, 8, 8)
    """

    prediction: np.ndarray
    proba: np.ndarray
    classes: np.ndarray
    logit: np.ndarray
    intercept: np.ndarray
    features: np.ndarray
    contributions: np.ndarray
    weights: np.ndarray
    maps: np.ndarray

    def __len__(self) -> int:
        return len(self.prediction)

    @property
    def grid(self) -> tuple[int, int]:
        """The patch-grid shape ``(h, w)`` of ``maps``."""
        return tuple(self.maps.shape[-2:])

    def saliency(self, size=224) -> np.ndarray:
        """Feature maps upsampled to image resolution, each normalised to [0, 1].

        Parameters
        ----------
        size : int or (int, int), default=224
            Image height and width (the embedder's ``image_size``).

        Returns
        -------
        saliency : ndarray of shape (n, k, size, size)
        """
        return upsample_maps(self.maps, size)

    def evidence_map(self) -> np.ndarray:
        """The predicted class's evidence on the grid (SPEC 6.6's GradCAM): ``Σ_j weights[:, j] · maps[:, j]``.

        Returns
        -------
        evidence : ndarray of shape (n, h, w)
        """
        return np.einsum("nk,nkhw->nhw", self.weights, self.maps)
