"""Edges of the reliability rules: file permissions, sample weights, explanation indexing,
metric sizes, unfitted models in the figure and metric functions.

Every expectation comes from an independent reference: the mode ``np.save`` gives under the
same umask, the same indexing applied to the underlying numpy arrays, a hand-built model.
"""

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
