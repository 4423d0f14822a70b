"""The host-side stages of ``Dinov2Embedder``, which need no GPU to measure.

1. Decoding: CUB-like JPEG files (500 x 375, smooth content) decoded and resized to
   224 px by ``qpm_sklearn.images.decode_batches``, once with worker processes (the
   default for files) and once with threads; img/s and the CPU time the *calling*
   process spends per image. The latter bounds how far decoding can scale: the caller
   also has to drive the GPU.
2. Writing the output: batches of ViT-B patch tokens (256 x 256 x 768) written into the
   float32 result array, as the previous version did (float32 source, numpy assignment,
   one thread) and as the current one does (bfloat16 source, torch's multi-threaded
   converting copy); into freshly allocated memory and into memory already mapped.

Writes JSON with the CPU name to ``benchmarks/results/embedder_host-<cpu>.json``.
Usage: ``python benchmarks/embedder_host.py [--n-images 1024] [--n-jobs N]``
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

from speed import cpu_name, slug, write_jpegs  # noqa: E402

import torch  # noqa: E402

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


def measure_writes(n_batches=8, batch_shape=(256, 256, 768)):
    """GB/s of writing n_batches outputs into a float32 result, old and new way, fresh and mapped."""
    sources = {
        "numpy_float32": torch.randn(batch_shape).numpy(),
        "torch_bfloat16": torch.randn(batch_shape).to(torch.bfloat16),
    }

    def write(result, name):
        rows = batch_shape[0]
        for k in range(n_batches):
            destination = result[k * rows : (k + 1) * rows]
            if name == "numpy_float32":
                destination[...] = sources[name]
            else:
                torch.from_numpy(destination).copy_(sources[name])

    def rate(name, memory):
        result = np.empty((n_batches * batch_shape[0], *batch_shape[1:]), np.float32)
        if memory == "mapped":
            result.fill(0)  # touch every page first
        start = time.perf_counter()
        write(result, name)
        return result.nbytes / (time.perf_counter() - start) / 1e9

    # The process's very first large allocation is much slower to fault in on some machines
    # (huge-page compaction): it is measured once, apart, and the rest alternate, 3 times each.
    out = {"first_allocation_numpy_float32_gb_per_s": rate("numpy_float32", "fresh")}
    for memory in ("fresh", "mapped"):
        runs = {name: [] for name in sources}
        for _ in range(3):
            for name in sources:
                runs[name].append(rate(name, memory))
        out.update({f"{memory}_{name}_gb_per_s": float(np.median(values)) for name, values in runs.items()})
    return dict(out, n_images=n_batches * batch_shape[0], torch_threads=torch.get_num_threads())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-images", type=int, default=1024)
    parser.add_argument("--n-jobs", type=int, default=None, help="workers (default: the embedder's default)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    n_jobs = resolve_n_jobs(args.n_jobs)
    with tempfile.TemporaryDirectory(prefix="qpm-decoding-") as folder:
        paths = write_jpegs(Path(folder), args.n_images, (375, 500))
        report = dict(
            cpu=cpu_name(), cpu_count=os.cpu_count(), n_jobs=n_jobs, n_images=len(paths),
            image_shape=[375, 500], output_size=224,
            processes=measure(paths, n_jobs, processes=True),
            threads=measure(paths, n_jobs, processes=False),
            one_thread=measure(paths, 1, processes=False, repeats=1),
        )  # fmt: skip
    report["output_writes"] = measure_writes()
    for name in ("processes", "threads", "one_thread"):
        row = report[name]
        print(f"decoding, {name:<10} {row['img_per_s']:7.0f} img/s   caller CPU {row['caller_cpu_us_per_img']:6.0f} us/img")
    for name, value in report["output_writes"].items():
        if name.endswith("gb_per_s"):
            print(f"writing, {name:<36} {value:6.2f} GB/s")
    path = Path(args.out) if args.out else Path(__file__).parent / "results" / f"embedder_host-{slug(report['cpu'])}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
