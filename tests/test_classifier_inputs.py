"""QPMClassifier on unusual and bad inputs: a correct result or a clean, typed error."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.exceptions import NotFittedError

from qpm_sklearn import QPMClassifier

TINY = dict(
    n_features=8, n_selected=4, n_per_class=2, hidden_size=16, n_layers=2,
    dense_epochs=2, sparse_epochs=1, dense_batch_size=8, sparse_batch_size=8, random_state=0,
)  # fmt: skip


def data(n=24, grid=(3, 3), dims=6, seed=0):
    rng = np.random.RandomState(seed)
    y = np.arange(n) % 3
    X = rng.normal(size=(n, *grid, dims)).astype(np.float32)
    X[..., 0] += 3 * y[:, None, None]
    return X, y


@pytest.fixture(scope="module")
def fitted():
    X, y = data()
    return QPMClassifier(**TINY).fit(X, y), X, y


def test_unusual_but_valid_arrays_give_identical_predictions(fitted, tmp_path):
    clf, X, _ = fitted
    expected = clf.decision_function(X)
    wide = np.zeros((X.shape[0], X.shape[1], X.shape[2], 2 * X.shape[3]), np.float32)
    wide[..., ::2] = X
    non_contiguous = wide[..., ::2]
    assert not non_contiguous.flags.c_contiguous
    read_only = X.copy()
    read_only.flags.writeable = False
    memmap = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=X.shape)
    memmap[:] = X
    for variant in (non_contiguous, read_only, memmap, X.astype(np.float64), X.tolist()):
        np.testing.assert_allclose(clf.decision_function(variant), expected, rtol=1e-5, atol=1e-5)


def test_string_and_float_labels():
    X, y = data()
    names = np.array(["sparrow", "wren", "crow"])[y]
    clf = QPMClassifier(**TINY).fit(X, names)
    assert set(clf.predict(X)) <= set(names)
    clf = QPMClassifier(**TINY).fit(X, y.astype(float) + 1.0)
    assert set(clf.predict(X)) <= {1.0, 2.0, 3.0}
    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        QPMClassifier(**TINY).fit(X, y + 0.5)


@pytest.mark.parametrize("scale", [1e-20, 1e12, 1e30])
def test_extreme_scales_give_finite_outputs(scale):
    X, y = data()
    clf = QPMClassifier(**TINY).fit(X * scale, y)
    proba = clf.predict_proba(X * scale)
    assert np.all(np.isfinite(proba))
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)


def test_constant_embeddings_give_finite_outputs():
    X, y = data()
    clf = QPMClassifier(**TINY).fit(np.ones_like(X), y)
    assert np.all(np.isfinite(clf.predict_proba(np.ones_like(X))))
    assert np.all(np.isfinite(clf.explain(np.ones_like(X[:2])).contributions))


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (np.full((24, 3, 3, 6), np.nan, np.float32), ValueError, "NaN"),
        (np.full((24, 3, 3, 6), np.inf, np.float32), ValueError, "infinity"),
        (np.zeros((24,)), ValueError, "1-D array of 24 values"),
        (np.zeros((24, 2, 2, 2, 6)), ValueError, "patch grid"),
        (np.zeros((0, 3, 3, 6)), ValueError, "0 sample"),
        (np.array([["a", "b"]] * 24), TypeError, "file paths or strings"),
    ],
)
def test_bad_X_is_rejected_by_fit(bad, error, match):
    _, y = data()
    with pytest.raises(error, match=match):
        QPMClassifier(**TINY).fit(bad, y[: max(len(bad), 1)] if len(bad) else y[:0])


def test_predict_errors(fitted):
    clf, X, _ = fitted
    with pytest.raises(NotFittedError):
        QPMClassifier().predict(X)
    with pytest.raises(ValueError, match="X has 5 features, but QPMClassifier is expecting 6"):
        clf.predict(X[..., :5])
    with pytest.raises(ValueError, match="NaN"):
        clf.predict(np.where(X > 2, np.nan, X))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 12),
    shape=st.sampled_from([(), (1,), (2, 2), (4,), (3, 2)]),
    dims=st.integers(1, 4),
    dtype=st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.float16, bool]),
    fill=st.sampled_from(["normal", "zeros", "huge", "nan", "tiny"]),
    n_classes=st.integers(1, 4),
)
def test_fit_predict_fuzz(n, shape, dims, dtype, fill, n_classes):
    rng = np.random.RandomState(n * 7 + dims)
    values = {
        "normal": rng.normal(size=(n, *shape, dims)),
        "zeros": np.zeros((n, *shape, dims)),
        "huge": rng.normal(size=(n, *shape, dims)) * 1e25,
        "nan": np.where(rng.rand(n, *shape, dims) > 0.5, np.nan, 1.0),
        "tiny": rng.normal(size=(n, *shape, dims)) * 1e-30,
    }[fill]
    with np.errstate(invalid="ignore", over="ignore"):
        X = values.astype(dtype)
    y = np.arange(n) % n_classes
    params = dict(TINY, n_features=6, n_selected=4, n_per_class=2)
    try:
        clf = QPMClassifier(**params).fit(X, y)
    except (ValueError, TypeError):
        return  # a clean, typed refusal is an acceptable answer
    proba = clf.predict_proba(X)
    assert proba.shape == (n, len(np.unique(y)))
    assert np.all(np.isfinite(proba))
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-4)
    assert set(clf.predict(X)) <= set(y)


def test_float16_memory_map_is_used_without_a_copy(fitted, tmp_path):
    from qpm_sklearn._stages import check_tokens

    clf, X, y = fitted
    memmap = np.lib.format.open_memmap(tmp_path / "x16.npy", mode="w+", dtype=np.float16, shape=X.shape)
    memmap[:] = X
    memmap.flush()
    read_only = np.load(tmp_path / "x16.npy", mmap_mode="r")
    tokens, grid = check_tokens(read_only, n_features_in=clf.n_features_in_)
    assert tokens.dtype == np.float16 and grid == X.shape[1:3]
    assert np.shares_memory(tokens, read_only), "the cache's memory map must not be copied"
    # float16 tokens give exactly what their float32 values give
    np.testing.assert_array_equal(clf.decision_function(read_only), clf.decision_function(read_only.astype(np.float32)))
    refit = QPMClassifier(**TINY).fit(read_only, y)
    np.testing.assert_array_equal(
        refit.decision_function(X), QPMClassifier(**TINY).fit(read_only.astype(np.float32), y).decision_function(X)
    )


def test_float64_beyond_float32_range_is_refused():
    X, y = data()
    with pytest.raises(ValueError, match="float32 range"):
        QPMClassifier(**TINY).fit(X.astype(np.float64) * 1e300, y)


# ------------------------------------------------------------------ what is not an embedding
def _pil_images(n):
    from PIL import Image

    return [Image.new("RGB", (56, 56), color=(i, 0, 0)) for i in range(n)]


@pytest.mark.parametrize(
    "make_X, error, match",
    [
        (_pil_images, TypeError, "list of PIL images.*Dinov2Embedder"),
        (lambda n: [f"photos/{i}.jpg" for i in range(n)], TypeError, "file paths.*Dinov2Embedder"),
        (lambda n: np.zeros((n, 56, 56, 3), np.uint8), ValueError, "raw pixel images.*Dinov2Embedder"),
        (lambda n: [np.zeros((56, 56, 3), np.uint8)] * n, ValueError, "raw pixel images.*Dinov2Embedder"),
        (lambda n: np.zeros((n, 384, 8, 8), np.float32), ValueError, "channels-first.*transpose\\(0, 2, 3, 1\\)"),
        (lambda n: np.zeros((n * 4,), np.float32), ValueError, "1-D array of 96 values.*Reshape your data: X.reshape\\(1, -1\\)"),
    ],
)
def test_what_is_not_an_embedding_is_refused_by_fit(make_X, error, match):
    _, y = data()
    with pytest.raises(error, match=match) as caught:
        QPMClassifier(**TINY).fit(make_X(len(y)), y)
    assert len(str(caught.value)) < 400  # a short message, no dump of the values


def test_one_sample_without_its_batch_axis_is_refused_by_every_inference_method():
    X, y = data(grid=(4, 4), dims=6)
    clf = QPMClassifier(**TINY).fit(X, y)
    methods = (clf.predict, clf.predict_proba, clf.predict_log_proba, clf.decision_function, clf.explain,
               clf.feature_maps, clf.pooled_features)  # fmt: skip
    for method in methods:
        # X[0] is (4, 4, 6): read naively as 4 samples of 4 tokens it gives 4 answers for one image.
        with pytest.raises(ValueError, match="without its batch axis.*X\\[None\\]"):
            method(X[0])
        with pytest.raises(TypeError, match="PIL"):
            method(_pil_images(2))
        with pytest.raises(ValueError, match="1-D array"):
            method(X[0, 0, 0])
    np.testing.assert_array_equal(clf.predict(X[0][None]), clf.predict(X[:1]))
    # the escape hatch named in the message: n samples of n tokens as a grid
    tokens = X.reshape(len(X), 16, 6)[:16]
    assert clf.predict(tokens.reshape(16, 4, 4, 6)).shape == (16,)


def test_a_narrow_grid_passes_with_its_sides_swapped_and_predicts_the_same():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(24, 16, 2, 3)).astype(np.float32)  # 16 x 2 grid of 3-d tokens: looks channels-first
    y = np.arange(24) % 3
    X[..., 0] += 3 * y[:, None, None]
    with pytest.raises(ValueError, match="channels-first"):
        QPMClassifier(**TINY).fit(X, y)
    swapped = X.transpose(0, 2, 1, 3)
    clf = QPMClassifier(**TINY).fit(swapped, y)
    flat = np.ascontiguousarray(swapped).reshape(24, 32, 3)
    # a token-wise model with mean pooling: the order of the tokens does not matter
    np.testing.assert_allclose(clf.predict_proba(swapped), clf.predict_proba(flat[:, ::-1].reshape(24, 2, 16, 3)),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_uint8_embeddings_pass_when_cast_to_float():
    X, y = data()
    as_bytes = np.clip(X * 10 + 128, 0, 255).astype(np.uint8)
    with pytest.raises(ValueError, match="astype"):
        QPMClassifier(**TINY).fit(as_bytes, y)
    assert QPMClassifier(**TINY).fit(as_bytes.astype(np.float32), y).predict(as_bytes.astype(np.float32)).shape == (24,)
