"""Metrics (docs/method.md#metrics): hand-worked cases and float64 loop recomputations written independently."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.stats import norm
from sklearn.linear_model import LogisticRegression
from sklearn.mixture import GaussianMixture
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from qpm_sklearn import _masks, metrics
from qpm_sklearn.metrics import (
    class_independence,
    contrastiveness,
    correlation,
    evaluate,
    evaluate_linear_probe,
    plausibility,
    resize_masks,
    sid_at_k,
)

# ------------------------------------------------------------------ loop references (float64)


def ref_sid(maps, rows, k):
    values = []
    for m, w in zip(maps, rows):
        if sum(1 for v in w if v != 0) < k:
            continue
        order = sorted(range(len(w)), key=lambda j: (-w[j], j))[:k]
        probs = []
        for j in order:
            flat = [float(v) for v in np.ravel(m[j])]
            scale = max(sum(abs(v) for v in flat) / len(flat), 1e-5)
            exps = [math.exp(v / scale) for v in flat]
            probs.append([e / sum(exps) for e in exps])
        values.append(sum(max(p[q] for p in probs) for q in range(len(probs[0]))) / k)
    return sum(values) / len(values)


def ref_dilate(mask):
    h, w = mask.shape
    out = np.zeros_like(mask, dtype=bool)
    for r in range(h):
        for c in range(w):
            out[r, c] = any(
                mask[rr, cc] for rr in range(max(r - 1, 0), min(r + 2, h)) for cc in range(max(c - 1, 0), min(c + 2, w))
            )
    return out


def ref_plausibility(maps, rows, grid_masks, dilate=True):
    scores = []
    for m, w, mask in zip(maps, rows, grid_masks):
        mask = ref_dilate(mask) if dilate else mask
        h, wd = m.shape[1:]
        G = [[sum(w[j] * m[j, r, c] for j in range(len(w))) for c in range(wd)] for r in range(h)]
        low = min(min(row) for row in G)
        total = sum(v - low for row in G for v in row)
        inside = sum(G[r][c] - low for r in range(h) for c in range(wd) if mask[r, c])
        scores.append(inside / total if total > 0 else 0.0)
    return sum(scores) / len(scores)


def ref_class_independence(F, y):
    n, K = F.shape
    result = 0.0
    for j in range(K):
        low = min(F[i, j] for i in range(n))
        sums = {}
        for i in range(n):
            sums[y[i]] = sums.get(y[i], 0.0) + F[i, j] - low
        result += max(sums.values()) / max(sum(sums.values()), 1e-8)
    return 1 - result / K


def ref_correlation(F):
    K = F.shape[1]
    norms = [max(math.sqrt(sum(v * v for v in F[:, j])), 1e-8) for j in range(K)]
    best = []
    for j in range(K):
        cos = [sum(F[:, j] * F[:, l]) / (norms[j] * norms[l]) if l != j else 0.0 for l in range(K)]
        best.append(max(cos))
    return sum(best) / K


def ref_overlap(m1, s1, m2, s2):
    lo, hi = min(m1 - 12 * s1, m2 - 12 * s2), max(m1 + 12 * s1, m2 + 12 * s2)
    value, _ = quad(lambda x: min(norm.pdf(x, m1, s1), norm.pdf(x, m2, s2)), lo, hi, points=[m1, m2], limit=200)
    return value


# ------------------------------------------------------------------ resizing and dilation


def test_bilinear_matrix_hand_examples():
    # 2 -> 4: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1).
    expected = [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]]
    np.testing.assert_allclose(_masks._bilinear_matrix(2, 4), expected)
    # 3 -> 2: sources 0.25 and 1.75, no antialias (only the two nearest pixels are read).
    np.testing.assert_allclose(_masks._bilinear_matrix(3, 2), [[0.75, 0.25, 0], [0, 0.25, 0.75]])
    # 4 -> 2: sources 0.5 and 2.5 = block means.
    np.testing.assert_allclose(_masks._bilinear_matrix(4, 2), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])


def test_bilinear_matches_torch_half_pixel_no_antialias():
    rng = np.random.default_rng(0)
    image = rng.random((37, 23))
    for size in [(16, 16), (5, 40), (37, 23)]:
        ours = _masks._bilinear_matrix(37, size[0]) @ image @ _masks._bilinear_matrix(23, size[1]).T
        theirs = torch.nn.functional.interpolate(
            torch.from_numpy(image)[None, None], size=size, mode="bilinear", align_corners=False, antialias=False
        )[0, 0].numpy()
        np.testing.assert_allclose(ours, theirs, atol=1e-12)


def test_resize_masks_hand_example_and_dilation():
    mask = np.zeros((6, 6))
    mask[5, 5] = 255  # bottom-right pixel: downsampled 6 -> 3 reads pixels 0.5, 2.5, 4.5 -> 4 and 5
    grid = resize_masks([mask], (3, 3), dilate=False)[0]
    assert grid.tolist() == [[False] * 3, [False] * 3, [False, False, True]]
    mask = np.zeros((6, 6))
    mask[0, 3] = 1  # source 2.5 reads columns 2 and 3 -> middle cell of the top row
    assert resize_masks([mask], (3, 3), dilate=False)[0].astype(int).tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 0]]
    dilated = resize_masks([mask], (3, 3), dilate=True)[0].astype(int)
    assert dilated.tolist() == [[1, 1, 1], [1, 1, 1], [0, 0, 0]]  # 3x3 square, clipped at the border
    centre = np.zeros((5, 5), bool)
    centre[2, 2] = True
    assert resize_masks(centre[None], (5, 5)).sum() == 9
    corner = np.zeros((5, 5), bool)
    corner[0, 0] = True
    assert resize_masks(corner[None], (5, 5))[0, :2, :2].all() and resize_masks(corner[None], (5, 5)).sum() == 4


def test_resize_masks_accepts_mixed_sizes_and_rejects_bad_input():
    out = resize_masks([np.ones((10, 7)), np.zeros((4, 4)), np.ones((4, 4))], (4, 4), dilate=False)
    assert out.shape == (3, 4, 4) and out[0].all() and not out[1].any()
    rng = np.random.default_rng(1)
    random_masks = rng.random((5, 8, 8)) > 0.8
    np.testing.assert_array_equal(resize_masks(random_masks, (8, 8)), [ref_dilate(m) for m in random_masks])
    with pytest.raises(ValueError, match="masks"):
        resize_masks(np.ones((4, 4)), (2, 2))
    with pytest.raises(ValueError, match=r"masks\[0\]"):
        resize_masks([np.ones(4)], (2, 2))


def test_resize_masks_uint8_is_opencv_fixed_point_by_hand():
    # 17 x 17 -> 16 x 16, one 255 pixel at (1, 1). Source coordinate of output o: 1.0625 o + 0.03125.
    # o = 0: pixels 0 and 1, weights round(0.96875 * 2048) = 1984 and round(0.03125 * 2048) = 64;
    # o = 1: pixels 1 and 2, f = 0.09375, weights 1856 and 192.
    # Row sums (horizontal pass): column 0 -> 255 * 64 = 16320, column 1 -> 255 * 1856 = 473280.
    # Cell (0, 0): ((16320 >> 4) * 64 >> 16) + 2 >> 2 = (65280 >> 16 = 0) + 2 >> 2 = 0, although
    # the float bilinear value is 255 * 0.03125^2 = 0.249 > 0.
    # Cell (0, 1) and (1, 0): ((473280 >> 4) * 64 >> 16 = 28) + 2 >> 2 = 7; cell (1, 1): 209.
    mask = np.zeros((17, 17), np.uint8)
    mask[1, 1] = 255
    values = _masks._resize_uint8(mask, 16, 16)
    assert values[:2, :2].tolist() == [[0, 7], [7, 209]] and values.sum() == 223
    assert np.argwhere(resize_masks([mask], (16, 16), dilate=False)[0]).tolist() == [[0, 1], [1, 0], [1, 1]]
    # The float path keeps any positive share: (0, 0) is object there.
    assert resize_masks([mask.astype(float)], (16, 16), dilate=False)[0, 0, 0]
    # Bool masks are the 0/255 image they stand for.
    np.testing.assert_array_equal(resize_masks([mask > 0], (16, 16)), resize_masks([mask], (16, 16)))
    # Exactly halving both sides is OpenCV's 2x2 box average with rounding: (255 + 2) >> 2 = 64.
    block = np.zeros((4, 4), np.uint8)
    block[0, 0] = 255
    assert _masks._resize_uint8(block, 2, 2).tolist() == [[64, 0], [0, 0]]


def test_resize_masks_uint8_matches_cv2():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(11)
    cases = [np.zeros((17, 17), np.uint8) for _ in range(6)]
    for case in cases:
        case[tuple(rng.integers(0, 17, 2))] = 255  # isolated pixels
    cases += [(rng.random((37, 23)) < 0.03).astype(np.uint8) * 255, rng.integers(0, 256, (37, 23), dtype=np.uint8)]
    cases += [(rng.random((333, 500)) < 0.5).astype(np.uint8) * 255, np.full((32, 32), 255, np.uint8)]
    for image in cases:
        for h, w in [(16, 16), (5, 40), (74, 46), (23, 37), (1, 3), (16, 1)]:
            expected = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
            np.testing.assert_array_equal(_masks._resize_uint8(image, h, w), expected, err_msg=f"{image.shape}->{h, w}")
            np.testing.assert_array_equal(resize_masks([image], (h, w), dilate=False)[0], expected > 0)


# ------------------------------------------------------------------ SID@k


def test_sid_hand_example():
    maps = np.zeros((1, 2, 1, 2))
    maps[0, 0, 0, 0] = maps[0, 1, 0, 1] = 100.0
    # Each map / its mean magnitude (50) -> [2, 0]; softmax -> e^2/(1+e^2) on its own cell.
    assert sid_at_k(maps, [[1.0, 1.0]], k=2) == pytest.approx(math.exp(2) / (1 + math.exp(2)), abs=1e-12)
    # Same peak for both: each cell's max is the same map's value -> (p + (1 - p)) / 2 = 0.5.
    maps[0, 1] = maps[0, 0]
    assert sid_at_k(maps, [[1.0, 1.0]], k=2) == pytest.approx(0.5, abs=1e-12)


def test_sid_matches_loop_reference_with_signed_weights_and_excluded_images():
    rng = np.random.default_rng(2)
    maps = rng.gamma(1.0, 1.0, size=(6, 7, 3, 4))
    rows = rng.normal(size=(6, 7))
    rows[2, :4] = 0  # only 3 non-zero weights: image 2 does not count for k = 5
    rows[3] = [0, 0, 0, 1, 1, 1, 1]  # 4 non-zero: does not count either
    ours = sid_at_k(maps, rows, k=5)
    assert ours == pytest.approx(ref_sid(maps, rows, 5), abs=1e-12)
    # Signed: the most negative weights are never among the top-k.
    flipped = rows.copy()
    flipped[0] = -np.abs(rows[0])
    assert sid_at_k(maps, flipped, k=5) == pytest.approx(ref_sid(maps, flipped, 5), abs=1e-12)
    assert 1 / 5 <= ours <= 1


def test_sid_tie_rule_hand_computed():
    # Tied weights: the lowest column ids win (stable order), not torch.topk's unspecified order.
    # Features 0 and 1 peak at cell 0, feature 2 at cell 1; each map / its mean (50) -> [2, 0].
    maps = np.zeros((1, 3, 1, 2))
    maps[0, 0, 0, 0] = maps[0, 1, 0, 0] = maps[0, 2, 0, 1] = 100.0
    p = math.exp(2) / (1 + math.exp(2))
    # weights all 1, k = 2 -> features {0, 1}: same distribution, SID = (p + (1 - p)) / 2 = 0.5.
    assert sid_at_k(maps, [[1.0, 1.0, 1.0]], k=2) == pytest.approx(0.5, abs=1e-12)
    # Feature 2 first by weight, then the tie {0, 1} at weight 1 goes to 0 -> {2, 0}: SID = p.
    assert sid_at_k(maps, [[1.0, 1.0, 2.0]], k=2) == pytest.approx(p, abs=1e-12)
    # Features 1 and 2 share the top weight: both taken, disjoint peaks, SID = (p + p) / 2 = p.
    assert sid_at_k(maps, [[0.5, 2.0, 2.0]], k=2) == pytest.approx(p, abs=1e-12)


def test_sid_binary_ties_take_lowest_ids_and_undefined_raises():
    rng = np.random.default_rng(3)
    maps = rng.random((2, 6, 2, 2))
    rows = np.ones((2, 6))
    assert sid_at_k(maps, rows, k=2) == pytest.approx(ref_sid(maps, rows, 2), abs=1e-12)
    with pytest.raises(ValueError, match="k=7"):
        sid_at_k(maps, rows, k=7)
    with pytest.raises(ValueError, match="k must"):
        sid_at_k(maps, rows, k=0)
    with pytest.raises(ValueError, match="weights must have shape"):
        sid_at_k(maps, rows[:, :5])
    maps[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        sid_at_k(maps, rows, k=2)


# ------------------------------------------------------------------ train-feature metrics


def test_class_independence_hand_and_loop():
    # Column 0 after the min shift: [1, 1, 0] -> all mass in class a (ratio 1); column 1: [1, 0, 1] -> 1/2.
    assert class_independence([[1, 1], [1, 0], [0, 1]], ["a", "a", "b"]) == pytest.approx(1 - 0.75)
    rng = np.random.default_rng(4)
    F = rng.normal(size=(40, 6))
    F[:, 2] = 3.0  # constant: T = 0 -> clamped, ratio 0
    y = rng.choice(["x", "y", "z"], size=40)
    assert class_independence(F, y) == pytest.approx(ref_class_independence(F, list(y)), abs=1e-12)
    with pytest.raises(ValueError, match="y must have shape"):
        class_independence(F, y[:5])


def test_correlation_hand_and_loop():
    # Columns [1,0], [0,1], [1,1]: every column's best partner has cosine 1/sqrt(2).
    assert correlation([[1, 0, 1], [0, 1, 1]]) == pytest.approx(1 / math.sqrt(2))
    rng = np.random.default_rng(5)
    F = np.abs(rng.normal(size=(30, 5)))
    F[:, 4] = 0.0  # zero column: norm clamped, cosine 0
    assert correlation(F) == pytest.approx(ref_correlation(F), abs=1e-12)
    assert correlation(F[:, :1]) == 0.0


def test_contrastiveness_against_numeric_overlap_and_known_mixture():
    rng = np.random.default_rng(6)
    F = np.column_stack([
        np.r_[rng.normal(0, 1, 2000), rng.normal(2, 1, 2000)],  # OVL of N(0,1), N(2,1) = 2 Phi(-1)
        np.r_[rng.normal(0, 0.1, 2000), rng.normal(10, 0.1, 2000)],  # on/off: OVL ~ 0
        np.full(4000, 1.5),  # constant: identical components, OVL = 1
    ])
    value = contrastiveness(F, random_state=0)
    expected_ovl = [2 * norm.cdf(-1), 0.0, 1.0]
    assert value == pytest.approx(1 - np.mean(expected_ovl), abs=0.03)
    # Direct recomputation with the documented seeding (one seed per feature from random_state).
    seeds = np.random.RandomState(0).randint(0, 2**31 - 1, size=3)
    ovl = []
    for j in range(2):
        gm = GaussianMixture(n_components=2, random_state=int(seeds[j])).fit(F[:, j : j + 1])
        mu, sd = gm.means_.ravel(), np.sqrt(gm.covariances_.ravel())
        ovl.append(ref_overlap(mu[0], sd[0], mu[1], sd[1]))
    assert value == pytest.approx(1 - np.mean(ovl + [1.0]), abs=1e-6)
    assert contrastiveness(F, random_state=0) == value


# ------------------------------------------------------------------ plausibility


def test_plausibility_hand_example():
    maps = np.zeros((2, 2, 1, 4))
    maps[0, 0, 0] = [0, 3, 1, 0]
    maps[0, 1, 0] = [1, 1, 1, 1]  # constant map: vanishes in the min shift
    mask = np.array([[[0, 1, 0, 0]], [[1, 1, 1, 1]]])
    # Image 0: G = [1, 4, 2, 1] - 1 = [0, 3, 1, 0] -> 3/4 on the mask. Image 1: G constant -> 0 (still counted).
    assert plausibility(maps, [[1, 1], [1, 1]], mask, dilate=False) == pytest.approx(0.375)
    # Dilated: the mask covers cells 0..2 -> 4/4.
    assert plausibility(maps, [[1, 1], [1, 1]], mask, dilate=True) == pytest.approx(0.5)
    # Signed weights: G = -[0, 3, 1, 0] -> shifted [3, 0, 2, 3]: mask cell 1 holds 0 of 8.
    assert plausibility(maps[:1], [[-1, 0]], mask[:1], dilate=False) == 0.0


def test_plausibility_matches_loop_reference_with_image_resolution_masks():
    rng = np.random.default_rng(7)
    maps = rng.gamma(1.0, 1.0, size=(4, 5, 4, 4))
    rows = rng.normal(size=(4, 5))
    image_masks = rng.random((4, 16, 16)) > 0.93
    grid = resize_masks(image_masks, (4, 4), dilate=False)
    for dilate in (True, False):
        expected = ref_plausibility(maps, rows, grid, dilate=dilate)
        assert plausibility(maps, rows, image_masks, dilate=dilate) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="one mask per image"):
        plausibility(maps, rows, image_masks[:2])


# ------------------------------------------------------------------ evaluate (stub estimator)


class StubQPM:
    """The public API evaluate reads, over fixed arrays (the last channel has no weight)."""

    def __init__(self, rng, n=23, K=7, C=3, h=3, w=4):
        self.classes_ = np.array(["cat", "dog", "owl"])
        self.maps = rng.gamma(1.0, 1.0, size=(n, K, h, w))
        self.maps[:, -1] = 1e3 * rng.random((n, h, w))  # would dominate everything if it were used
        self.weights = (rng.random((C, K)) > 0.3).astype(float)
        self.weights[:, :5] = 1.0
        self.weights[:, -1] = 0.0
        self.codes = rng.integers(0, C, size=n)

    def predict(self, X, stage):
        assert stage == "sparse"
        return self.classes_[self.codes[np.asarray(X, int)]]

    def feature_maps(self, X, stage):
        return self.maps[np.asarray(X, int)]

    def pooled_features(self, X, stage):
        return self.maps[np.asarray(X, int)].mean(axis=(2, 3))

    def class_weights(self, stage):
        return self.weights


def test_evaluate_against_recomputation(monkeypatch):
    monkeypatch.setattr(metrics, "_CHUNK", 5)  # several chunks, last one partial
    rng = np.random.default_rng(8)
    est = StubQPM(rng)
    n = len(est.codes)
    X = np.arange(n)
    y = est.classes_[rng.integers(0, 3, size=n)]
    masks = rng.random((n, 6, 8)) > 0.85
    X_train = np.arange(n)[::-1]
    y_train = est.classes_[rng.integers(0, 3, size=n)]
    row = evaluate(est, X, y, masks=masks, X_train=X_train, y_train=y_train, random_state=0)
    assert list(row) == ["Accuracy", "Plausibility", "SID@5", "Class-Independence", "Contrastiveness", "Correlation"]
    used_maps, rows = est.maps[:, :-1], est.weights[est.codes][:, :-1]
    F = est.pooled_features(X_train, "sparse")[:, :-1]
    assert row["Accuracy"] == pytest.approx(np.mean(est.classes_[est.codes] == y))
    grid = resize_masks(masks, (3, 4), dilate=False)
    assert row["Plausibility"] == pytest.approx(ref_plausibility(used_maps, rows, grid), abs=1e-12)
    assert row["SID@5"] == pytest.approx(ref_sid(used_maps, rows, 5), abs=1e-12)
    assert row["Class-Independence"] == pytest.approx(ref_class_independence(F, list(y_train)), abs=1e-12)
    assert row["Correlation"] == pytest.approx(ref_correlation(F), abs=1e-12)
    assert row["Contrastiveness"] == pytest.approx(contrastiveness(F, random_state=0), abs=1e-12)
    assert all(0 <= v <= 1 for v in row.values())
    # Without a training split the feature metrics read the test set; without masks no Plausibility.
    row_test = evaluate(est, X, y)
    assert "Plausibility" not in row_test
    expected = ref_class_independence(est.maps[:, :-1].mean((2, 3)), list(y))
    assert row_test["Class-Independence"] == pytest.approx(expected)


def test_evaluate_errors_and_missing_sid():
    rng = np.random.default_rng(9)
    est = StubQPM(rng)
    X = np.arange(len(est.codes))
    y = est.classes_[est.codes]
    with pytest.raises(ValueError, match="stage"):
        evaluate(est, X, y, stage="final")
    with pytest.raises(ValueError, match="X_train and y_train"):
        evaluate(est, X, y, X_train=X)
    with pytest.raises(ValueError, match="y must have shape"):
        evaluate(est, X, y[:3])
    with pytest.raises(ValueError, match="masks must hold one mask"):
        evaluate(est, X, y, masks=np.ones((2, 3, 4)))
    est.weights[:, 3:] = 0  # 3 features per class: SID@5 undefined
    with pytest.warns(UserWarning, match="SID@5"):
        row = evaluate(est, X, y)
    assert "SID@5" not in row and row["Accuracy"] == 1.0


# ------------------------------------------------------------------ linear probe (docs/baselines.md)


def _probe_data(rng, n=40, d=6, classes=3):
    y = rng.integers(0, classes, size=n)
    centres = rng.normal(size=(classes, d)) * 3
    X_cls = centres[y] + rng.normal(size=(n, d))
    X_patch = rng.normal(size=(n, 4, 4, d)) + centres[y][:, None, None, :] * (rng.random((n, 4, 4, 1)) > 0.7)
    return X_cls, X_patch, y


@pytest.mark.parametrize("n_classes", [2, 3])
def test_linear_probe_against_recomputation(n_classes):
    rng = np.random.default_rng(10 + n_classes)
    X_cls, X_patch, y = _probe_data(rng, classes=n_classes)
    X_train, _, y_train = _probe_data(rng, classes=n_classes)
    probe = LogisticRegression(max_iter=2000).fit(X_train, y_train)
    masks = rng.random((len(y), 4, 4)) > 0.6
    row = evaluate_linear_probe(
        probe, X_cls, X_patch, y, masks=masks, X_cls_train=X_train, y_train=y_train, random_state=0
    )
    # Independent: the predicted class's evidence row from decision_function semantics.
    coef = probe.coef_ if n_classes > 2 else np.vstack([-probe.coef_[0], probe.coef_[0]])
    pred = probe.predict(X_cls)
    rows = coef[pred]
    maps = X_patch.transpose(0, 3, 1, 2)
    assert row["Accuracy"] == pytest.approx(probe.score(X_cls, y))
    assert row["Plausibility"] == pytest.approx(ref_plausibility(maps, rows, masks), abs=1e-10)
    assert row["SID@5"] == pytest.approx(ref_sid(maps, rows, 5), abs=1e-10)
    assert row["Class-Independence"] == pytest.approx(ref_class_independence(X_train, list(y_train)), abs=1e-12)
    assert row["Correlation"] == pytest.approx(ref_correlation(X_train), abs=1e-12)


def test_linear_probe_pipeline_folds_scaler_and_rejects_other_steps():
    rng = np.random.default_rng(12)
    X_cls, X_patch, y = _probe_data(rng)
    X_cls = X_cls * [1, 10, 0.1, 1, 5, 2]
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X_cls, y)
    weights, _ = metrics._probe_weights(pipe)
    # The folded weights reproduce the pipeline's logits up to a per-class constant.
    diff = pipe.decision_function(X_cls) - X_cls @ weights.T
    np.testing.assert_allclose(diff, np.broadcast_to(diff[0], diff.shape), atol=1e-8)
    row = evaluate_linear_probe(pipe, X_cls, X_patch, y, masks=np.ones((len(y), 4, 4)))
    assert row["Plausibility"] == pytest.approx(1.0)
    with pytest.raises(TypeError, match="StandardScaler"):
        evaluate_linear_probe(make_pipeline(PCA(3), LogisticRegression()).fit(X_cls, y), X_cls, X_patch, y)
    with pytest.raises(ValueError, match="X_patch must have shape"):
        evaluate_linear_probe(pipe, X_cls, X_patch[..., :3], y)
