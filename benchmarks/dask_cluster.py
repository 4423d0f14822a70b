"""Dask on one machine: 1 vs 2 worker processes, and what a search sends to its workers.

1. Embedding: ``qpm_sklearn.distributed.embed`` of JPEG files with a random ViT-S/14
   (DINOv2-with-registers-small architecture) on a LocalCluster of 1 and of 2 worker
   processes (one thread each), beside a single-process ``transform`` on one thread.
   Every configuration is warmed up first (imports, model load) and then timed on a
   fresh cache, so the times are the embedding itself plus Dask's overhead.
2. Grid search: ``GridSearchCV`` over ``QPMClassifier`` budgets (``memory=`` on a
   shared folder, a fresh one per run) in one process and under
   ``joblib.parallel_config(backend="dask")`` on 1 and 2 workers.
3. Bytes: loopback traffic (``/proc/net/dev``) during that search under the dask
   backend with joblib's automatic scatter of large arguments (the default), with the
   scatter switched off (every task then carries X), and with X as a ``np.memmap``
   (Dask serialises a memmap by value, like any array): in copies of ``X.nbytes``.

Sections 1 and 2 time their configurations in turn, three rounds, and keep the best of each:
the machine is shared with other work, whose load changes by the minute. Read the ratios,
not the absolute times.
Writes ``benchmarks/results/dask_cluster-<cpu>.json``. (Not named distributed.py: run as a
script, that name would shadow the ``distributed`` package it measures.)

    python benchmarks/dask_cluster.py            # about 12 minutes on 2 busy cores
    python benchmarks/dask_cluster.py --quick    # smaller inputs, for a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import cpu_name, slug, write_jpegs  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SMALL = dict(
    n_features=32, hidden_size=64, n_layers=2, dense_epochs=10, sparse_epochs=5,
    dense_batch_size=32, sparse_batch_size=32, dense_lr=1e-2, random_state=0,
)  # fmt: skip
BUDGETS = {"n_selected": [8, 12], "n_per_class": [2, 3]}
SHARD = 16  # images per embedding task: one batch, so that 2 workers have shards to share


def loopback_bytes() -> int:
    """Bytes received on the loopback interface so far (all processes on this machine)."""
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == "lo":
            return int(counters.split()[0])
    raise RuntimeError("no loopback interface in /proc/net/dev")


@contextlib.contextmanager
def cluster(n_workers):
    from distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=n_workers, processes=True, threads_per_worker=1, dashboard_address=":0", host="127.0.0.1"
    ) as local, Client(local) as client:  # fmt: skip
        yield client


def timed(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


# ----------------------------------------------------------------------------------------
# 1. Embedding
# ----------------------------------------------------------------------------------------


def embedding_section(work, n_images, image_size, repeats):
    import torch

    from qpm_sklearn import Dinov2Embedder
    from qpm_sklearn.distributed import embed
    from qpm_sklearn.testing import save_random_backbone

    model = str(save_random_backbone(work / "vit_s", "small"))
    paths = write_jpegs(work / "jpegs", n_images, (375, 500))
    warm_up = paths[:16]
    embedder = Dinov2Embedder(model, image_size=image_size, device="cpu", batch_size=16, n_jobs=1)
    row = {"n_images": n_images, "image_size": image_size, "shard_size": SHARD, "batch_size": 16,
           "backbone": "random ViT-S/14 with registers"}  # fmt: skip

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like a worker process
    try:
        embedder.transform(warm_up)
        with cluster(1) as one, cluster(2) as two:
            for n_workers, client in ((1, one), (2, two)):
                # small shards, so that every worker gets some and loads its backbone before the timing
                embed(embedder, warm_up, client=client, embedding_cache=work / f"warm{n_workers}", shard_size=2)
            row.update(interleaved({
                "single_process": lambda rep: embedder.set_params(embedding_cache=work / f"s{rep}").transform(paths),
                "dask_1_workers": lambda rep: embed(embedder, paths, client=one, embedding_cache=work / f"one{rep}", shard_size=SHARD),
                "dask_2_workers": lambda rep: embed(embedder, paths, client=two, embedding_cache=work / f"two{rep}", shard_size=SHARD),
            }, repeats))  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return ratios(row)


def interleaved(runs: dict, repeats: int) -> dict:
    """Time each run ``repeats`` times, taking turns (a change of load hits all of them alike).

    Returns the best time of each (``<name>_seconds``) and all of them (``<name>_all_seconds``).
    """
    times = {name: [] for name in runs}
    for rep in range(repeats):
        for name, run in runs.items():
            times[name].append(timed(lambda: run(rep)))
    return {
        **{f"{name}_seconds": min(values) for name, values in times.items()},
        **{f"{name}_all_seconds": values for name, values in times.items()},
    }


def ratios(row: dict) -> dict:
    row["speedup_2_vs_1_workers"] = row["dask_1_workers_seconds"] / row["dask_2_workers_seconds"]
    row["dask_1_worker_vs_single_process"] = row["dask_1_workers_seconds"] / row["single_process_seconds"]
    return row


# ----------------------------------------------------------------------------------------
# 2. and 3. Grid search
# ----------------------------------------------------------------------------------------


def grid_data(n, grid, dims, n_classes=4, seed=0):
    rng = np.random.RandomState(seed)
    y = np.arange(n) % n_classes
    X = rng.normal(scale=0.5, size=(n, grid, grid, dims)).astype(np.float32)
    directions = rng.normal(size=(n_classes, dims)).astype(np.float32) * 2.0
    for i, c in enumerate(y):
        r, q = rng.randint(0, grid - 1, size=2)
        X[i, r : r + 2, q : q + 2] += directions[c]
    return X, y


def search(X, y, memory):
    from sklearn.model_selection import GridSearchCV

    from qpm_sklearn import QPMClassifier

    return GridSearchCV(QPMClassifier(**SMALL, memory=str(memory)), BUDGETS, cv=2, n_jobs=-1).fit(X, y)


def search_section(work, X, y, repeats):
    import joblib

    row = {"X_shape": list(X.shape), "X_megabytes": X.nbytes / 1e6, "budgets": BUDGETS, "cv": 2}

    def on(client):
        if client is None:
            return joblib.parallel_config(backend="sequential")
        return joblib.parallel_config(backend="dask", client=client)

    def run(client, name):
        def fit(rep):
            with on(client):
                search(X, y, work / f"{name}{rep}")

        return fit

    with cluster(1) as one, cluster(2) as two:
        for name, client in (("warm0", None), ("warm1", one), ("warm2", two)):
            with on(client):
                search(X[:40], y[:40], work / name)  # imports and first calls on every worker
        row.update(interleaved({
            "single_process": run(None, "m0_"), "dask_1_workers": run(one, "m1_"), "dask_2_workers": run(two, "m2_"),
        }, repeats))  # fmt: skip
    return ratios(row)


def bytes_section(work, X, y):
    """Loopback bytes of one search on 2 workers, in copies of X, three ways."""
    import joblib
    import joblib._dask

    memmap = np.lib.format.open_memmap(work / "X.npy", mode="w+", dtype=X.dtype, shape=X.shape)
    memmap[:] = X
    memmap.flush()
    n_tasks = len(BUDGETS["n_selected"]) * len(BUDGETS["n_per_class"]) * 2
    row = {"X_megabytes": X.nbytes / 1e6, "tasks": n_tasks}
    variants = {"auto_scatter": (X, False), "no_scatter": (X, True), "memmap_auto_scatter": (memmap, False)}
    with cluster(2), joblib.parallel_config(backend="dask"):
        search(X[:40], y[:40], work / "b_warm")
        for name, (data, no_scatter) in variants.items():
            original = joblib._dask.is_weakrefable
            if no_scatter:  # joblib scatters only arguments it can weak-reference
                joblib._dask.is_weakrefable = lambda obj: False
            try:
                before = loopback_bytes()
                seconds = timed(lambda: search(data, y, work / f"b_{name}"))
                received = loopback_bytes() - before
            finally:
                joblib._dask.is_weakrefable = original
            row[name] = {"seconds": seconds, "loopback_megabytes": received / 1e6, "copies_of_X": received / X.nbytes}
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small inputs (a smoke test, not a measurement)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: benchmarks/results/dask_cluster-<cpu>.json)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    n_images, image_size, repeats = (32, 56, 1) if args.quick else (128, 112, 3)
    X, y = grid_data(*((64, 4, 16) if args.quick else (400, 8, 64)))
    report = {
        "machine": f"{cpu_name()}, {os.cpu_count()} cores (shared with other work while measured)",
        "note": "ratios are what carries over; absolute seconds depend on the load of the machine",
        "load_average_1min_at_start": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        report["embedding"] = embedding_section(work, n_images, image_size, repeats)
        print(json.dumps(report["embedding"]), flush=True)
        report["grid_search"] = search_section(work, X, y, repeats)
        print(json.dumps(report["grid_search"]), flush=True)
        report["bytes"] = bytes_section(work, X, y)
        print(json.dumps(report["bytes"]), flush=True)
    report["load_average_1min_at_end"] = os.getloadavg()[0]
    out = args.out or RESULTS / f"dask_cluster-{slug(cpu_name())}.json"
    if not args.quick or args.out:
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
