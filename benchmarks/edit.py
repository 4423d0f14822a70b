"""Cost of ``QPMClassifier.edit`` against a full ``fit``, at a CPU-sized configuration.

An edit reuses the fitted dense stage: it recomputes the dense pooled features of X with the stored
network (one inference pass), solves the selection again under the constraints (warm-started from
the current one) and trains only the sparse stage. This script fits a model on ``make_parts`` data,
then times edits of each kind -- no constraint, excluding one selected feature, pinning a class's
features, a bigger budget for one class, and excluding with ``sparse_epochs=0`` -- and writes the
ratios edit / fit to JSON with the machine and its load. It also times constrained selections at the
size of CUB (512 simulated features, 200 classes, 50 selected, 5 per class) against the
unconstrained one.

Run:  python benchmarks/edit.py --out benchmarks/results
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from qpm_sklearn import QPMClassifier
from qpm_sklearn.datasets import make_parts

SETTINGS = dict(n_features=64, n_selected=20, n_per_class=4, hidden_size=128, n_layers=2, dense_epochs=20,
                sparse_epochs=10, random_state=0, device="cpu")


def timed(function):
    start, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - start, time.process_time() - cpu


def cub_sized_selections():
    """Processor seconds, objective and certified gap of constrained solves at CUB size."""
    from selection import simulated_features  # benchmarks/selection.py: the shared simulated instance

    from qpm_sklearn.selection import feature_class_correlation, feature_similarity, redundancy_penalty, solve_selection

    features, labels = simulated_features(512, 200, 30, 0)
    A = feature_class_correlation(features, labels)
    penalty, _ = redundancy_penalty(feature_similarity(A), 50, rule="paper")
    kinds = {
        "unconstrained": dict(n_per_class=5),
        "exclude_5_features": dict(n_per_class=5, exclude=list(range(5))),
        "budgets_6_for_50_classes": dict(n_per_class=[5] * 150 + [6] * 50),
        "fixed_one_feature_for_20_classes": dict(n_per_class=5, fixed={c: [c] for c in range(20)}),
    }
    rows = {}
    for name, kwargs in kinds.items():
        cpu = time.process_time()
        result = solve_selection(A, n_selected=50, penalty=penalty, random_state=0, **kwargs)
        rows[name] = {"cpu_seconds": time.process_time() - cpu, "objective": result.objective, "gap": result.gap,
                      "bound_method": result.bound_method}  # fmt: skip
        print(f"CUB-sized selection, {name:34s} {rows[name]['cpu_seconds']:5.1f} CPU s, gap {result.gap:.2%}")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for edit-<machine>.json")
    parser.add_argument("--n-samples", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=2, help="timings per edit kind (the smallest is kept)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from speed import cpu_name, slug  # the shared machine naming

    X, y, _ = make_parts(n_samples=args.n_samples, n_classes=10, grid=(8, 8), n_dims=32, random_state=0)
    load_start = os.getloadavg()
    clf, fit_seconds, fit_cpu = timed(lambda: QPMClassifier(**SETTINGS).fit(X, y))
    first, pinned = int(clf.selected_features_[0]), clf.class_features(clf.classes_[0])[:2].tolist()
    edits = {
        "no_constraints": dict(),
        "exclude_one": dict(exclude=[first]),
        "fixed_one_class": dict(fixed={int(clf.classes_[1]): pinned}),
        "bigger_budget_one_class": dict(n_per_class={int(clf.classes_[2]): 6}),
        "exclude_one_sparse_epochs_0": dict(exclude=[first], sparse_epochs=0),
    }
    rows = {}
    for name, kwargs in edits.items():
        timings = [timed(lambda: clf.edit(X, y, **kwargs)) for _ in range(args.repeats)]
        edited, seconds, cpu = min(timings, key=lambda row: row[1])
        info = edited.selection_info_
        rows[name] = {"seconds": seconds, "cpu_seconds": cpu, "ratio_to_fit": seconds / fit_seconds,
                      "selection_seconds": info["seconds"], "gap": info["gap"], "status": info["status"],
                      "train_accuracy": float(edited.score(X, y))}  # fmt: skip
        print(f"{name:30s} {seconds:6.2f} s  = {seconds / fit_seconds:5.1%} of fit  (selection {info['seconds']:.2f} s, "
              f"gap {info['gap']:.2e})")
    machine = cpu_name()
    report = {
        "machine": machine,
        "platform": {"machine": platform.machine(), "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
                     "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "settings": {key: value for key, value in SETTINGS.items()},
        "data": {"generator": "make_parts", "n_samples": args.n_samples, "n_classes": 10, "grid": [8, 8], "n_dims": 32},
        "fit_seconds": fit_seconds,
        "fit_cpu_seconds": fit_cpu,
        "fit_selection_seconds": clf.selection_info_["seconds"],
        "edits": rows,
        "cub_sized_selections": cub_sized_selections(),
    }
    print(f"fit {fit_seconds:.2f} s (selection {clf.selection_info_['seconds']:.2f} s)")
    args.out.mkdir(parents=True, exist_ok=True)
    output = args.out / f"edit-{slug(machine)}.json"
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
