"""Image decoding throughput of the embedder's input stage: worker processes vs threads.

Decodes and resizes CUB-like JPEG files (500 x 375, smooth content) to 224 px with
``qpm_sklearn.images.decode_batches`` -- the stage that feeds ``Dinov2Embedder`` --
once with worker processes (the default for files) and once with threads, and reports
img/s and the CPU time the *calling* process spends per image. The latter bounds how
far decoding can scale: the caller also has to drive the GPU, so the less of its
time decoding takes (threads hold its GIL for part of every decode), the better.

Writes JSON with the CPU name to ``benchmarks/results/decoding-<cpu>.json``.
Usage: ``python benchmarks/decoding.py [--n-images 1024] [--n-jobs N]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import _cpu_name, _write_jpegs, slug  # noqa: E402

from qpm_sklearn.images import decode_batches, resolve_n_jobs  # noqa: E402


def measure(paths, n_jobs, processes, batch_size=256, repeats=2):
    batches = [np.arange(i, min(i + batch_size, len(paths))) for i in range(0, len(paths), batch_size)]
    runs = []
    for _ in range(repeats + 1):  # the first run starts the worker processes: not counted
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in decode_batches(paths, batches, 224, n_jobs=n_jobs, processes=processes):
            pass
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        runs.append(dict(img_per_s=len(paths) / wall, caller_cpu_us_per_img=cpu / len(paths) * 1e6))
    best = max(runs[1:], key=lambda run: run["img_per_s"])
    return dict(best, first_run_img_per_s=runs[0]["img_per_s"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-images", type=int, default=1024)
    parser.add_argument("--n-jobs", type=int, default=None, help="workers (default: the embedder's default)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    n_jobs = resolve_n_jobs(args.n_jobs)
    with tempfile.TemporaryDirectory(prefix="qpm-decoding-") as folder:
        paths = _write_jpegs(Path(folder), args.n_images, (375, 500))
        report = dict(
            cpu=_cpu_name(), cpu_count=os.cpu_count(), n_jobs=n_jobs, n_images=len(paths),
            image_shape=[375, 500], output_size=224,
            processes=measure(paths, n_jobs, processes=True),
            threads=measure(paths, n_jobs, processes=False),
            one_thread=measure(paths, 1, processes=False, repeats=1),
        )  # fmt: skip
    for name in ("processes", "threads", "one_thread"):
        row = report[name]
        print(f"{name:<10} {row['img_per_s']:7.0f} img/s   caller CPU {row['caller_cpu_us_per_img']:6.0f} us/img")
    path = Path(args.out) if args.out else Path(__file__).parent / "results" / f"decoding-{slug(report['cpu'])}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
