"""Peak memory of QPMClassifier's input check for a token array on disk: memmap, zarr, dask.

Each case runs in a fresh process that opens the array and passes it through
:func:`qpm_sklearn._stages.check_tokens` (what ``fit`` and ``predict`` call first), then
touches every row block (as training would); the number is the process's peak resident
memory above what it had after the imports. A zarr or dask array is copied block by block
into a temporary memory map (:func:`qpm_sklearn._stages.as_token_array`); "zarr, read whole"
is what ``np.asarray`` would do instead. One JSON file with the machine and its load.

Usage::

    python benchmarks/array_input_memory.py --megabytes 256 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CASE = r"""
import resource, sys
import numpy as np
sys.path.insert(0, {root!r})
from qpm_sklearn._stages import check_tokens
kind, folder = {kind!r}, {folder!r}
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if kind == "memmap":
    X = np.load(folder + "/tokens.npy", mmap_mode="r")
elif kind == "dask":
    import dask.array as da, zarr
    X = da.from_zarr(folder + "/tokens.zarr")
else:
    import zarr
    X = zarr.open_array(folder + "/tokens.zarr", mode="r")
before = peak()
if kind == "zarr, read whole":
    X = np.asarray(X)
tokens, grid = check_tokens(X)
total = 0.0
for start in range(0, len(tokens), 256):
    total += float(tokens[start : start + 256].sum(dtype=np.float64))
print((peak() - before) / 2**20)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    import zarr

    rows = max(1, args.megabytes * 2**20 // (16 * 16 * 64 * 4))
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        tokens = np.lib.format.open_memmap(f"{folder}/tokens.npy", mode="w+", dtype=np.float32, shape=(rows, 16, 16, 64))
        on_disk = zarr.create_array(f"{folder}/tokens.zarr", shape=tokens.shape, dtype=np.float32,
                                    chunks=(64, 16, 16, 64))  # fmt: skip
        rng = np.random.default_rng(0)
        for start in range(0, rows, 64):
            block = rng.normal(size=(min(64, rows - start), 16, 16, 64)).astype(np.float32)
            tokens[start : start + len(block)] = block
            on_disk[start : start + len(block)] = block
        tokens.flush()
        del tokens
        for kind in ("memmap", "zarr", "dask", "zarr, read whole"):
            code = CASE.format(root=str(ROOT), kind=kind, folder=folder)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            results[kind] = round(float(out.strip().splitlines()[-1]), 1)
    report = {
        "benchmark": "array_input_memory",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "array_megabytes": round(rows * 16 * 16 * 64 * 4 / 2**20, 1),
        "peak_mib_above_imports": results,
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / "array_input_memory.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
