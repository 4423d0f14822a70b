"""Speed of the ``memory=`` cache key of QPMClassifier's dense stage, one JSON file.

It compares ``joblib.hash`` of the whole token array with
:func:`qpm_sklearn._stages.tokens_fingerprint` (SHA-256 of the array's bytes in parallel blocks, with shape and
dtype). Both are exact content hashes -- never stale -- so only their speed differs. Measured on
random float32 and float16 token arrays of ``--megabytes`` MB (best of ``--repeats``).

Usage::

    python benchmarks/dense_cache_key.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import joblib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qpm_sklearn._stages import tokens_fingerprint  # noqa: E402
from speed import cpu_name  # noqa: E402


def best_seconds(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".", help="folder for the JSON result (default: current directory)")
    parser.add_argument("--megabytes", type=int, default=512, help="size of each token array (default: 512)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per hash, best kept (default: 3)")
    args = parser.parse_args(argv)

    rows = []
    for dtype in (np.float32, np.float16):
        n_values = args.megabytes * 2**20 // np.dtype(dtype).itemsize
        dim = 768
        tokens = np.random.default_rng(0).standard_normal(n_values // dim, dtype=np.float32).astype(dtype)
        tokens = np.repeat(tokens[:, None], dim, axis=1)[: n_values // dim]  # (n, 768), cheap to build
        gigabytes = tokens.nbytes / 1e9
        row = {"dtype": np.dtype(dtype).name, "gigabytes": gigabytes}
        for name, function in (("joblib_hash", joblib.hash), ("sha256_fingerprint", tokens_fingerprint)):
            seconds = best_seconds(lambda: function(tokens), args.repeats)
            row[f"{name}_seconds"] = seconds
            row[f"{name}_gb_per_s"] = gigabytes / seconds
        row["speedup"] = row["joblib_hash_seconds"] / row["sha256_fingerprint_seconds"]
        rows.append(row)
    result = {
        "benchmark": "dense_cache_key",
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "joblib": joblib.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dense_cache_key.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
