"""Synthetic patch grids whose class is decided by a few localised parts (ground-truth masks)."""

from __future__ import annotations

from itertools import combinations
from math import comb
from numbers import Integral, Real

import numpy as np
import numpy.typing as npt
from sklearn.utils import check_random_state


def _check_int(value: object, name: str, low: int) -> int:
    if not isinstance(value, Integral) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")
    return int(value)


def _check_real(value, name):
    if not isinstance(value, Real) or isinstance(value, bool) or not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}.")
    return float(value)


def _class_part_sets(n_classes, n_parts_per_class, n_prototypes, rng):
    """Distinct sets of prototype ids, one per class, spread so that every prototype is shared."""
    candidates = list(combinations(range(n_prototypes), n_parts_per_class))
    rng.shuffle(candidates)
    usage = np.zeros(n_prototypes)
    chosen = []
    for _ in range(n_classes):
        # Greedy: the candidate whose prototypes are least used so far (ties: shuffled order).
        best = min(range(len(candidates)), key=lambda i: usage[list(candidates[i])].sum())
        parts = candidates.pop(best)
        usage[list(parts)] += 1
        chosen.append(parts)
    return np.array(chosen)


def _place_squares(occupied, n_squares, size, rng):
    """Top-left corners of ``n_squares`` non-overlapping ``size x size`` squares on free cells."""
    h, w = occupied.shape
    corners = []
    for _ in range(n_squares):
        free = [
            (r, c)
            for r in range(h - size + 1)
            for c in range(w - size + 1)
            if not occupied[r : r + size, c : c + size].any()
        ]
        if not free:
            return None
        r, c = free[rng.randint(len(free))]
        occupied[r : r + size, c : c + size] = True
        corners.append((r, c))
    return corners


def make_parts(
    n_samples: int = 400,
    n_classes: int = 4,
    *,
    grid: tuple[int, int] = (8, 8),
    n_dims: int = 16,
    n_parts_per_class: int = 2,
    n_prototypes: int | None = None,
    part_size: int = 1,
    part_strength: float = 6.0,
    n_distractors: int = 2,
    noise: float = 0.5,
    random_state: int | np.random.RandomState | None = None,
    return_parts: bool = False,
) -> (
    tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.bool_]]
    | tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.bool_], npt.NDArray[np.int64]]
):
    """Patch grids whose class is decided by a few localised parts, with the parts' masks.

    Every class is a combination of ``n_parts_per_class`` part prototypes drawn from a pool shared
    by all classes (no prototype alone decides the class: features must be combined). A sample is
    a grid of Gaussian background tokens; its class's parts are written at random cells as
    ``part_strength`` times a prototype direction, and ``n_distractors`` squares of the same
    strength but random, non-prototype directions add clutter. The mask marks the parts only.

    Parameters
    ----------
    n_samples : int, default=400
        Number of samples; classes are balanced (round robin) and the order shuffled.
    n_classes : int, default=4
        Number of classes.
    grid : tuple (h, w), default=(8, 8)
        Patch-grid shape.
    n_dims : int, default=16
        Token dimension d.
    n_parts_per_class : int, default=2
        Parts that make up a class.
    n_prototypes : int or None, default=None
        Size of the shared pool of part prototypes. None: the smallest pool larger than
        ``n_parts_per_class`` that gives every class its own combination.
    part_size : int, default=1
        Side of the square (in grid cells) a part covers.
    part_strength : float, default=6.0
        Norm of the part (and distractor) signal added to the noise.
    n_distractors : int, default=2
        Clutter squares per sample (random directions, not in the mask).
    noise : float, default=0.5
        Standard deviation of the Gaussian noise on every token coordinate.
    random_state : int, RandomState instance or None, default=None
        Seeds prototypes, class combinations, placement and noise.
    return_parts : bool, default=False
        Also return where each planted part is and which prototype it is (the data are
        the same either way).

    Returns
    -------
    X : ndarray of shape (n_samples, h, w, n_dims), float32
        Patch grids (the layout :class:`~qpm_sklearn.QPMClassifier` takes).
    y : ndarray of shape (n_samples,), int
        Class labels 0 .. n_classes - 1.
    masks : ndarray of shape (n_samples, h, w), bool
        The cells covered by the sample's class parts (ground truth for Plausibility).
    parts : ndarray of shape (n_samples, n_parts_per_class, 3), int
        Only with ``return_parts``: for each of the sample's parts, its prototype id
        (0 .. n_prototypes - 1) and the (row, col) of the top-left cell of its
        ``part_size`` square.

    Examples
    --------
    >>> from qpm_sklearn.datasets import make_parts
    >>> X, y, masks = make_parts(n_samples=8, random_state=0)
    >>> X.shape, y.shape, masks.shape, int(masks[0].sum())
    ((8, 8, 8, 16), (8,), (8, 8, 8), 2)
    >>> X, y, masks, parts = make_parts(n_samples=8, random_state=0, return_parts=True)
    >>> parts.shape  # (prototype, row, col) of each of a sample's 2 parts
    (8, 2, 3)
    """
    n_samples = _check_int(n_samples, "n_samples", 1)
    n_classes = _check_int(n_classes, "n_classes", 2)
    n_dims = _check_int(n_dims, "n_dims", 1)
    n_parts_per_class = _check_int(n_parts_per_class, "n_parts_per_class", 1)
    part_size = _check_int(part_size, "part_size", 1)
    n_distractors = _check_int(n_distractors, "n_distractors", 0)
    part_strength = _check_real(part_strength, "part_strength")
    noise = _check_real(noise, "noise")
    if len(tuple(grid)) != 2:
        raise ValueError(f"grid must be a pair (h, w); got {grid!r}.")
    h, w = (_check_int(v, "grid", 1) for v in grid)
    if n_prototypes is None:
        n_prototypes = n_parts_per_class + 1
        while comb(n_prototypes, n_parts_per_class) < n_classes:
            n_prototypes += 1
    n_prototypes = _check_int(n_prototypes, "n_prototypes", n_parts_per_class)
    if comb(n_prototypes, n_parts_per_class) < n_classes:
        raise ValueError(
            f"n_prototypes={n_prototypes} gives only {comb(n_prototypes, n_parts_per_class)} distinct combinations of "
            f"n_parts_per_class={n_parts_per_class} parts, fewer than n_classes={n_classes}."
        )
    squares = n_parts_per_class + n_distractors
    if squares * part_size**2 > h * w // 2:
        raise ValueError(
            f"grid={grid!r} is too small for {squares} squares of part_size={part_size} "
            f"(parts and distractors may cover at most half of the grid)."
        )

    rng = check_random_state(random_state)
    # Random unit directions; with n_dims >= n_prototypes they are made orthonormal (QR).
    prototypes = rng.normal(size=(n_prototypes, n_dims))
    if n_dims >= n_prototypes:
        prototypes = np.linalg.qr(prototypes.T)[0].T
    prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True)
    parts_of_class = _class_part_sets(n_classes, n_parts_per_class, n_prototypes, rng)

    y = rng.permutation(np.arange(n_samples) % n_classes)
    X = rng.normal(scale=noise, size=(n_samples, h, w, n_dims))
    masks = np.zeros((n_samples, h, w), dtype=bool)
    parts = np.zeros((n_samples, n_parts_per_class, 3), dtype=np.int64)
    for i in range(n_samples):
        corners = None
        while corners is None:  # cannot loop forever: at most half of the grid is ever covered
            corners = _place_squares(np.zeros((h, w), bool), squares, part_size, rng)
        clutter = rng.normal(size=(n_distractors, n_dims))
        clutter /= np.maximum(np.linalg.norm(clutter, axis=1, keepdims=True), 1e-12)
        directions = np.vstack([prototypes[parts_of_class[y[i]]], clutter])
        for j, ((r, c), direction) in enumerate(zip(corners, directions)):
            X[i, r : r + part_size, c : c + part_size] += part_strength * direction
            if j < n_parts_per_class:
                masks[i, r : r + part_size, c : c + part_size] = True
                parts[i, j] = (parts_of_class[y[i], j], r, c)
    if return_parts:
        return X.astype(np.float32), y, masks, parts
    return X.astype(np.float32), y, masks
