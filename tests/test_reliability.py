"""Edges of the reliability rules: file permissions, sample weights, explanation indexing,
metric sizes, unfitted models in the figure and metric functions.

Every expectation comes from an independent reference: the mode ``np.save`` gives under the
same umask, the same indexing applied to the underlying numpy arrays, a hand-built model.
"""

import copy
import os
import stat
import sys

import numpy as np
import pytest

from qpm_sklearn import QPMClassifier
from qpm_sklearn._atomic import replace_atomically, write_bytes_atomically

SMALL = dict(
    n_features=12, n_selected=6, n_per_class=2, hidden_size=16, n_layers=2,
    dense_epochs=2, sparse_epochs=1, dense_batch_size=16, sparse_batch_size=16,
)  # fmt: skip
POSIX = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def _data(n_per_class=10, n_classes=3, seed=0):
    rng = np.random.RandomState(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = rng.normal(size=(len(y), 2, 2, 8)).astype(np.float32)
    X[np.arange(len(y)), 0, 0, y] += 3.0
    return X, y


@pytest.fixture(scope="module")
def fitted():
    X, y = _data()
    return QPMClassifier(**SMALL, random_state=0).fit(X, y), X, y


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


# ---------------------------------------------------------------------------------------------
# files: atomic writes get the mode np.save would give


@POSIX
def test_atomic_write_has_the_mode_np_save_gives(tmp_path, umask):
    np.save(tmp_path / "reference.npy", np.zeros(3))
    write_bytes_atomically(tmp_path / "written.npy", b"content")
    replace_atomically(tmp_path / "streamed.npy", lambda handle: np.save(handle, np.zeros(3)))
    expected = _mode(tmp_path / "reference.npy")
    assert expected == 0o666 & ~umask
    assert _mode(tmp_path / "written.npy") == expected
    assert _mode(tmp_path / "streamed.npy") == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reference.npy", "streamed.npy", "written.npy"]


@POSIX
def test_atomic_replacement_keeps_the_mode_of_the_replaced_file(tmp_path):
    # np.save into an existing file keeps that file's mode; so does the atomic replacement.
    reference, written = tmp_path / "reference.npy", tmp_path / "written.npy"
    for path in (reference, written):
        path.write_bytes(b"old")
        os.chmod(path, 0o640)
    np.save(reference, np.zeros(3))
    write_bytes_atomically(written, b"new")
    assert _mode(written) == _mode(reference) == 0o640
    assert written.read_bytes() == b"new"


@POSIX
def test_saved_model_file_is_readable_like_np_savez(tmp_path, umask, fitted):
    np.savez(tmp_path / "reference.npz", a=np.zeros(2))
    fitted[0].save(tmp_path / "model.npz")
    assert _mode(tmp_path / "model.npz") == _mode(tmp_path / "reference.npz")


@POSIX
def test_embedding_cache_files_have_the_umask_mode(tmp_path, umask):
    from qpm_sklearn._cache import EmbeddingCache

    keys = np.arange(3 * 20, dtype=np.uint8).reshape(3, 20)
    cache = EmbeddingCache(tmp_path, {"model": "m"}, keys, (2,))
    cache.fill(lambda rows: cache.store(rows, np.ones((len(rows), 2), np.float16)))
    np.save(tmp_path / "reference.npy", np.zeros(1))
    expected = _mode(tmp_path / "reference.npy")
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "reference.npy"]
    assert {p.name for p in files} >= {"settings.json", "keys.npy", "embeddings.npy", "commits.log"}
    assert {p.name: _mode(p) for p in files} == {p.name: expected for p in files}


@pytest.mark.parametrize(
    "garbage",
    [b"\x00\xff garbage", b"[1, 2]\n", b'{"start": 0, "stop": 99999, "sha256": "x"}\n', b'{"start": true}\n'],
)
def test_embedding_cache_recovers_from_garbage_bookkeeping_files(tmp_path, garbage):
    # A stray progress file of an older layout and an unparsable commit log are never read as
    # rows: the cache warns, recomputes and serves exactly what was computed.
    from qpm_sklearn._cache import EmbeddingCache

    keys = np.arange(4 * 20, dtype=np.uint8).reshape(4, 20)
    truth = np.arange(8, dtype=np.float16).reshape(4, 2)
    cache = EmbeddingCache(tmp_path, {"model": "m"}, keys, (2,))
    cache.fill(lambda rows: cache.store(rows, truth[rows]))
    (cache.folder / "progress.json").write_bytes(garbage)
    (cache.folder / "commits.log").write_bytes(garbage)
    reopened = EmbeddingCache(tmp_path, {"model": "m"}, keys, (2,))
    with pytest.warns(RuntimeWarning, match="unreadable"):
        result = reopened.fill(lambda rows: reopened.store(rows, truth[rows]))
    np.testing.assert_array_equal(result, truth)


# ---------------------------------------------------------------------------------------------
# sample weights: zero-weight batches, float32 range, early stopping

GRID = (2, 2)
TRAIN = dict(grid=GRID, epochs=2, batch_size=8, lr=1e-2, weight_decay=1e-4, diversity=0.5, device="cpu", seed=3)


def _tokens(n=24, n_classes=3, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    tokens = (rng.normal(size=(n_classes, dim)) * 3)[y][:, None, :] + rng.normal(size=(n, 4, dim))
    return tokens.astype(np.float32), y


def _network(dim=6, n_classes=3):
    import torch

    from qpm_sklearn.adapter import DenseHead, QPMNetwork, TokenMLP

    torch.manual_seed(0)
    return QPMNetwork(TokenMLP(dim, 16, 8, 2), DenseHead(8, n_classes, dropout=0.0))


def _state(network):
    return {name: value.detach().clone() for name, value in network.state_dict().items()}


def test_a_batch_whose_weights_are_all_zero_is_skipped(monkeypatch):
    import torch

    from qpm_sklearn.training import train_network

    tokens, y = _tokens(n=6)
    weight = np.zeros(6)
    weight[0] = 1.0  # one-sample batches: every epoch has exactly one batch with weight
    steps = []
    original = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: steps.append(1) or original(self, *a, **k))
    history = train_network(_network(), tokens, y, **dict(TRAIN, epochs=3, batch_size=1), sample_weight=weight)
    assert len(steps) == 3  # the zero-weight batches made no optimiser step
    assert all(np.isfinite([row[name] for name in ("loss", "ce", "diversity")]).all() for row in history)


def test_many_zero_weights_with_small_batches_train():
    from qpm_sklearn.training import forward_in_batches, train_network

    tokens, y = _tokens(n=48)
    weight = np.where(np.arange(48) % 4 == 0, 1.0, 0.0)  # most batches of 2 weigh 0
    network = _network()
    history = train_network(network, tokens, y, **dict(TRAIN, epochs=6, batch_size=2), sample_weight=weight)
    assert len(history) == 6 and np.isfinite(history[-1]["loss"])
    logits = forward_in_batches(network, tokens, grid=GRID, batch_size=16, device="cpu")["logits"]
    assert np.isfinite(logits).all()


def test_streamed_batches_skip_the_same_zero_weight_batches():
    from qpm_sklearn.training import train_network

    tokens, y = _tokens(n=48)
    weight = np.where(np.arange(48) % 4 == 0, 1.0, 0.0)
    states = []
    for resident in (True, False):
        network = _network()
        train_network(network, tokens, y, **dict(TRAIN, batch_size=2), sample_weight=weight, resident=resident)
        states.append(_state(network))
    for name in states[0]:
        np.testing.assert_allclose(states[1][name].numpy(), states[0][name].numpy(), rtol=1e-6, atol=1e-7)


def test_only_weight_ratios_matter_up_to_float32s_range():
    # Weights near float32's largest number overflow float32 sums; scaled by any factor that
    # float32 holds, the weights train the very same network.
    from qpm_sklearn.training import train_network

    tokens, y = _tokens()
    weight = np.random.default_rng(1).uniform(0.5, 2.0, len(y))
    states = []
    for scale in (1.0, 1e38 / weight.max(), 1e-30):
        network = _network()
        train_network(network, tokens, y, **TRAIN, sample_weight=weight * scale)
        states.append(_state(network))
    for state in states[1:]:
        for name in state:
            assert torch_equal(state[name], states[0][name]), name


def torch_equal(a, b):
    import torch

    return torch.equal(a, b)


@pytest.mark.parametrize(
    "weight, message",
    [
        (np.r_[1.0, np.full(23, 1e50)], "up to 1e\\+50"),
        (np.r_[1.0, np.full(23, 1e-50)], "as small as 1e-50"),
        (np.r_[1e30, np.full(23, 1e-20)], "1e-50 times the largest"),
    ],
)
def test_weights_float32_cannot_hold_are_refused_naming_sample_weight(weight, message):
    from qpm_sklearn.training import train_network

    tokens, y = _tokens()
    with pytest.raises(ValueError, match="sample_weight.*" + message):
        train_network(_network(), tokens, y, **TRAIN, sample_weight=weight)
    with pytest.raises(ValueError, match="sample_weight.*" + message):
        train_network(_network(), tokens, y, **TRAIN, sample_weight=weight, check_input=False)


def test_classifier_refuses_weights_float32_cannot_hold():
    X, y = _data()
    with pytest.raises(ValueError, match="sample_weight"):
        QPMClassifier(**SMALL, random_state=0).fit(X, y, sample_weight=np.r_[1.0, np.full(len(y) - 1, 1e50)])


def test_check_split_weights_refuses_a_zero_weight_side():
    from qpm_sklearn._utils import check_split_weights

    weight = np.array([1.0, 1.0, 0.0, 0.0])
    check_split_weights(weight, np.array([0, 2]), np.array([1, 3]))  # both sides weigh something
    check_split_weights(None, np.array([0]), np.array([1]))
    with pytest.raises(ValueError, match="early_stopping: all 2 held-out validation samples have sample_weight 0"):
        check_split_weights(weight, np.array([0, 1]), np.array([2, 3]))
    with pytest.raises(ValueError, match="early_stopping: all 2 training samples have sample_weight 0"):
        check_split_weights(weight, np.array([2, 3]), np.array([0, 1]))


def test_early_stopping_with_zero_weight_validation_rows_is_refused(monkeypatch):
    import sklearn.model_selection

    X, y = _data(n_per_class=10)
    held_out = np.array([0, 10, 20])  # one sample of each class
    weight = np.ones(len(y))
    weight[held_out] = 0.0

    def split(rows, **kwargs):  # the held-out rows are fixed, so that exactly they weigh 0
        return np.setdiff1d(rows, held_out), held_out

    monkeypatch.setattr(sklearn.model_selection, "train_test_split", split)
    params = dict(SMALL, early_stopping=True, validation_fraction=0.1, random_state=0)
    with pytest.raises(ValueError, match="early_stopping.*held-out.*sample_weight 0"):
        QPMClassifier(**params).fit(X, y, sample_weight=weight)


# ---------------------------------------------------------------------------------------------
# Explanation indexing follows numpy, and every method works on what it selects (empty included)

_SAMPLE_FIELDS = ("prediction", "proba", "logit", "intercept", "features", "contributions", "weights", "maps")


def _explanation(n=3, k=2, grid=(2, 3)):
    from qpm_sklearn import Explanation

    rng = np.random.default_rng(0)
    features = rng.permutation(10)[: n * k].reshape(n, k)
    features[1, -1] = -1  # a padded entry
    return Explanation(
        prediction=np.arange(n) % 2, proba=rng.random((n, 2)), classes=np.array([0, 1]), logit=rng.random(n),
        intercept=np.zeros(n), features=features, contributions=rng.random((n, k)), weights=np.ones((n, k)),
        maps=rng.random((n, k, *grid)), feature_names={int(features[0, 0]): "wing"},
    )  # fmt: skip


INDICES = [
    [], np.array([], dtype=int), np.zeros(3, dtype=bool), slice(3, None), slice(5, 9), slice(None, None, -1),
    np.array([True, False, True]), [True, True, False], -1, np.int64(2), [2, 0, 2], np.array([-1, 0]), range(2),
]  # fmt: skip


@pytest.mark.parametrize("index", INDICES, ids=repr)
def test_explanation_indexing_is_numpys_on_every_field(index):
    e = _explanation()
    part = e[index]
    for name in _SAMPLE_FIELDS:
        expected = getattr(e, name)[index]
        if isinstance(index, (int, np.integer)):
            expected = expected[None]  # an int keeps the sample axis
        np.testing.assert_array_equal(getattr(part, name), expected, err_msg=name)
    assert len(part) == len(np.arange(3)[index].reshape(-1))
    np.testing.assert_array_equal(part.classes, e.classes)
    assert part.feature_names == e.feature_names


@pytest.mark.parametrize("index", INDICES, ids=repr)
def test_explanation_methods_work_on_every_selection(index):
    pytest.importorskip("pandas")
    import pandas as pd

    e = _explanation()
    positions = np.arange(3)[index].reshape(-1)
    part = e[index]
    np.testing.assert_allclose(part.saliency(8), e.saliency(8)[positions])
    assert part.saliency(8).shape == (len(positions), 2, 8, 8)
    np.testing.assert_allclose(part.evidence_map(), e.evidence_map()[positions])
    whole = e.to_frame()
    pieces = [whole[whole["sample"] == p].assign(sample=j) for j, p in enumerate(positions)]
    expected = pd.concat(pieces, ignore_index=True) if pieces else whole.iloc[:0]
    pd.testing.assert_frame_equal(part.to_frame().reset_index(drop=True), expected.reset_index(drop=True))
    assert repr(part).startswith(f"Explanation({len(positions)} samples")
    assert [len(one) for one in part] == [1] * len(positions)


@pytest.mark.parametrize("index", [3, -4, [3], np.array([0, 5]), 1.0, "a", np.array([0.0])], ids=repr)
def test_explanation_refuses_what_numpy_refuses_with_index_error(index):
    with pytest.raises(IndexError):
        np.arange(3)[index]
    with pytest.raises(IndexError):
        _explanation()[index]


@pytest.mark.parametrize("index", [[[0, 1]], None, True], ids=repr)
def test_explanation_refuses_an_index_that_adds_a_sample_axis(index):
    assert np.arange(3)[index].ndim == 2  # numpy would add an axis an Explanation does not have
    with pytest.raises(IndexError, match="Explanation"):
        _explanation()[index]


# ---------------------------------------------------------------------------------------------
# metrics and figures: sizes, unfitted models, empty images


@pytest.mark.parametrize("size", [(0, 0), (0, 3), (3, -1), (-2, -2)])
def test_resize_masks_refuses_a_non_positive_size_naming_it(size):
    from qpm_sklearn.metrics import resize_masks

    with pytest.raises(ValueError, match=r"size\[[01]\]"):
        resize_masks(np.ones((1, 4, 4), bool), size)


@pytest.mark.parametrize("size", [(2.5, 2), 3, (2, 2, 2), "ab"])
def test_resize_masks_refuses_a_size_that_is_not_two_ints_naming_it(size):
    from qpm_sklearn.metrics import resize_masks

    with pytest.raises((ValueError, TypeError), match="size"):
        resize_masks(np.ones((1, 4, 4), np.uint8), size)


def test_resize_masks_accepts_numpy_ints_as_from_a_shape():
    from qpm_sklearn.metrics import resize_masks

    mask = np.zeros((1, 4, 4), bool)
    mask[0, 0, 0] = True
    got = resize_masks(mask, np.array([2, 2]), dilate=False)
    np.testing.assert_array_equal(got, [[[True, False], [False, False]]])


def _unfitted_calls():
    from qpm_sklearn import plotting
    from qpm_sklearn.explanation import estimator_feature_names
    from qpm_sklearn.metrics import evaluate

    X, y = _data(n_per_class=2)
    return {
        "plot_assignment": lambda clf: plotting.plot_assignment(clf),
        "plot_class_comparison": lambda clf: plotting.plot_class_comparison(clf, 0, 1),
        "plot_class_comparison with X": lambda clf: plotting.plot_class_comparison(clf, 0, 1, X=X[[0, 2]]),
        "evaluate": lambda clf: evaluate(clf, X, y),
        "estimator_feature_names": estimator_feature_names,
    }


@pytest.mark.parametrize("name", list(_unfitted_calls()))
def test_functions_reading_a_classifier_raise_not_fitted_error(name):
    pytest.importorskip("matplotlib")
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        _unfitted_calls()[name](QPMClassifier(**SMALL))


def test_evaluate_linear_probe_on_an_unfitted_probe_raises_not_fitted_error():
    from sklearn.exceptions import NotFittedError
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from qpm_sklearn.metrics import evaluate_linear_probe

    rng = np.random.default_rng(0)
    for probe in (LogisticRegression(), make_pipeline(StandardScaler(), LogisticRegression())):
        with pytest.raises(NotFittedError):
            evaluate_linear_probe(probe, rng.random((4, 3)), rng.random((4, 2, 2, 3)), np.array([0, 1, 0, 1]))


@pytest.mark.filterwarnings("ignore:SID@5 is left out")
def test_the_same_functions_work_on_the_fitted_classifier(fitted):
    # The NotFittedError checks must not refuse a fitted model.
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    clf = fitted[0]
    X, y = _data(n_per_class=2)  # what _unfitted_calls passes
    results = {name: call(clf) for name, call in _unfitted_calls().items()}
    for name in ("plot_assignment", "plot_class_comparison", "plot_class_comparison with X"):
        assert isinstance(results[name], Figure) and results[name].axes, name
        plt.close(results[name])
    assert results["evaluate"]["Accuracy"] == pytest.approx(clf.score(X, y))
    assert results["estimator_feature_names"] == {}  # no feature_names given: every feature unnamed
    named = copy.deepcopy(clf).set_params(feature_names={int(clf.selected_features_[0]): "beak"})
    assert _unfitted_calls()["estimator_feature_names"](named) == {int(clf.selected_features_[0]): "beak"}


def test_class_features_of_an_unfitted_classifier_raises_not_fitted_error():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        QPMClassifier(**SMALL).class_features(0)


@pytest.mark.parametrize(
    "image", [np.zeros((0, 0, 3), np.uint8), np.zeros((0, 5)), np.zeros((4, 0, 3))], ids=lambda a: str(a.shape)
)
def test_an_empty_image_is_refused_naming_image(image, fitted):
    pytest.importorskip("matplotlib")
    from qpm_sklearn.plotting import plot_class_comparison, plot_explanation

    clf, X, y = fitted
    with pytest.raises(ValueError, match="image.*empty"):
        plot_explanation(clf.explain(X[:1]), image=image)
    a, b = clf.classes_[:2]
    with pytest.raises(ValueError, match="image.*empty"):
        plot_class_comparison(clf, a, b, X=X[[0, 10]], images=[image, image])


@pytest.mark.parametrize("size", [(0, 0), (0, 5), (7, 0)])
def test_an_empty_pil_image_is_refused_before_it_is_resized_into_a_blank_one(size):
    from PIL import Image

    from qpm_sklearn.images import load_resized

    with pytest.raises(ValueError, match=r"X\[4\] is an empty image"):
        load_resized(Image.new("RGB", size), 4, 28)
