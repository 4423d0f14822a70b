"""make_parts: ground-truth parts data, and a QPM model puts its evidence on the parts."""

import numpy as np
import pytest

from qpm_sklearn import QPMClassifier
from qpm_sklearn.datasets import make_parts
from qpm_sklearn.datasets._synthetic import _class_part_sets
from qpm_sklearn.metrics import evaluate

# Small and fast; calibrated so that both stages reach high accuracy on the defaults of make_parts.
# n_selected=4 = the number of part prototypes: each class gets 2 of 4 shared features.
FAST_QPM = dict(
    n_features=32,
    hidden_size=64,
    n_layers=2,
    n_selected=4,
    n_per_class=2,
    dense_epochs=30,
    sparse_epochs=20,
    dense_batch_size=32,
    sparse_batch_size=32,
    dense_lr=1e-2,
    device="cpu",
)


def test_shapes_masks_and_balance():
    kwargs = dict(n_samples=41, n_classes=3, grid=(6, 7), n_dims=5, n_parts_per_class=2, part_size=2)
    X, y, masks = make_parts(**kwargs, random_state=0)
    assert X.shape == (41, 6, 7, 5) and X.dtype == np.float32
    assert masks.shape == (41, 6, 7) and masks.dtype == bool
    assert np.all(masks.sum(axis=(1, 2)) == 2 * 2 * 2)  # two non-overlapping 2x2 parts
    assert sorted(np.bincount(y)) == [13, 14, 14]
    X2, y2, masks2 = make_parts(**kwargs, random_state=0)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(masks, masks2)
    assert not np.array_equal(X, make_parts(**kwargs, random_state=1)[0])


def test_parts_carry_the_signal_and_classes_share_prototypes():
    X, y, masks = make_parts(n_samples=200, noise=0.5, n_distractors=0, random_state=3)
    norms = np.linalg.norm(X, axis=-1)
    # Background tokens have norm ~ 0.5 * sqrt(16) = 2; a part adds a unit direction times 6.
    assert norms[masks].mean() > 5.0 and norms[~masks].mean() < 2.5
    # Nearly noise-free: cluster the part tokens by direction. There are 4 prototypes, each class
    # uses a distinct pair, and every prototype serves two classes (no part alone decides).
    X, y, masks = make_parts(n_samples=200, noise=0.05, n_distractors=0, random_state=3)
    parts = X[masks].reshape(200, 2, 16)
    parts /= np.linalg.norm(parts, axis=-1, keepdims=True)
    centres, labels = [], np.zeros((200, 2), int)
    for i in range(200):
        for p in range(2):
            match = [c for c, centre in enumerate(centres) if centre @ parts[i, p] > 0.95]
            if not match:
                centres.append(parts[i, p])
                match = [len(centres) - 1]
            labels[i, p] = match[0]
    assert len(centres) == 4
    pairs = {c: {frozenset(labels[i]) for i in np.flatnonzero(y == c)} for c in range(4)}
    assert all(len(p) == 1 and len(next(iter(p))) == 2 for p in pairs.values())
    used = [next(iter(pairs[c])) for c in range(4)]
    assert len(set(used)) == 4
    assert all(sum(proto in pair for pair in used) == 2 for proto in range(4))
    sets = _class_part_sets(10, 2, 5, np.random.RandomState(0))
    assert len({tuple(s) for s in sets}) == 10


def test_distractors_are_not_in_the_mask():
    X, _, masks = make_parts(n_samples=50, n_distractors=3, noise=0.0, random_state=4)
    strong = np.linalg.norm(X, axis=-1) > 1.0
    assert np.all(strong.sum(axis=(1, 2)) == 5) and np.all(masks <= strong)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_classes=1), "n_classes"),
        (dict(grid=(2, 2)), "grid"),
        (dict(n_prototypes=3, n_classes=4), "n_prototypes"),
        (dict(noise=-1.0), "noise"),
        (dict(part_size=0), "part_size"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_parts(n_samples=4, **kwargs)


def test_qpm_evidence_lies_on_the_parts_more_than_dense():
    X, y, masks = make_parts(n_samples=300, random_state=0)
    X_train, y_train, X_test, y_test, masks_test = X[:200], y[:200], X[200:], y[200:], masks[200:]
    clf = QPMClassifier(random_state=0, **FAST_QPM).fit(X_train, y_train)
    split = dict(X_train=X_train, y_train=y_train)
    with pytest.warns(UserWarning, match="SID@5"):  # 2 features per class: SID@5 is undefined
        sparse = evaluate(clf, X_test, y_test, masks=masks_test, **split, stage="sparse", random_state=0)
    dense = evaluate(clf, X_test, y_test, masks=masks_test, **split, stage="dense", random_state=0)
    # Calibrated on seeds 0-6: sparse accuracy 0.91-1.0, dense 0.81-0.94; Plausibility 0.80-0.88 vs 0.29-0.33.
    assert sparse["Accuracy"] >= 0.8 and dense["Accuracy"] >= 0.75
    assert "SID@5" not in sparse and "SID@5" in dense
    # Dilated part masks cover ~25 % of the grid: a diffuse evidence map scores about that.
    assert dense["Plausibility"] < 0.5
    assert sparse["Plausibility"] > dense["Plausibility"] + 0.3
