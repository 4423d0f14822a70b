"""The two redundancy rules of the selection (``redundancy="paper"`` vs ``"consistent"``) side by side.

1. Synthetic parts data (``qpm_sklearn.datasets.make_parts``, ground-truth part masks): for every
   seed one dense stage (cached with ``memory=``) and one selection + sparse stage per rule; the
   paper's metrics from ``qpm_sklearn.metrics.evaluate`` on a held-out split, and the
   penalised-pair count of each rule.
2. CUB-size simulated selection instances (512 features x 200 classes -> 50 x 5, the simulated
   dense features of ``benchmarks/selection.py``): tau*, penalised pairs, the default solver's
   selection under each rule's penalty, every selection's objective under both rules'
   objectives, and the overlap of the two selections.

    python benchmarks/redundancy_rules.py --out benchmarks/results     # about 10 min on 2 CPU cores
    python benchmarks/redundancy_rules.py --quick                      # 2 seeds, 1 CUB-size instance

Writes ``redundancy_rules.json`` (with the machine name) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from qpm_sklearn import QPMClassifier
from qpm_sklearn.datasets import make_parts
from qpm_sklearn.metrics import evaluate
from qpm_sklearn.selection import (
    feature_class_correlation,
    feature_similarity,
    redundancy_penalty,
    selection_objective,
    solve_selection,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from selection import simulated_features  # noqa: E402  (the simulated dense features of the selection benchmark)

RULES = ("paper", "consistent")
# CPU-sized classifier: SID@5 needs 5 features per class.
PARTS_DATA = dict(n_samples=720, n_classes=20, grid=(8, 8), n_dims=16, n_parts_per_class=3, n_prototypes=8)
CLASSIFIER = dict(
    n_features=64, n_selected=16, n_per_class=5, hidden_size=64, n_layers=2, dense_epochs=12, sparse_epochs=6,
    dense_batch_size=32, sparse_batch_size=32, dense_lr=3e-3,
)  # fmt: skip


def _pairs(penalty) -> int:
    return int(np.count_nonzero(np.triu(penalty, 1)))


def parts_row(seed: int, cache_dir: str) -> dict:
    X, y, masks = make_parts(**PARTS_DATA, random_state=seed)
    n_train = len(y) * 2 // 3
    row = {"seed": seed}
    for rule in RULES:
        start = time.perf_counter()
        clf = QPMClassifier(**CLASSIFIER, redundancy=rule, memory=cache_dir, random_state=seed)
        clf.fit(X[:n_train], y[:n_train])
        metrics = evaluate(
            clf, X[n_train:], y[n_train:], masks=masks[n_train:], X_train=X[:n_train], y_train=y[:n_train],
            random_state=seed,
        )  # fmt: skip
        dense = clf.pooled_features(X[:n_train], stage="dense")
        R = feature_similarity(feature_class_correlation(dense, y[:n_train]))
        penalty, tau = redundancy_penalty(R, CLASSIFIER["n_selected"], rule=rule)
        row[rule] = {
            **metrics,
            "tau": tau,
            "max_R": float(R.max()),
            "penalised_pairs": _pairs(penalty),
            "selected": clf.selected_features_.tolist(),
            "seconds": round(time.perf_counter() - start, 2),
        }
    row["shared_features"] = len(set(row["paper"]["selected"]) & set(row["consistent"]["selected"]))
    print(json.dumps({k: v for k, v in row.items()}), flush=True)
    return row


def cub_row(seed: int) -> dict:
    features, y = simulated_features(512, 200, 30, seed)
    A = feature_class_correlation(features, y)
    R = feature_similarity(A)
    penalties, row = {}, {"seed": seed, "pairs_total": 512 * 511 // 2, "max_R": float(R.max())}
    for rule in RULES:
        penalty, tau = redundancy_penalty(R, 50, rule=rule)
        result = solve_selection(A, n_selected=50, n_per_class=5, penalty=penalty, random_state=seed)
        penalties[rule] = penalty
        row[rule] = {"tau": tau, "penalised_pairs": _pairs(penalty), "selected": result.selected.tolist(),
                     "assignment": result.assignment, "solver": result.as_dict()}  # fmt: skip
    for rule in RULES:
        selected, assignment = row[rule]["selected"], row[rule].pop("assignment")
        row[rule]["objective_under"] = {
            other: selection_objective(A, selected, assignment, penalty=penalties[other]) for other in RULES
        }
    row["shared_features"] = len(set(row["paper"]["selected"]) & set(row["consistent"]["selected"]))
    print(json.dumps({k: v for k, v in row.items() if k not in RULES} | {
        r: {k: v for k, v in row[r].items() if k in ("tau", "penalised_pairs", "objective_under")} for r in RULES
    }), flush=True)  # fmt: skip
    return row


def summary(parts: list[dict]) -> dict:
    """Mean and standard deviation over seeds of every metric, per rule."""
    out = {}
    for rule in RULES:
        keys = [k for k, v in parts[0][rule].items() if isinstance(v, float) and k not in ("tau", "max_R")]
        out[rule] = {k: [float(np.mean([p[rule][k] for p in parts])), float(np.std([p[rule][k] for p in parts]))]
                     for k in keys + ["penalised_pairs"]}  # fmt: skip
    out["shared_features"] = float(np.mean([p["shared_features"] for p in parts]))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."), help="folder of redundancy_rules.json (default: .)")
    parser.add_argument("--seeds", type=int, default=8, help="seeds of the parts data")
    parser.add_argument("--cub-seeds", type=int, default=3, help="CUB-size simulated instances")
    parser.add_argument("--quick", action="store_true", help="2 seeds and 1 CUB-size instance")
    args = parser.parse_args(argv)
    seeds, cub_seeds = (2, 1) if args.quick else (args.seeds, args.cub_seeds)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache_dir:
        parts = [parts_row(seed, cache_dir) for seed in range(seeds)]
    cub = [cub_row(seed) for seed in range(cub_seeds)]
    result = {
        "benchmark": "redundancy_rules",
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "parts_data": PARTS_DATA,
        "classifier": CLASSIFIER,
        "parts_summary": summary(parts),
        "parts": parts,
        "cub_size": cub,
        "seconds": round(time.perf_counter() - start, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "redundancy_rules.json"
    path.write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
