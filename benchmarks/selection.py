"""Benchmark of the QPM feature-selection solvers on simulated dense features.

Instances: medium ones (where HiGHS proves optimality) and CUB-size ones (512 candidate
features, 200 classes, 50 selected, 5 per class). A, R and the penalty are built from simulated
pooled features exactly as the classifier builds them from real ones. For every instance the
default solver (OSQP relaxation + local search) and the exact MILP (HiGHS, under a time limit)
report objective, upper bound, gap and seconds. Results go to benchmarks/results/selection.json.

    python benchmarks/selection.py                 # full run (a few minutes)
    python benchmarks/selection.py --quick         # medium instances only, short limits

Timings depend on contention: the development machine has 2 cores shared by several people.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import osqp
import scipy

from qpm_sklearn.selection import feature_class_correlation, feature_similarity, redundancy_penalty, solve_selection

RESULTS = Path(__file__).resolve().parent / "results" / "selection.json"


def simulated_features(n_features, n_classes, images_per_class, seed, latent=64, groups=20):
    """Pooled post-ReLU features of a class-structured latent model.

    Classes come in ``groups`` families of similar prototypes (like bird species of one genus);
    every feature is a ReLU of a sparse random projection of the latent code plus noise, so
    features correlate with each other and with several classes, as dense QPM features do.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, latent))
    prototypes = centres[rng.integers(groups, size=n_classes)] + 0.8 * rng.normal(size=(n_classes, latent))
    y = np.repeat(np.arange(n_classes), images_per_class)
    codes = prototypes[y] + rng.normal(size=(y.size, latent))
    projection = rng.normal(size=(latent, n_features)) * (rng.random((latent, n_features)) < 0.15)
    features = np.maximum(codes @ projection + 0.5 * rng.normal(size=(y.size, n_features)), 0.0)
    return features, y


def build_instance(n_features, n_classes, n_selected, seed, images_per_class=30):
    features, y = simulated_features(n_features, n_classes, images_per_class, seed)
    start = time.perf_counter()
    A = feature_class_correlation(features, y)
    R = feature_similarity(A)
    penalty, tau = redundancy_penalty(R, n_selected)
    return A, penalty, {"tau": tau, "penalised_pair_fraction": float((penalty > 0).mean()),
                        "matrices_seconds": time.perf_counter() - start}


def run(spec, seed, exact_time_limit, with_penalty=True):
    n_features, n_classes, n_selected, n_per_class = spec
    A, penalty, info = build_instance(n_features, n_classes, n_selected, seed)
    penalty = penalty if with_penalty else None
    row = {"n_features": n_features, "n_classes": n_classes, "n_selected": n_selected,
           "n_per_class": n_per_class, "seed": seed, "penalty": with_penalty, **info}
    budgets = {"n_selected": n_selected, "n_per_class": n_per_class, "penalty": penalty}
    default = solve_selection(A, **budgets, random_state=seed)
    row["default"] = default.as_dict()
    if exact_time_limit:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            exact = solve_selection(A, **budgets, solver="exact", time_limit=exact_time_limit)
        row["exact"] = {**exact.as_dict(), "time_limit": exact_time_limit}
        if exact.status == "optimal":
            row["default_vs_exact_optimum"] = (exact.objective - default.objective) / abs(exact.objective)
        row["best_known_bound"] = min(default.upper_bound, exact.upper_bound)
        row["default_gap_to_best_known_bound"] = (row["best_known_bound"] - default.objective) / abs(default.objective)
    print(json.dumps(row), flush=True)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="medium instances only, short exact limits")
    parser.add_argument("--exact-time-limit", type=float, default=180.0, help="seconds for the CUB-size MILP")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    medium = [((64, 20, 12, 3), s) for s in (0, 1, 2)] + [((96, 30, 16, 3), 1), ((128, 40, 20, 4), 1)]
    cub = [((512, 200, 50, 5), s) for s in (0, 1)]
    rows = [run(spec, seed, 120.0) for spec, seed in (medium[:3] if args.quick else medium)]
    if not args.quick:
        rows += [run(spec, seed, args.exact_time_limit if seed == 0 else 0) for spec, seed in cub]
        rows.append(run(cub[0][0], 0, 0, with_penalty=False))
    result = {
        "benchmark": "selection",
        "device": "cpu",
        "platform": {"machine": platform.machine(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                     "python": sys.version.split()[0], "numpy": np.__version__, "scipy": scipy.__version__,
                     "osqp": osqp.__version__, "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "note": "2 CPU cores shared with other developers while running; timings include contention.",
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
