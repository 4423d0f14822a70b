"""Object masks at grid resolution: the resize the Plausibility metric and the CUB loader share.

Kept apart from :mod:`qpm_sklearn.metrics` (which publishes :func:`resize_masks`) so that the
dataset loaders can resize masks without depending on the metrics. numpy and scipy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from typing import TypeAlias

import numpy as np
import numpy.typing as npt
from scipy.ndimage import binary_dilation

#: Masks of several images: an array ``(n, H, W)`` or a sequence of 2-D arrays (sizes may differ).
Masks: TypeAlias = np.ndarray | Sequence[npt.ArrayLike]


def _bilinear_matrix(n_in, n_out):
    """(n_out, n_in) matrix of 1-D linear interpolation with half-pixel centres, edges clamped.

    The source coordinate of output pixel ``o`` is ``(o + 0.5) * n_in / n_out - 0.5``; it is
    clamped into ``[0, n_in - 1]`` and split between its two neighbours, as ``cv2.resize``
    (``INTER_LINEAR``) and ``torch.nn.functional.interpolate(..., align_corners=False)`` do. There
    is no antialiasing: downsampling reads only the two nearest source pixels.
    """
    source = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    source = np.clip(source, 0.0, n_in - 1)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, n_in - 1)
    frac = source - low
    matrix = np.zeros((n_out, n_in))
    np.add.at(matrix, (np.arange(n_out), low), 1.0 - frac)
    np.add.at(matrix, (np.arange(n_out), high), frac)
    return matrix


# OpenCV's INTER_LINEAR for 8-bit images: 11-bit fixed-point weights (INTER_RESIZE_COEF_BITS).
_COEF_SCALE = np.float32(2048)


def _fixed_point_taps(n_in, n_out, *, clamp_weights):
    """Source indices and 11-bit weights of OpenCV's 8-bit bilinear resize along one axis.

    Coordinates are computed in float32 from the double scale ``1 / (n_out / n_in)``, each weight
    ``1 - f`` and ``f`` rounded to the nearest multiple of 1/2048 (half to even). Along the width
    OpenCV clamps coordinates outside the image to its edge pixel with weights (2048, 0); along the
    height it keeps the unclamped weights and only clips the row indices, which rounds differently.
    """
    scale = 1.0 / (n_out / n_in)
    coordinate = ((np.arange(n_out) + 0.5) * scale - 0.5).astype(np.float32)
    low = np.floor(coordinate).astype(np.int64)
    frac = (coordinate - low.astype(np.float32)).astype(np.float32)
    if clamp_weights:
        outside = (low < 0) | (low >= n_in - 1)
        frac[outside] = 0
        low = np.clip(low, 0, n_in - 1)
    weights = [np.rint(value * _COEF_SCALE).astype(np.int64) for value in (np.float32(1) - frac, frac)]
    return np.clip(low, 0, n_in - 1), np.clip(low + 1, 0, n_in - 1), weights[0], weights[1]


def _resize_uint8(mask, h, w):
    """``cv2.resize(mask, (w, h))`` (default ``INTER_LINEAR``) of a uint8 image, bit for bit.

    Exactly halving both sides is done by OpenCV as a 2x2 box average (``INTER_AREA``). Otherwise a
    horizontal pass sums ``pixel * weight`` in integers and the vertical pass combines two such
    rows as ``((r0 >> 4) * b0 >> 16) + ((r1 >> 4) * b1 >> 16) + 2 >> 2`` (the arithmetic of its
    SIMD kernel, which its scalar tail repeats), so a share below about half a grey level is 0.
    """
    H, W = mask.shape
    image = mask.astype(np.int64)
    if (H, W) == (h, w):
        return mask
    if (H, W) == (2 * h, 2 * w):
        return (image[0::2, 0::2] + image[1::2, 0::2] + image[0::2, 1::2] + image[1::2, 1::2] + 2) >> 2
    left, right, a0, a1 = _fixed_point_taps(W, w, clamp_weights=True)
    top, bottom, b0, b1 = _fixed_point_taps(H, h, clamp_weights=False)
    rows = image[:, left] * a0 + image[:, right] * a1  # (H, w), up to 255 * 2048
    upper = ((rows[top] >> 4) * b0[:, None]) >> 16
    lower = ((rows[bottom] >> 4) * b1[:, None]) >> 16
    return np.clip((upper + lower + 2) >> 2, 0, 255)


def _check_size(size: object) -> tuple[int, int]:
    """``size`` as ``(h, w)``, two positive ints; ValueError / TypeError naming ``size`` otherwise."""
    one_dimensional = isinstance(size, (tuple, list)) or (isinstance(size, np.ndarray) and size.ndim == 1)
    sides: tuple = tuple(size) if one_dimensional else ()  # type: ignore[arg-type]
    if len(sides) != 2:
        raise ValueError(f"size must be a pair (h, w) of positive ints (the grid of the feature maps); got {size!r}.")
    for position, (axis, side) in enumerate(zip("hw", sides)):
        if isinstance(side, (bool, np.bool_)) or not isinstance(side, Integral):
            raise TypeError(f"size[{position}] ({axis}) must be an int; got {type(side).__name__} {side!r}.")
        if side < 1:
            raise ValueError(f"size[{position}] ({axis}) must be a positive int; got {side}.")
    return int(sides[0]), int(sides[1])


def resize_masks(masks: Masks, size: tuple[int, int], dilate: bool = True) -> npt.NDArray[np.bool_]:
    """Binary object masks at grid resolution, as the Plausibility metric uses them (docs/method.md#plausibility).

    Each mask is resized to ``size`` with bilinear interpolation (half-pixel centres, no
    antialiasing: ``cv2.resize`` with its default ``INTER_LINEAR``), binarised with ``> 0`` and,
    when ``dilate``, dilated with a 3x3 square (one iteration; pixels outside the grid do not
    count, like ``cv2.dilate``'s default border).

    Parameters
    ----------
    masks : array-like of shape (n, H, W) or sequence of n 2-D arrays
        Object masks at image or grid resolution (bool, or grey values where ``> 0`` is the
        object). A sequence may mix sizes. Images squashed to a square for the backbone must have
        their masks passed unsquashed: the resize does the same squash.
    size : tuple (h, w)
        The grid of the feature maps: two positive ints (``ValueError`` naming ``size`` otherwise).
    dilate : bool, default=True
        Dilate the binarised mask with a 3x3 square.

    Returns
    -------
    ndarray of shape (n, h, w), dtype bool

    Notes
    -----
    uint8 masks (the CUB PNGs the authors read) are resized exactly as OpenCV resizes 8-bit
    images: 11-bit fixed-point weights and OpenCV's integer rounding, so a cell whose bilinear
    value is below about half a grey level is 0, as in the authors' masks (e.g. the single 255
    pixel of a 17 x 17 mask leaves grid cells at 0 that a float resize puts above 0). Bool masks
    are resized as the 0/255 uint8 image they stand for. Other dtypes (float, wider integers) are
    interpolated in float64 without rounding, so any positive share counts as object.

    Examples
    --------
    >>> import numpy as np
    >>> from qpm_sklearn.metrics import resize_masks
    >>> mask = np.zeros((1, 4, 4), bool); mask[0, 0, 0] = True
    >>> resize_masks(mask, (2, 2), dilate=False)[0].astype(int).tolist()
    [[1, 0], [0, 0]]
    """
    h, w = _check_size(size)
    if isinstance(masks, np.ndarray) and masks.ndim != 3:
        raise ValueError(
            f"masks must be an array of shape (n, H, W) or a sequence of 2-D arrays; got shape {masks.shape}."
        )
    out = np.zeros((len(masks), h, w), dtype=bool)
    structure = np.ones((3, 3), dtype=bool)
    for i, mask in enumerate(masks):
        mask = np.asarray(mask)
        if mask.ndim != 2 or mask.size == 0:
            raise ValueError(f"masks[{i}] must be a non-empty 2-D array; got shape {mask.shape}.")
        if mask.dtype == bool:
            mask = mask.astype(np.uint8) * np.uint8(255)
        if mask.dtype == np.uint8:
            binary = _resize_uint8(mask, h, w) > 0
        else:
            mask = mask.astype(np.float64)
            if not np.all(np.isfinite(mask)):
                raise ValueError(f"masks[{i}] must contain only finite values.")
            if mask.shape != (h, w):
                mask = _bilinear_matrix(mask.shape[0], h) @ mask @ _bilinear_matrix(mask.shape[1], w).T
            binary = mask > 0
        out[i] = binary_dilation(binary, structure=structure) if dilate else binary
    return out
