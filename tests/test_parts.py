"""Part alignment and feature names from keypoints; make_parts' planted part identities."""

import numpy as np
import pytest

from qpm_sklearn import QPMClassifier
from qpm_sklearn.datasets import make_parts
from qpm_sklearn.metrics import part_alignment, suggest_feature_names
from qpm_sklearn.report import feature_atlas

# Small enough for the default suite (~2 s); n_selected = the 4 part prototypes of make_parts' defaults.
PLANTED = dict(n_features=32, hidden_size=64, n_layers=2, n_selected=4, n_per_class=2, dense_epochs=12,
               sparse_epochs=8, dense_batch_size=32, sparse_batch_size=32, dense_lr=1e-2, device="cpu")  # fmt: skip


def planted_keypoints(parts, n_prototypes, grid):
    """make_parts' parts as keypoints: one 'image' pixel per grid cell, each prototype's square centre."""
    n = len(parts)
    keypoints = np.zeros((n, n_prototypes, 3))
    for i in range(n):
        for prototype, row, col in parts[i]:
            keypoints[i, prototype] = (col + 0.5, row + 0.5, 1)
    return keypoints, np.tile([grid[1], grid[0]], (n, 1))


def test_make_parts_returns_where_each_prototype_was_planted():
    X, y, masks = make_parts(n_samples=30, part_size=2, random_state=4)
    X2, y2, masks2, parts = make_parts(n_samples=30, part_size=2, random_state=4, return_parts=True)
    np.testing.assert_array_equal(X, X2)  # the same data either way
    np.testing.assert_array_equal(masks, masks2)
    assert parts.shape == (30, 2, 3)
    rebuilt = np.zeros_like(masks)
    for i, sample in enumerate(parts):
        for prototype, row, col in sample:
            rebuilt[i, row : row + 2, col : col + 2] = True
    np.testing.assert_array_equal(rebuilt, masks)
    # a class is always the same set of prototypes
    for label in np.unique(y2):
        sets = {tuple(sorted(sample[:, 0])) for sample in parts[y2 == label]}
        assert len(sets) == 1


def test_part_alignment_by_hand():
    # 3 images, 1 feature, 2 x 2 grid; originals of different sizes and aspects
    maps = np.zeros((3, 1, 2, 2))
    maps[0, 0, 1, 0] = 3.0  # peak bottom-left; pooled 0.75
    maps[1, 0, 0, 1] = 2.0  # peak top-right; pooled 0.5
    maps[2, 0, 0, 0] = 1.0  # not in the top 2
    sizes = np.array([[400, 200], [100, 300], [50, 50]])
    # centres of the peak cells in original pixels: image 0 (100, 150), image 1 (75, 75)
    keypoints = np.array([
        [[100, 150 + 39, 1], [100, 150, 0]],  # part 0 within 40 px (0.1 * 400); part 1 there but hidden
        [[75 + 31, 75, 1], [75, 75 + 29, 1]],  # radius 0.1 * 300 = 30: part 0 outside, part 1 inside
        [[0, 0, 1], [0, 0, 1]],
    ], dtype=float)  # fmt: skip
    alignment = part_alignment(maps, None, keypoints, sizes, radius=0.1, k=2)
    np.testing.assert_allclose(alignment, [[0.5, 0.5]])
    np.testing.assert_allclose(part_alignment(maps, None, keypoints, sizes, radius=0.2, k=2), [[1.0, 0.5]])
    np.testing.assert_allclose(part_alignment(maps, None, keypoints, sizes, radius=0.05, k=2), [[0.0, 0.0]])


def test_part_alignment_errors():
    maps = np.zeros((3, 1, 2, 2))
    sizes = np.ones((3, 2))
    with pytest.raises(ValueError, match=r"keypoints must have shape \(n_samples=3, n_parts, 3\)"):
        part_alignment(maps, None, np.zeros((3, 2)), sizes)
    with pytest.raises(ValueError, match=r"keypoints must have shape"):
        part_alignment(maps, None, np.zeros((2, 4, 3)), sizes)
    with pytest.raises(ValueError, match="image_sizes must have shape"):
        part_alignment(maps, None, np.zeros((3, 4, 3)), np.ones(3), k=1)
    with pytest.raises(ValueError, match="visible"):
        part_alignment(maps, None, np.full((3, 4, 3), 2.0), sizes, k=1)
    with pytest.raises(ValueError, match="k must be an int"):
        part_alignment(maps, None, np.zeros((3, 4, 3)), sizes, k=4)
    with pytest.raises(ValueError, match="radius"):
        part_alignment(maps, None, np.zeros((3, 4, 3)), sizes, radius=-1)


def test_suggest_feature_names():
    alignment = [[0.8, 0.1, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.4], [0.0, 0.9, 0.1], [0.1, 0.9, 0.0]]
    names = suggest_feature_names(alignment, ["beak", "wing", "tail"], min_share=0.5, features=[3, 7, 9, 12, 40])
    # a tie and a share below min_share stay unnamed; equal names get the channel id
    assert names == {3: "beak (0.80)", 12: "wing (0.90) #12", 40: "wing (0.90) #40"}
    clf = QPMClassifier(feature_names=names)  # accepted as feature_names
    assert clf.feature_names == names
    with pytest.raises(ValueError, match="part_names must name the 3 parts"):
        suggest_feature_names(alignment, ["beak"], features=[3, 7, 9, 12, 40])
    with pytest.raises(ValueError, match="features must hold one int channel id per row"):
        suggest_feature_names(alignment, ["beak", "wing", "tail"], features=[3, 7])


def test_planted_parts_are_found_and_named():
    X, y, _, parts = make_parts(n_samples=160, random_state=0, return_parts=True)  # 4 prototypes, 8 x 8 grid
    clf = QPMClassifier(random_state=0, **PLANTED).fit(X, y)
    atlas = feature_atlas(clf, X, y=y, k=8)
    purity, planted = [], {}
    for i, feature in enumerate(atlas.features):
        hit = []  # the prototype planted on each top image's peak cell, -1 for none
        for row, (r, c) in zip(atlas.top_samples[i], atlas.peaks[i]):
            on_peak = [p for p, pr, pc in parts[row] if (pr, pc) == (r, c)]
            hit.append(on_peak[0] if on_peak else -1)
        hit = np.array(hit)
        best = max(range(4), key=lambda p: (hit == p).mean())
        purity.append((hit == best).mean())
        planted[int(feature)] = best
    assert np.mean(purity) >= 0.9
    keypoints, sizes = planted_keypoints(parts, 4, (8, 8))
    alignment = part_alignment(atlas, None, keypoints, sizes, radius=0.05)
    np.testing.assert_allclose(alignment, part_alignment(clf, X, keypoints, sizes, radius=0.05))
    names = suggest_feature_names(alignment, [f"prototype {p}" for p in range(4)], features=atlas.features)
    assert names, "no feature was named"
    for feature, name in names.items():
        assert name.startswith(f"prototype {planted[feature]} (")
    pure = [int(f) for f, share in zip(atlas.features, purity) if share >= 0.5]
    assert sorted(names) == sorted(pure)
