"""Build time of the two redundancy rules' penalties at ImageNet-adapter sizes, in one run.

The instances of ``benchmarks/selection.py --large-only`` (simulated dense features, 1024 x 500,
2048 x 1000 and 4096 x 2000 features x classes, ``n_selected`` = N / 10.24): ``A`` and ``R`` built by
the library, then ``redundancy_penalty`` timed in process CPU seconds (and wall seconds) for
``rule="paper"`` and ``rule="consistent"``, interleaved per size so both see the same load.

    OMP_NUM_THREADS=1 python benchmarks/redundancy_scaling.py --out benchmarks/results   # about 1 min

Writes ``redundancy_scaling.json`` (machine, load averages before and after every build).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from qpm_sklearn.selection import feature_class_correlation, feature_similarity, redundancy_penalty

sys.path.insert(0, str(Path(__file__).resolve().parent))
from selection import IMAGES_PER_CLASS, simulated_features  # noqa: E402  (the selection benchmark's instances)

SIZES = ((1024, 500, 100), (2048, 1000, 200), (4096, 2000, 400))  # features, classes, n_selected
RULES = ("paper", "consistent")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def size_row(n_features: int, n_classes: int, n_selected: int, seed: int = 0) -> dict:
    features, y = simulated_features(n_features, n_classes, IMAGES_PER_CLASS.get(n_features, 30), seed)
    R = feature_similarity(feature_class_correlation(features, y))
    del features
    row = {"n_features": n_features, "n_classes": n_classes, "n_selected": n_selected, "seed": seed}
    for rule in RULES:
        load_before = _load()
        wall, cpu = time.perf_counter(), time.process_time()
        penalty, tau = redundancy_penalty(R, n_selected, rule=rule)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        pairs = int(np.count_nonzero(np.triu(penalty, 1)))
        row[rule] = {"cpu_seconds": round(cpu, 3), "wall_seconds": round(wall, 3), "tau": tau,
                     "penalised_pairs": pairs, "penalised_share": pairs / (n_features * (n_features - 1) // 2),
                     "load_before": load_before, "load_after": _load()}  # fmt: skip
    row["paper_over_consistent_cpu"] = round(row["paper"]["cpu_seconds"] / row["consistent"]["cpu_seconds"], 2)
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."), help="folder of redundancy_scaling.json (default: .)")
    parser.add_argument("--max-features", type=int, default=4096, help="largest size to run (default: 4096)")
    args = parser.parse_args(argv)
    start, load = time.perf_counter(), _load()
    rows = [size_row(*size) for size in SIZES if size[0] <= args.max_features]
    result = {
        "benchmark": "redundancy_scaling",
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "python": platform.python_version(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_at_start": load,
        "load_at_end": _load(),
        "rows": rows,
        "seconds": round(time.perf_counter() - start, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "redundancy_scaling.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=float))
    os.replace(tmp, path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
