"""QPMClassifier takes torch tensors and chunked arrays (zarr, dask) as it takes numpy arrays."""

import numpy as np
import pytest
import torch

from qpm_sklearn import _stages
from qpm_sklearn._stages import as_token_array, check_tokens
from qpm_sklearn.testing import fitted_toy_classifier


@pytest.fixture(scope="module")
def toy():
    return fitted_toy_classifier()


def _dask(X, rows=7):
    da = pytest.importorskip("dask.array")
    return da.from_array(X, chunks=(rows, *X.shape[1:]))


def _zarr(X, folder):
    zarr = pytest.importorskip("zarr")
    array = zarr.create_array(str(folder / "tokens.zarr"), shape=X.shape, dtype=X.dtype, chunks=(7, *X.shape[1:]))
    array[:] = X
    return array


def test_predictions_from_tensors_and_chunked_arrays_equal_numpy(toy, tmp_path):
    clf, X, _ = toy
    expected = clf.predict_proba(X)
    for tokens in (torch.from_numpy(X), torch.from_numpy(X).to(torch.float64), _dask(X), _zarr(X, tmp_path)):
        np.testing.assert_allclose(clf.predict_proba(tokens), expected, rtol=1e-6, atol=1e-7)


def test_fit_on_a_dask_array_equals_fit_on_numpy(toy):
    clf, X, y = toy
    from sklearn.base import clone

    refit = clone(clf).fit(_dask(X), y)
    np.testing.assert_array_equal(refit.selected_features_, clf.selected_features_)
    np.testing.assert_allclose(refit.predict_proba(X), clf.predict_proba(X), rtol=1e-5, atol=1e-6)


def test_chunked_arrays_are_copied_block_by_block_into_a_memory_map(monkeypatch, tmp_path):
    X = np.random.default_rng(0).normal(size=(10, 2, 2, 3))  # float64: stored as float32
    reads = []

    class Chunked:  # the duck type: chunks, shape, dtype and row slicing
        chunks, shape, dtype = ((2,) * 5, (2,), (2,), (3,)), X.shape, X.dtype

        def __getitem__(self, rows):
            reads.append(rows)
            return X[rows]

    row_bytes = 2 * 2 * 3 * 4
    monkeypatch.setattr(_stages, "_SPILL_BLOCK", 4 * row_bytes)
    array = as_token_array(Chunked())
    assert isinstance(array, np.memmap) and array.dtype == np.float32
    assert reads == [slice(0, 4), slice(4, 8), slice(8, 12)]  # never the whole array at once
    np.testing.assert_array_equal(array, X.astype(np.float32))
    tokens, grid = check_tokens(array)
    assert grid == (2, 2) and np.shares_memory(tokens, array)  # streamed as a memmap is, not copied
