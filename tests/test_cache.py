"""The embedding cache never serves a wrong row: corruption of every file, concurrent and sharded writers.

The rows are a known function of the row id (exact float16 values), so "no wrong row" is an
exact comparison; the embedder-level tests compare with an uncached transform.
"""

import json
import os
import subprocess
import sys
import textwrap
import threading
import warnings

import numpy as np
import pytest
from PIL import Image

from qpm_sklearn._cache import EmbeddingCache, block_digest

N, ROW_SHAPE, SETTINGS = 23, (2, 3), {"model": "test", "image_size": 28}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _keys(n=N, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 20), dtype=np.uint8)


def _truth(rows, offset=0.0):
    """The exact float16 embedding of each row id."""
    rows = np.asarray(rows, dtype=np.float64)[:, None, None]
    return (np.sin(rows * 0.37 + np.arange(6).reshape(ROW_SHAPE) + offset) * 100).astype(np.float16)


class Computer:
    """The ``compute`` of :meth:`EmbeddingCache.fill`: stores the true rows in batches, counts them."""

    def __init__(self, cache, batch=5):
        self.cache, self.batch, self.rows = cache, batch, []

    def __call__(self, rows):
        self.rows += list(rows)
        for i in range(0, len(rows), self.batch):
            self.cache.store(rows[i : i + self.batch], _truth(rows[i : i + self.batch]))


def _open(tmp_path, keys=None, **kwargs):
    return EmbeddingCache(tmp_path, SETTINGS, _keys() if keys is None else keys, ROW_SHAPE, **kwargs)


def _filled(tmp_path):
    cache = _open(tmp_path)
    cache.fill(Computer(cache))
    return cache


def _refill_without_warnings(tmp_path):
    cache = _open(tmp_path)
    computer = Computer(cache)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = cache.fill(computer)
    return result, computer.rows


def test_rows_round_trip_exactly_and_are_computed_once(tmp_path):
    cache = _filled(tmp_path)
    result = cache.result()
    assert isinstance(result, np.memmap) and not result.flags.writeable
    np.testing.assert_array_equal(result, _truth(np.arange(N)))
    again, recomputed = _refill_without_warnings(tmp_path)
    assert recomputed == [] and np.array_equal(again, result)
    # the committed blocks are what the module docstring says: digest of keys, then rows
    log = (cache.folder / "commits.log").read_text().splitlines()
    first = json.loads(log[0])
    assert first["sha256"] == block_digest(_keys()[first["start"] : first["stop"]], _truth(range(first["start"], first["stop"])))


def test_missing_and_store_take_any_row_ranges(tmp_path):
    cache = _open(tmp_path)
    cache.store([9, 3, 4], _truth([9, 3, 4]))  # any order, not contiguous
    np.testing.assert_array_equal(cache.missing(0, 10), [0, 1, 2, 5, 6, 7, 8])
    np.testing.assert_array_equal(cache.missing(8, 12), [8, 10, 11])
    with pytest.raises(RuntimeError, match="20 of 23 rows are missing"):
        cache.result()
    cache.store(cache.missing(), _truth(cache.missing()))
    np.testing.assert_array_equal(cache.result(), _truth(np.arange(N)))
    with pytest.raises(ValueError, match="distinct ids"):
        cache.store([1, 1], _truth([1, 1]))
    with pytest.raises(ValueError, match="do not match"):
        cache.store([1], _truth([1, 2]))


def test_first_commit_of_a_row_wins(tmp_path):
    cache = _open(tmp_path)
    cache.store([0, 1, 2], _truth([0, 1, 2]))
    cache.store([1, 2, 3], _truth([1, 2, 3], offset=5.0))  # rows 1, 2 are committed: left alone
    cache.store(cache.missing(), _truth(cache.missing()))
    expected = _truth(np.arange(N))
    expected[3] = _truth([3], offset=5.0)[0]
    np.testing.assert_array_equal(cache.result(), expected)


def _header_length(path, n=N, row_bytes=12):
    return path.stat().st_size - n * row_bytes


def test_truncated_data_file_is_recreated_not_extended_with_zeros(tmp_path):
    data = _filled(tmp_path).folder / "embeddings.npy"
    size = data.stat().st_size
    with open(data, "r+b") as handle:
        handle.truncate(size - 7 * 12)  # the last 7 rows cut off, as by a full disk
    with pytest.warns(RuntimeWarning, match="embeddings.npy is damaged"):
        cache = _open(tmp_path)
        result = cache.fill(Computer(cache))
    np.testing.assert_array_equal(result, _truth(np.arange(N)))
    assert data.stat().st_size == size


@pytest.mark.parametrize("where", ["first row", "middle", "last byte"])
def test_overwritten_bytes_are_recomputed_with_a_warning(tmp_path, where):
    data = _filled(tmp_path).folder / "embeddings.npy"
    header = _header_length(data)
    position = {"first row": header, "middle": header + 11 * 12 + 5, "last byte": data.stat().st_size - 1}[where]
    with open(data, "r+b") as handle:
        handle.seek(position)
        handle.write(b"\x7b")
    cache = _open(tmp_path)
    computer = Computer(cache)
    with pytest.warns(RuntimeWarning, match=r"1 committed blocks \([35] rows\) failed verification"):
        result = cache.fill(computer)
    np.testing.assert_array_equal(result, _truth(np.arange(N)))
    damaged_row = (position - header) // 12
    assert damaged_row in computer.rows and len(computer.rows) <= 5  # only the damaged block
    _, recomputed = _refill_without_warnings(tmp_path)  # the bad record was dropped
    assert recomputed == []


def _edit_log(folder, edit):
    log = folder / "commits.log"
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(edit(lines)))


def _shift_range(lines):
    record = json.loads(lines[1])
    record["stop"] -= 1  # a plausible record, but its digest covers other bytes
    return [lines[0], (json.dumps(record) + "\n").encode(), *lines[2:]]


def _swap_digests(lines):
    a, b = json.loads(lines[0]), json.loads(lines[1])
    a["sha256"], b["sha256"] = b["sha256"], a["sha256"]
    return [(json.dumps(a) + "\n").encode(), (json.dumps(b) + "\n").encode(), *lines[2:]]


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda lines: [b"{not json\n", *lines[1:]], id="garbage-line"),
        pytest.param(lambda lines: [lines[0][:-9] + b"\n", *lines[1:]], id="cut-line"),
        pytest.param(lambda lines: [b'["start", 0]\n', b"\x00\xff\n", *lines], id="wrong-json-type"),
        pytest.param(_shift_range, id="shifted-range"),
        pytest.param(_swap_digests, id="swapped-digests"),
        pytest.param(lambda lines: [*lines, b'{"start": 0, "stop": 23, "sha256": "' + b"0" * 64 + b'"}\n'], id="forged"),
    ],
)
def test_corrupted_commit_log_never_serves_a_wrong_row(tmp_path, edit):
    folder = _filled(tmp_path).folder
    _edit_log(folder, edit)
    cache = _open(tmp_path)
    with pytest.warns(RuntimeWarning, match="failed verification"):
        result = cache.fill(Computer(cache))
    np.testing.assert_array_equal(result, _truth(np.arange(N)))
    _, recomputed = _refill_without_warnings(tmp_path)
    assert recomputed == []


def test_torn_last_line_is_ignored_and_not_glued_to_the_next(tmp_path):
    cache = _open(tmp_path)
    cache.store([0, 1], _truth([0, 1]))
    with open(cache.folder / "commits.log", "ab") as handle:
        handle.write(b'{"start": 2, "stop": 4, "bla')  # a writer died mid-line
    cache = _open(tmp_path)
    np.testing.assert_array_equal(cache.missing(0, 5), [2, 3, 4])
    cache.store(cache.missing(), _truth(cache.missing()))
    with pytest.warns(RuntimeWarning, match="1 log lines are unreadable"):
        result = cache.result()
    np.testing.assert_array_equal(result, _truth(np.arange(N)))


@pytest.mark.parametrize("name", ["embeddings.npy", "commits.log", "keys.npy", "lock"])
def test_a_deleted_file_costs_recomputation_only(tmp_path, name):
    folder = _filled(tmp_path).folder
    (folder / name).unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the data file's loss is reported
        cache = _open(tmp_path)
        computer = Computer(cache)
        result = cache.fill(computer)
    np.testing.assert_array_equal(result, _truth(np.arange(N)))
    assert len(computer.rows) == (N if name in ("embeddings.npy", "commits.log") else 0)
    assert np.array_equal(np.load(folder / "keys.npy"), _keys())


def test_data_file_with_a_wrong_header_is_recreated(tmp_path):
    folder = _filled(tmp_path).folder
    np.save(folder / "embeddings.npy", np.zeros((N, 3, 2), np.float16))  # same size, other shape
    with pytest.warns(RuntimeWarning, match=r"header says shape \(23, 3, 2\)"):
        cache = _open(tmp_path)
        result = cache.fill(Computer(cache))
    np.testing.assert_array_equal(result, _truth(np.arange(N)))


def test_siblings_lend_only_verified_blocks(tmp_path):
    keys = _keys()
    data = _filled(tmp_path).folder / "embeddings.npy"
    with open(data, "r+b") as handle:  # damage row 17, in the block of rows 15-20
        handle.seek(_header_length(data) + 17 * 12)
        handle.write(b"\xff\xff")
    subset = [17, 2, 4, 5]
    other = EmbeddingCache(tmp_path, SETTINGS, keys[subset], ROW_SHAPE)
    np.testing.assert_array_equal(other.missing(), [0])  # the others were copied
    computed = []

    def compute(rows):  # the true value of a row is that of its image in the first collection
        computed.extend(rows)
        other.store(rows, _truth(np.asarray(subset)[rows]))

    np.testing.assert_array_equal(other.fill(compute), _truth(subset))
    assert computed == [0]


def test_siblings_values_are_the_true_rows(tmp_path):
    _filled(tmp_path)
    subset = [4, 17, 2, 4]  # the same image twice
    sibling = EmbeddingCache(tmp_path, SETTINGS, _keys()[subset], ROW_SHAPE)
    np.testing.assert_array_equal(sibling.result(), _truth(subset))


_WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_cache import _keys, _truth, ROW_SHAPE, SETTINGS
    from qpm_sklearn._cache import EmbeddingCache

    start, stop, step, n = (int(v) for v in sys.argv[1:5])
    cache = EmbeddingCache({folder!r}, SETTINGS, _keys(n), ROW_SHAPE, copy_from_siblings=False)
    rows = np.arange(start, stop)[::step]
    for i in range(0, len(rows), 3):
        batch = np.sort(rows[i : i + 3])
        cache.store(batch, _truth(batch))
        time.sleep(0.002)
    """
)


def _run_writers(tmp_path, shards, n):
    script = _WRITER.format(tests=os.path.join(ROOT, "tests"), folder=str(tmp_path / "cache"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    processes = [
        subprocess.Popen([sys.executable, "-c", script, *map(str, shard), str(n)], env=env, stderr=subprocess.PIPE)
        for shard in shards
    ]
    for process in processes:
        _, error = process.communicate(timeout=120)
        assert process.returncode == 0, error.decode()


@pytest.mark.parametrize(
    "shards",
    [
        pytest.param([(0, 200, 1), (200, 400, 1)], id="disjoint-shards"),
        pytest.param([(0, 400, 1), (0, 400, -1)], id="same-rows-opposite-order"),
    ],
)
def test_concurrent_writer_processes_commit_a_complete_verified_result(tmp_path, shards):
    n = 400
    _run_writers(tmp_path, shards, n)
    cache = EmbeddingCache(tmp_path / "cache", SETTINGS, _keys(n), ROW_SHAPE)
    assert len(cache.missing()) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(cache.result(), _truth(np.arange(n)))
    records = [json.loads(line) for line in (cache.folder / "commits.log").read_text().splitlines()]
    covered = np.zeros(n, int)
    for record in records:
        covered[record["start"] : record["stop"]] += 1
    assert np.all(covered == 1)  # every row committed exactly once: the first writer won
    assert not list(cache.folder.glob("*.tmp"))


# ------------------------------------------------------------------------------------------------
# Through the embedder: compared with an uncached transform
# ------------------------------------------------------------------------------------------------

SIZE = 28


def _embedder(model, **params):
    from qpm_sklearn import Dinov2Embedder

    return Dinov2Embedder(model, device="cpu", image_size=SIZE, output="cls", batch_size=2, **params)


def _pngs(folder, n):
    images = np.random.default_rng(1).integers(0, 256, (n, 30, 41, 3), dtype=np.uint8)
    paths = [folder / f"{i}.png" for i in range(n)]
    for path, image in zip(paths, images):
        Image.fromarray(image).save(path)
    return paths


def test_embedder_recomputes_a_corrupted_block(tiny_backbone, tmp_path):
    paths = _pngs(tmp_path, 5)
    reference = _embedder(tiny_backbone).transform(paths)
    _embedder(tiny_backbone, embedding_cache=tmp_path / "cache").transform(paths)
    (data,) = (tmp_path / "cache").glob("*/*/embeddings.npy")
    with open(data, "r+b") as handle:
        handle.seek(_header_length(data, 5, reference.shape[1] * 2) + 2 * reference.shape[1] * 2)  # row 2
        handle.write(np.full(8, 1000, np.float16).tobytes())
    with pytest.warns(RuntimeWarning, match="failed verification"):
        again = _embedder(tiny_backbone, embedding_cache=tmp_path / "cache").transform(paths)
    np.testing.assert_allclose(again, reference, rtol=2e-3, atol=2e-3)


@pytest.mark.slow  # two interpreters importing torch + transformers: about a minute on 2 cores
def test_two_embedder_processes_share_one_cache(tiny_backbone, tmp_path):
    paths = _pngs(tmp_path, 12)
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from qpm_sklearn import Dinov2Embedder
        embedder = Dinov2Embedder({tiny_backbone!r}, device="cpu", image_size={SIZE}, output="cls", batch_size=1,
                                  embedding_cache={str(tmp_path / "cache")!r}, n_jobs=1)
        np.save(sys.argv[1], embedder.transform(sys.argv[2:]))
        """
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    outputs = [tmp_path / f"out{i}.npy" for i in range(2)]
    ordered = [list(map(str, paths)), list(map(str, paths))]
    processes = [subprocess.Popen([sys.executable, "-c", script, str(out), *files], env=env, stderr=subprocess.PIPE)
                 for out, files in zip(outputs, ordered)]  # fmt: skip
    for process in processes:
        _, error = process.communicate(timeout=300)
        assert process.returncode == 0, error.decode()
    reference = _embedder(tiny_backbone).transform(paths)
    for out in outputs:
        np.testing.assert_allclose(np.load(out), reference, rtol=2e-3, atol=2e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        cached = _embedder(tiny_backbone, embedding_cache=tmp_path / "cache").transform(paths)
    np.testing.assert_allclose(cached, reference, rtol=2e-3, atol=2e-3)


def test_a_writer_waits_for_the_lock_then_names_it(tmp_path, monkeypatch):
    from filelock import FileLock, Timeout

    from qpm_sklearn import _cache

    cache = _open(tmp_path)
    monkeypatch.setattr(_cache, "LOCK_TIMEOUT", 0.2)
    with FileLock(cache.folder / "lock", thread_local=False):  # another writer, stuck inside
        errors = []
        thread = threading.Thread(target=lambda: _store_or_record(tmp_path, errors))
        thread.start()
        thread.join(10)
    assert len(errors) == 1 and isinstance(errors[0], Timeout) and "lock" in str(errors[0])
    assert len(_open(tmp_path).missing()) == N  # nothing was written


def _store_or_record(tmp_path, errors):
    try:
        _open(tmp_path).store([0], _truth([0]))
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        errors.append(exc)


# A writer that commits ``batches`` blocks of 3 rows, then stops inside the next store at its
# ``phase``-th fsync (1: the rows are written to the data file but no record says so; 2: the
# record is appended but not yet synced), tells the test on stdout and waits on stdin, which
# stays open until the test has killed it: the kill lands at that exact point, with no timing.
_STOPPED_WRITER = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {tests!r})
    from test_cache import _keys, _truth, ROW_SHAPE, SETTINGS
    from qpm_sklearn._cache import EmbeddingCache

    n, batches, phase = (int(v) for v in sys.argv[1:4])
    cache = EmbeddingCache({folder!r}, SETTINGS, _keys(n), ROW_SHAPE, copy_from_siblings=False)
    for start in range(0, 3 * batches, 3):
        cache.store(list(range(start, start + 3)), _truth(range(start, start + 3)))

    fsync, calls = os.fsync, []

    def stop_at_phase(fd):
        calls.append(fd)
        if len(calls) == phase:
            sys.stdout.write("stopped\\n")
            sys.stdout.flush()
            sys.stdin.read()  # returns only when the test closes it, after the kill
        fsync(fd)

    os.fsync = stop_at_phase
    rows = list(range(3 * batches, 3 * batches + 3))
    cache.store(rows, _truth(rows))
    sys.stdout.write("finished\\n")
    """
)


@pytest.mark.parametrize(("phase", "committed"), [(1, 15), (2, 18)], ids=["rows-written-unrecorded", "record-unsynced"])
def test_a_writer_killed_mid_store_leaves_only_verified_rows(tmp_path, phase, committed):
    n, batches = 60, 5
    script = _STOPPED_WRITER.format(tests=os.path.join(ROOT, "tests"), folder=str(tmp_path / "cache"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(n), str(batches), str(phase)],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    signal = process.stdout.readline()  # blocks until the writer is inside its store
    process.kill()  # SIGKILL: no cleanup of any kind
    _, error = process.communicate()
    assert signal == b"stopped\n", error.decode()
    cache = EmbeddingCache(tmp_path / "cache", SETTINGS, _keys(n), ROW_SHAPE)
    # exactly the rows whose record was written count as committed; the rows the killed
    # store wrote without a record are missing, whatever bytes they left in the data file
    np.testing.assert_array_equal(cache.missing(), np.arange(committed, n))
    computer = Computer(cache, batch=500)
    np.testing.assert_array_equal(cache.fill(computer), _truth(np.arange(n)))
    assert sorted(computer.rows) == list(range(committed, n))  # the committed rows were kept, not recomputed
