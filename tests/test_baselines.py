"""SLDD pruning and Q-SENN quantisation on hand-built weights; the head builders end to end."""

import numpy as np
import pytest

from qpm_sklearn.baselines import (
    qsenn_head,
    qsenn_quantise,
    qsenn_refit,
    sldd_head,
    sldd_sparsify,
    sparse_head,
)


def _point(weight, bias=None):
    weight = np.asarray(weight, dtype=float)
    return {"weight": weight, "bias": np.arange(weight.shape[0], dtype=float) if bias is None else np.asarray(bias)}


# --------------------------------------------------------------------------------------- SLDD (7.3-4)


def test_sldd_picks_the_densest_point_within_k_over_half_and_prunes_globally():
    # C = 2, k = 1: limit 2 non-zeros per class on average (4 in total), keep C·k = 2 entries.
    path = [
        _point(np.zeros((2, 4))),
        _point([[0, -3, 0, 0], [0.1, 0, 0, 0]]),  # 1 per class
        _point([[0.5, -3, 0, 0.2], [0, 0, -0.1, 0]], bias=[0.7, -0.7]),  # 2 per class: chosen
        _point([[0.5, -3, 1, 0.2], [4, 0, -0.1, 0]]),  # 3 per class: too dense
    ]
    weight, bias = sldd_sparsify(path, n_per_class=1, n_classes=2)
    # The two largest |w| are both in class 0 (global, not per class); signs and values kept.
    np.testing.assert_array_equal(weight, [[0.5, -3, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(bias, [0.7, -0.7])


def test_sldd_ties_in_density_take_the_most_regularised_point():
    path = [_point(np.zeros((2, 3))), _point([[1, 0, 0], [0, 2, 0]], [1, 1]), _point([[0, 0, 5], [0, 2, 0]], [2, 2])]
    weight, bias = sldd_sparsify(path, n_per_class=1, n_classes=2)
    np.testing.assert_array_equal(weight, [[1, 0, 0], [0, 2, 0]])
    np.testing.assert_array_equal(bias, [1, 1])


def test_sldd_special_case_excludes_index_zero():
    # Index 0 (1 per class) is the densest point within the limit of 2; the sparsities sum to
    # 1 + 3 + 4 > 1, so index 0 is excluded; nothing else is within the limit → the sparsest
    # remaining point with non-zeros (index 1) is pruned to C·k = 2 entries.
    path = [
        _point([[1, 0, 0, 0], [0, 1, 0, 0]]),
        _point([[1, -6, 2, 0], [3, 1, -5, 0]], bias=[9, 8]),
        _point([[1, 6, 2, 1], [3, 1, 5, 1]]),
    ]
    with pytest.warns(RuntimeWarning, match="sparsest"):
        weight, bias = sldd_sparsify(path, n_per_class=1, n_classes=2)
    np.testing.assert_array_equal(weight, [[0, -6, 0, 0], [0, 0, -5, 0]])
    np.testing.assert_array_equal(bias, [9, 8])


def test_sldd_special_case_moves_to_the_next_eligible_point():
    # Indices 0 and 1 tie at 0.5 per class (index 0 wins the tie); the sum 0.5 + 0.5 + 3 > 1 →
    # exclude index 0; index 1 is within the limit → chosen.
    path = [
        _point([[1, 0, 0], [0, 0, 0]], [0, 0]),
        _point([[0, 0, 0], [0, -2, 0]], [5, 6]),
        _point(np.ones((2, 3)) * 3),
    ]
    weight, bias = sldd_sparsify(path, n_per_class=1, n_classes=2)
    np.testing.assert_array_equal(weight, [[0, 0, 0], [0, -2, 0]])
    np.testing.assert_array_equal(bias, [5, 6])


def test_sldd_index_zero_kept_when_the_path_is_almost_empty():
    # Sum of sparsities = 0.5 + 0.5 ≤ 1 → no special case: the first (tied) densest point stays.
    path = [_point([[1, 0], [0, 0]], [3, 4]), _point([[0, 2], [0, 0]])]
    weight, bias = sldd_sparsify(path, n_per_class=1, n_classes=2)
    np.testing.assert_array_equal(weight, [[1, 0], [0, 0]])
    np.testing.assert_array_equal(bias, [3, 4])


def test_sldd_keeps_everything_when_fewer_than_ck_non_zeros():
    path = [_point([[0, 2, 0], [0, 0, 0], [0, 0, -1]], [1, 2, 3])]
    weight, _ = sldd_sparsify(path, n_per_class=2, n_classes=3)
    np.testing.assert_array_equal(weight, path[0]["weight"])


def test_sldd_rejects_bad_paths():
    with pytest.raises(ValueError, match="empty"):
        sldd_sparsify([], 1, 2)
    with pytest.raises(ValueError, match="n_classes=3"):
        sldd_sparsify([_point(np.zeros((2, 3)))], 1, 3)
    with pytest.raises(ValueError, match="n_per_class"):
        sldd_sparsify([_point(np.zeros((2, 3)))], 4, 2)


# ------------------------------------------------------------------------------------- QSENN (7.4-4)


def test_qsenn_quantiser_hand_built():
    # C = 3, k = 1 → keep 3. |w| sorted: .9 .9 .6 .4 .3 ... → threshold (.6 + .4)/2 = .5.
    # Kept: +.9, −.9 (= −max|w|: the authors' code would give +a), −.6; a = (.9 + .9 + .6)/3 = .8.
    weight = np.array([[0.9, -0.2, 0.0, 0.1], [-0.9, 0.3, 0.05, 0.0], [0.4, 0.0, -0.6, 0.2]])
    bias = np.array([0.5, -1.0, 0.25])
    weight_q, bias_q = qsenn_quantise(weight, bias, n_per_class=1)
    np.testing.assert_allclose(weight_q, [[0.8, 0, 0, 0], [-0.8, 0, 0, 0], [0, 0, -0.8, 0]])
    # #pos − #neg = [1, −1, −1] → d = [2, 0, 0]; B = 1; b = 1 − d·2/2 = [−1, 1, 1].
    np.testing.assert_allclose(bias_q, [-1.0, 1.0, 1.0])


def test_qsenn_bias_interpolates_between_plus_and_minus_B():
    # k = 2, C = 3 → keep 6 of the 6 non-zeros (threshold = (min kept + 0)/2).
    weight = np.array([[1.0, 2.0, 0.0], [3.0, -4.0, 0.0], [-5.0, -6.0, 0.0]])
    weight_q, bias_q = qsenn_quantise(weight, np.array([0.2, -0.4, 0.1]), n_per_class=2)
    np.testing.assert_allclose(weight_q, np.sign(weight) * 3.5)  # a = mean(1..6)
    # #pos − #neg = [2, 0, −2] → d = [4, 2, 0]; B = .4; b = .4 − d·.8/4 = [−.4, 0, .4].
    np.testing.assert_allclose(bias_q, [-0.4, 0.0, 0.4], atol=1e-12)


def test_qsenn_all_equal_balance_gives_zero_bias():
    weight = np.array([[2.0, 0.1], [0.1, 3.0]])
    weight_q, bias_q = qsenn_quantise(weight, np.array([1.5, -0.5]), n_per_class=1)
    np.testing.assert_allclose(weight_q, [[2.5, 0], [0, 2.5]])
    np.testing.assert_array_equal(bias_q, [0.0, 0.0])
    assert np.isfinite(bias_q).all()


def test_qsenn_ties_at_the_threshold_are_dropped():
    # 2nd and 3rd largest magnitudes are equal: threshold = 1, strict '>' keeps only the 3.
    weight_q, _ = qsenn_quantise(np.array([[3.0, 1.0], [-1.0, 0.0]]), np.zeros(2), n_per_class=1)
    np.testing.assert_array_equal(weight_q, [[3.0, 0], [0, 0]])


def test_qsenn_random_weights_follow_the_rules():
    rng = np.random.default_rng(0)
    weight, bias = rng.normal(size=(20, 12)), rng.normal(size=20)
    weight_q, bias_q = qsenn_quantise(weight, bias, n_per_class=3)
    kept = weight_q != 0
    top = np.argsort(-np.abs(weight).ravel())[:60]
    np.testing.assert_array_equal(np.flatnonzero(kept.ravel()), np.sort(top))
    a = np.abs(weight).ravel()[top].mean()
    np.testing.assert_allclose(weight_q[kept], np.sign(weight[kept]) * a)
    B = np.abs(bias).max()
    assert np.all(np.abs(bias_q) <= B + 1e-12)
    balance = kept.sum(1) - 2 * (weight_q < 0).sum(1)
    assert bias_q[np.argmax(balance)] == pytest.approx(-B) and bias_q[np.argmin(balance)] == pytest.approx(B)


# ------------------------------------------------------------------------------------ head builders


def _dense_features(n=240, n_features=24, n_classes=4, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    F = rng.gamma(2.0, 0.3, size=(n, n_features))
    F[:, :8] += 1.5 * np.repeat(np.eye(n_classes), 2, axis=1)[y]  # features 0..7 carry the class
    return F, y


def _accuracy(head, F, y):
    Z = (F[:, head.selected] - head.mean) / head.std
    return np.mean(np.argmax(Z @ head.weight.T + head.bias, axis=1) == y)


@pytest.mark.parametrize("method", ["sldd", "qsenn"])
def test_heads_train_and_predict(method):
    F, y = _dense_features()
    head = sparse_head(method, F, y, n_selected=8, n_per_class=2, random_state=0)
    assert head.selected.tolist() == list(range(8))
    assert head.weight.shape == (4, 8) and head.bias.shape == (4,)
    assert head.mean.shape == head.std.shape == (8,) and np.all(head.std >= 1e-5)
    assert np.count_nonzero(head.weight) <= 4 * 2
    assert _accuracy(head, F, y) > 0.9
    assert head.info["method"] == method
    again = sparse_head(method, F, y, n_selected=8, n_per_class=2, random_state=0)
    for key in ("selected", "weight", "bias", "mean", "std"):
        np.testing.assert_array_equal(getattr(head, key), getattr(again, key))


def test_qsenn_weights_are_quantised_and_refit_reuses_the_split():
    F, y = _dense_features(seed=1)
    head = qsenn_head(F, y, n_selected=8, n_per_class=2, random_state=5)
    assert len(np.unique(np.abs(head.weight[head.weight != 0]))) == 1
    refit = qsenn_refit(F[:, head.selected], y, 2, random_state=5)
    np.testing.assert_array_equal(refit.weight, head.weight)
    np.testing.assert_array_equal(refit.mean, head.mean)


def test_split_drops_ten_percent_and_follows_the_seed():
    F, y = _dense_features()
    head = sldd_head(F, y, n_selected=8, n_per_class=2, random_state=0)
    train = np.sort(np.random.RandomState(0).permutation(240)[24:])  # 216 = 240 − ⌊0.1·240⌋ samples
    np.testing.assert_allclose(head.mean, F[train][:, head.selected].mean(0))
    np.testing.assert_allclose(head.std, F[train][:, head.selected].std(0))
    other = sldd_head(F, y, n_selected=8, n_per_class=2, random_state=1)
    assert not np.allclose(head.mean, other.mean)
    full = sldd_head(F, y, n_selected=8, n_per_class=2, validation_fraction=0.0)
    np.testing.assert_allclose(full.mean, F[:, full.selected].mean(0))


def test_sparse_head_rejects_unknown_method():
    F, y = _dense_features()
    with pytest.raises(ValueError, match="method"):
        sparse_head("qpm", F, y)


# ------------------------------------------------------------------------------ end to end (estimator)


def _grid_data(n_per_class=20, n_classes=3, seed=0):
    """Patch grids (n, 4, 4, 8) where class c adds its own direction to a 2×2 patch block."""
    rng = np.random.RandomState(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = rng.normal(scale=0.5, size=(len(y), 4, 4, 8)).astype(np.float32)
    directions = rng.normal(size=(n_classes, 8)).astype(np.float32) * 2.0
    for i, c in enumerate(y):
        r, q = rng.randint(0, 3), rng.randint(0, 3)
        X[i, r : r + 2, q : q + 2] += directions[c]
    return X, y


@pytest.mark.parametrize("selection", ["sldd", "qsenn"])
def test_classifier_trains_and_predicts_with_each_baseline(selection):
    from qpm_sklearn import QPMClassifier

    X, y = _grid_data()
    settings = dict(
        n_features=16, n_selected=8, n_per_class=2, hidden_size=32, n_layers=2, dense_epochs=8,
        sparse_epochs=2, dense_batch_size=16, sparse_batch_size=16, dense_lr=1e-2,
    )  # fmt: skip
    clf = QPMClassifier(**settings, selection=selection, random_state=0).fit(X, y)
    assert clf.selected_features_.shape == (8,) and clf.sparse_weight_.shape == (3, 8)
    assert np.count_nonzero(clf.sparse_weight_) <= 3 * 2
    if selection == "qsenn":
        assert len(np.unique(np.abs(clf.sparse_weight_[clf.sparse_weight_ != 0]))) == 1
    proba = clf.predict_proba(X)
    assert proba.shape == (60, 3) and np.isfinite(proba).all()
    assert clf.score(X, y) > 0.6


def test_linear_probe_recipe_and_its_metrics(tiny_backbone):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from qpm_sklearn import Dinov2Embedder
    from qpm_sklearn.metrics import evaluate_linear_probe

    rng = np.random.RandomState(0)
    images = rng.randint(0, 255, size=(12, 56, 56, 3)).astype(np.uint8)
    y = np.arange(12) % 2
    images[y == 1, :, :28] = 255  # class 1: bright left half
    probe = make_pipeline(
        Dinov2Embedder(tiny_backbone, output="cls", image_size=56, local_files_only=True),
        LogisticRegression(max_iter=1000),
    ).fit(images, y)
    assert probe.score(images, y) == 1.0
    patches = Dinov2Embedder(tiny_backbone, output="patch", image_size=56, local_files_only=True).transform(images)
    cls = probe[0].transform(images)
    row = evaluate_linear_probe(probe[-1], cls, patches, y, random_state=0)
    assert row["Accuracy"] == 1.0
    assert {"SID@5", "Class-Independence", "Contrastiveness"} <= set(row)
    assert all(np.isfinite(v) for v in row.values())
