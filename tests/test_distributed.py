"""qpm_sklearn.distributed and searches on Dask: a 2-process LocalCluster on loopback only.

Faults are injected on the workers with a Dask worker plugin that patches one function in
every worker process (also in the ones Dask restarts) and counts what ran in a log file,
so the counts come from the workers themselves, not from the code under test.
"""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
import cloudpickle  # noqa: E402  (a dependency of distributed)
import joblib  # noqa: E402
from sklearn.model_selection import GridSearchCV, ShuffleSplit  # noqa: E402

from qpm_sklearn import Dinov2Embedder  # noqa: E402
from qpm_sklearn.distributed import embed  # noqa: E402

# The plugin's closures run in the workers: send them by value, not as an import of this file.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

SMALL = dict(
    n_features=16, n_selected=8, n_per_class=2, hidden_size=32, n_layers=2,
    dense_epochs=8, sparse_epochs=4, dense_batch_size=16, sparse_batch_size=16, dense_lr=1e-2,
)  # fmt: skip
BATCH, SHARD, N_IMAGES = 2, 4, 12  # three shards of two batches each


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0", host="127.0.0.1"
    ) as cluster, distributed.Client(cluster) as client:  # fmt: skip
        client.run(_import_torch_and_transformers)  # both workers at once, not one after the other
        yield client


def _import_torch_and_transformers():
    import transformers  # noqa: F401

    import qpm_sklearn.classifier  # noqa: F401
    import qpm_sklearn.embedding  # noqa: F401


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    pixels = np.random.default_rng(0).integers(0, 256, (N_IMAGES, 30, 41, 3), dtype=np.uint8)
    paths = [str(folder / f"{i:02d}.png") for i in range(N_IMAGES)]
    for path, image in zip(paths, pixels):
        Image.fromarray(image).save(path)
    return paths


def _embedder(model):
    return Dinov2Embedder(model, image_size=28, device="cpu", batch_size=BATCH, output_dtype="float16", n_jobs=1)


def _single_process(embedder, images, embedding_cache):
    return embedder.set_params(embedding_cache=embedding_cache).transform(images)


@pytest.fixture(scope="module")
def reference(client, tiny_backbone, image_files, tmp_path_factory):
    """The single-process cached transform, run in a worker so that its thread count is the workers'."""
    embedding_cache = str(tmp_path_factory.mktemp("reference_cache"))
    return np.asarray(client.submit(_single_process, _embedder(tiny_backbone), image_files, embedding_cache).result())


class PatchOnWorkers(distributed.WorkerPlugin):
    """Replace ``owner.attribute`` by ``wrap(original, log)`` in every worker process, undo on teardown."""

    def __init__(self, owner, attribute, wrap, log):
        self.owner, self.attribute, self.wrap, self.log = owner, attribute, wrap, log

    def setup(self, worker):
        import importlib

        try:  # a module ...
            self.target = importlib.import_module(self.owner)
        except ImportError:  # ... or a class in one
            module, _, name = self.owner.rpartition(".")
            self.target = getattr(importlib.import_module(module), name)
        self.original = getattr(self.target, self.attribute)
        setattr(self.target, self.attribute, self.wrap(self.original, self.log))

    def teardown(self, worker):
        setattr(self.target, self.attribute, self.original)


class patched:
    """Context manager: a PatchOnWorkers plugin registered for the duration of a block."""

    def __init__(self, client, owner, attribute, wrap, log):
        self.client, self.plugin = client, PatchOnWorkers(owner, attribute, wrap, log)
        self.name = f"patch-{attribute}-{id(self)}"

    def __enter__(self):
        self.client.register_plugin(self.plugin, name=self.name)

    def __exit__(self, *exc):
        self.client.unregister_worker_plugin(self.name)


def _lines(log):
    return Path(log).read_text().split() if Path(log).exists() else []


def _first_time(marker) -> bool:
    """True in exactly one process, the first to ask (an exclusive create of ``marker``)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def count_transforms(original, log):
    """Dinov2Embedder.transform that logs the number of images of every call."""

    def transform(embedder, X):
        result = original(embedder, X)
        with open(log, "a") as handle:
            handle.write(f"{len(X)}\n")
        return result

    return transform


# ----------------------------------------------------------------------------------------
# Distributed embedding
# ----------------------------------------------------------------------------------------


def test_embedding_equals_single_process_transform(client, tiny_backbone, image_files, reference, tmp_path):
    log = str(tmp_path / "log")
    with patched(client, "qpm_sklearn.embedding.Dinov2Embedder", "transform", count_transforms, log):
        result = embed(_embedder(tiny_backbone), image_files, client=client, embedding_cache=tmp_path / "c", shard_size=SHARD)
        assert sorted(_lines(log)) == ["4", "4", "4"]  # one task per shard
        again = embed(_embedder(tiny_backbone), image_files, client=client, embedding_cache=tmp_path / "c", shard_size=SHARD)
        assert len(_lines(log)) == 3, "a finished collection was recomputed"
    # shards of whole batches: every forward pass saw the images a single process gives it
    assert isinstance(result, np.memmap) and result.dtype == np.float16 and not result.flags.writeable
    np.testing.assert_array_equal(result, reference)
    np.testing.assert_array_equal(again, reference)
    # the float32 output is the same numbers, like transform's
    as_float32 = embed(
        _embedder(tiny_backbone).set_params(output_dtype="float32"), image_files, client=client,
        embedding_cache=tmp_path / "c", shard_size=SHARD,
    )  # fmt: skip
    assert as_float32.dtype == np.float32
    np.testing.assert_array_equal(as_float32, reference.astype(np.float32))
    # the single-process transform finds the same cache entry complete
    np.testing.assert_array_equal(_single_process(_embedder(tiny_backbone), image_files, str(tmp_path / "c")), reference)


def fail_on_image(name):
    def wrap(original, log):
        def transform(embedder, X):
            if any(str(item).endswith(name) for item in X):
                raise OSError(f"injected failure on {name}")
            result = original(embedder, X)
            with open(log, "a") as handle:
                handle.write(f"{len(X)}\n")
            return result

        return transform

    return wrap


def test_interrupted_run_resumes_without_recomputing_finished_shards(
    client, tiny_backbone, image_files, reference, tmp_path, capfd
):
    log, embedding_cache = str(tmp_path / "log"), tmp_path / "c"
    wrap = fail_on_image("05.png")  # in the second shard
    with patched(client, "qpm_sklearn.embedding.Dinov2Embedder", "transform", wrap, log):
        with pytest.raises(RuntimeError, match="1 of 3 shards failed.*injected failure on 05.png"):
            embed(_embedder(tiny_backbone), image_files, client=client, embedding_cache=embedding_cache, shard_size=SHARD, retries=1)
    assert sorted(_lines(log)) == ["4", "4"]  # the other two shards finished and were kept
    with patched(client, "qpm_sklearn.embedding.Dinov2Embedder", "transform", count_transforms, log):
        capfd.readouterr()
        result = embed(
            _embedder(tiny_backbone), image_files, client=client, embedding_cache=embedding_cache, shard_size=SHARD, verbose=True
        )
    assert "Embedding shards" in capfd.readouterr().err  # the driver's progress bar
    assert sorted(_lines(log)) == ["4", "4", "4"]  # only the failed shard ran again
    np.testing.assert_array_equal(result, reference)


def test_bad_arguments_are_named(client, tiny_backbone, image_files, tmp_path):
    with pytest.raises(TypeError, match="client must be a distributed.Client"):
        embed(_embedder(tiny_backbone), image_files, client="tcp://127.0.0.1:8786", embedding_cache=tmp_path)
    with pytest.raises(ValueError, match=r"shard_size must be in \[1, inf\]; got 0"):
        embed(_embedder(tiny_backbone), image_files, client=client, embedding_cache=tmp_path, shard_size=0)
    with pytest.raises(TypeError, match="embedding_cache must be a path"):
        embed(_embedder(tiny_backbone), image_files, client=client, embedding_cache=None)


# ----------------------------------------------------------------------------------------
# Searches under joblib's dask backend
# ----------------------------------------------------------------------------------------


def _grid_data(n_per_class=12, n_classes=3, grid=4, dims=8, seed=0):
    """Patch grids where class c adds its own direction to one 2x2 window."""
    rng = np.random.RandomState(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = rng.normal(scale=0.5, size=(len(y), grid, grid, dims)).astype(np.float32)
    directions = rng.normal(size=(n_classes, dims)).astype(np.float32) * 2.0
    for i, c in enumerate(y):
        r, q = rng.randint(0, grid - 1, size=2)
        X[i, r : r + 2, q : q + 2] += directions[c]
    return X, y


def count_dense_trainings(original, log):
    def train_network(*args, **kwargs):
        if kwargs.get("desc") == "dense":
            with open(log, "a") as handle:
                handle.write(f"{os.getpid()}\n")
        return original(*args, **kwargs)

    return train_network


def _cached_dense_results(memory_dir) -> int:
    """joblib.Memory's stored results (one folder with an output.pkl per cached call)."""
    return len(list(Path(memory_dir).rglob("output.pkl")))


def test_grid_search_on_dask_matches_single_process_and_trains_the_dense_stage_once(
    client, tmp_path, monkeypatch
):
    import qpm_sklearn._stages as _stages
    from qpm_sklearn import QPMClassifier

    X, y = _grid_data()
    budgets = {"n_selected": [6, 8], "n_per_class": [1, 2]}
    # one split: the four candidates all need the same dense stage at the same time
    cv = list(ShuffleSplit(n_splits=1, test_size=0.25, random_state=0).split(X, y))
    search = GridSearchCV(QPMClassifier(**SMALL, random_state=0), budgets, cv=cv, scoring="neg_log_loss")
    single = search.fit(X, y)
    single_scores, single_best = single.cv_results_["mean_test_score"], single.best_params_
    single_proba = single.best_estimator_.predict_proba(X)

    log, memory_dir = str(tmp_path / "log"), tmp_path / "memory"
    original = _stages.train_network
    monkeypatch.setattr(_stages, "train_network", count_dense_trainings(original, str(tmp_path / "driver_log")))
    with patched(client, "qpm_sklearn._stages", "train_network", count_dense_trainings, log):
        with joblib.parallel_config(backend="dask"):
            on_dask = search.set_params(estimator__memory=str(memory_dir), n_jobs=-1).fit(X, y)
    driver_log = _lines(tmp_path / "driver_log")

    np.testing.assert_allclose(on_dask.cv_results_["mean_test_score"], single_scores, rtol=1e-4, atol=1e-5)
    assert on_dask.best_params_ == single_best
    np.testing.assert_allclose(on_dask.best_estimator_.predict_proba(X), single_proba, rtol=1e-4, atol=1e-5)
    # the workers trained the fold's dense stage once for all four candidates (the others
    # waited and loaded it); the refit on all rows trained its own, on the driver
    assert len(_lines(log)) == 1, f"the fold's dense stage was trained {len(_lines(log))} times"
    assert len(driver_log) == 1
    assert _cached_dense_results(memory_dir) == 2


# ----------------------------------------------------------------------------------------
# Last: a killed worker is restarted by Dask, and the new process starts cold
# ----------------------------------------------------------------------------------------


def die_after_writing_garbage(original, marker):
    """EmbeddingCache.store that, the first time on any worker, writes garbage and kills its process
    after the rows reach the data file and before their commit record does."""

    def store(cache, rows, values):
        if _first_time(marker):
            cache._append_records = lambda records: os._exit(1)
            values = np.full_like(values, 7.0)
        return original(cache, rows, values)

    return store


def test_worker_killed_mid_shard_leaves_no_corrupt_rows(client, tiny_backbone, image_files, reference, tmp_path):
    marker = str(tmp_path / "died")
    with patched(client, "qpm_sklearn._cache.EmbeddingCache", "store", die_after_writing_garbage, marker):
        result = embed(_embedder(tiny_backbone), image_files, client=client, embedding_cache=tmp_path / "c", shard_size=SHARD)
    assert Path(marker).exists(), "no worker died: the fault was not injected"
    client.wait_for_workers(2, timeout=120)  # Dask's nanny restarted the killed one
    np.testing.assert_array_equal(result, reference)
    assert not np.any(np.asarray(result) == 7.0)
