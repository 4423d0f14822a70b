"""Benchmark of the QPM feature-selection solvers on simulated dense features.

Instances: medium ones (where HiGHS proves optimality), CUB size (512 candidate features,
200 classes, 50 selected, 5 per class; with the penalty of either redundancy rule and without
one) and two ImageNet-scale ones
(1024 x 500 -> 100 x 5, 2048 x 1000 -> 200 x 5, 4096 x 2000 -> 400 x 5; each with both redundancy
rules, whose penalty build times are recorded). A, R and the penalty are built from simulated
pooled features exactly as the classifier builds them from real ones. For every instance the
default solver and the exact MILP (HiGHS through ``solver="exact"``) run under the same time
limit, each in its own process, and report objective, upper bound, gap, CPU and wall seconds and
the process's peak resident memory. The JSON (with the machine name) goes to ``--out``.

    python benchmarks/selection.py --out benchmarks/results   # everything (about 15 min on 2 cores)
    python benchmarks/selection.py --quick                    # medium instances only, short limits
    python benchmarks/selection.py --large-only --time-limit 60   # 1024 to 4096 features only

The exact path's wall seconds are compared with its limit (``wall_over_limit``): it runs HiGHS in a
worker process stopped at the deadline, beside the default solver under the same limit.

CPU seconds are reported besides wall seconds because the development machine has 2 cores
shared by several people: wall time includes their load (recorded as the load average).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from qpm_sklearn.selection import feature_class_correlation, feature_similarity, redundancy_penalty, solve_selection

MEDIUM = [((64, 20, 12, 3), seed) for seed in (0, 1, 2)] + [((96, 30, 16, 3), 1), ((128, 40, 20, 4), 1)]
CUB = (512, 200, 50, 5)
LARGE = [(1024, 500, 100, 5), (2048, 1000, 200, 5), (4096, 2000, 400, 5)]
IMAGES_PER_CLASS = {4096: 10}  # simulated images per class (default 30): 2000 x 30 x 4096 doubles would take 2 GB
MEMORY_LIMIT = 8 * 2**30  # per solver process: HiGHS on the largest MILP must not take the machine down


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


def build_instance(n_features, n_classes, n_selected, seed, images_per_class=None, rule="consistent"):
    images_per_class = images_per_class or IMAGES_PER_CLASS.get(n_features, 30)
    features, y = simulated_features(n_features, n_classes, images_per_class, seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    A = feature_class_correlation(features, y)
    R = feature_similarity(A)
    matrices = time.perf_counter() - start
    penalty_start, penalty_cpu_start = time.perf_counter(), time.process_time()
    penalty, tau = redundancy_penalty(R, n_selected, rule=rule)
    return A, penalty, {"tau": tau, "penalised_pair_fraction": float((penalty > 0).mean()),
                        "images_per_class": images_per_class,
                        "matrices_seconds": time.perf_counter() - start,
                        "penalty_seconds": time.perf_counter() - penalty_start,
                        "penalty_cpu_seconds": time.process_time() - penalty_cpu_start,
                        "correlation_seconds": matrices}


def solve_in_this_process(path, n_selected, n_per_class, solver, time_limit, seed):
    """One solve (child-process side): its result, CPU / wall seconds and peak memory, as a dict.

    A solve that overruns its time limit by more than the limit plus two minutes is killed
    (SIGALRM, recorded as failed): HiGHS checks its limit only between phases, and on a loaded
    machine its root LP alone can take many times the limit.
    """
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    signal.alarm(int(2 * time_limit) + 120)
    data = np.load(path)
    penalty = data["penalty"] if "penalty" in data else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the MILP's "no solution in time" fallback
        result = solve_selection(data["A"], n_selected=n_selected, n_per_class=n_per_class, penalty=penalty,
                                 solver=solver, time_limit=time_limit, random_state=seed)
    return {**result.as_dict(), "time_limit": time_limit, "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb():
    """This process's peak resident memory since its exec (VmHWM; ru_maxrss keeps the parent's
    high-water mark across fork + exec on Linux, so it is only the fallback)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def solve_in_child(path, spec, solver, time_limit, seed):
    """Run :func:`solve_in_this_process` in a fresh process, so that its peak memory is its own."""
    command = [sys.executable, __file__, "--child", json.dumps([str(path), spec[2], spec[3], solver, time_limit, seed])]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    process_wall = time.perf_counter() - start  # the child's whole life: imports, instance load, solve
    if done.returncode != 0:
        return {"failed": done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"],
                "process_wall_seconds": process_wall}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_wall_seconds": process_wall}


def run(spec, seed, time_limit, folder, *, with_penalty=True, exact=True, rule="consistent"):
    n_features, n_classes, n_selected, n_per_class = spec
    A, penalty, info = build_instance(n_features, n_classes, n_selected, seed, rule=rule)
    path = Path(folder) / f"instance-{n_features}-{n_classes}-{seed}-{int(with_penalty)}-{rule}.npz"
    np.savez(path, A=A, **({"penalty": penalty} if with_penalty else {}))
    row = {"n_features": n_features, "n_classes": n_classes, "n_selected": n_selected, "n_per_class": n_per_class,
           "seed": seed, "penalty": with_penalty, "redundancy": rule, **info, "load_average": os.getloadavg()[0]}
    row["default"] = solve_in_child(path, spec, "osqp", time_limit, seed)
    if exact:
        row["exact"] = solve_in_child(path, spec, "exact", time_limit, seed)
        if "seconds" in row["exact"]:  # the exact path keeps time_limit in wall time (its worker is stopped)
            row["exact"]["wall_over_limit"] = row["exact"]["seconds"] / time_limit
        if row["exact"].get("status") == "optimal" and "objective" in row["default"]:
            row["default_vs_exact_optimum"] = (row["exact"]["objective"] - row["default"]["objective"]) / abs(
                row["exact"]["objective"])
    print(json.dumps(row), flush=True)
    return row


def growth_exponent(rows):
    """Slope of log(default CPU seconds) against log(N * C) over the CUB-size and larger rows."""
    points = [(math.log(r["n_features"] * r["n_classes"]), math.log(r["default"]["cpu_seconds"])) for r in rows
              if r["penalty"] and r["redundancy"] == "consistent" and r["seed"] == 0 and r["n_features"] >= CUB[0]
              and "cpu_seconds" in r["default"]]
    if len(points) < 2:
        return None
    x, y = np.array(points).T
    return float(np.polyfit(x, y, 1)[0])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="medium instances only, 30 s limits")
    parser.add_argument("--time-limit", type=float, default=60.0,
                        help="seconds for each solver on each instance (the same for both)")
    parser.add_argument("--out", type=Path, default=Path("."),
                        help="folder for selection-<machine>.json (selection-large-<machine>.json with --large-only)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--large-only", action="store_true",
                        help="only the ImageNet-scale instances (1024 to 4096 features), each rule, both solvers")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(solve_in_this_process(*json.loads(args.child))))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from speed import cpu_name, slug  # the shared machine naming (imports torch: parent process only)

    limit = 30.0 if args.quick else args.time_limit
    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        rows = []
        if not args.large_only:
            rows += [run(spec, seed, limit, folder) for spec, seed in (MEDIUM[:3] if args.quick else MEDIUM)]
        if not args.quick and not args.large_only:
            rows += [run(CUB, 0, limit, folder), run(CUB, 1, limit, folder, exact=False),
                     run(CUB, 0, limit, folder, rule="paper"),  # the classifier's default rule
                     run(CUB, 0, limit, folder, with_penalty=False, exact=False)]
        if not args.quick:
            rows += [run(spec, 0, limit, folder, rule=rule) for spec in LARGE for rule in ("consistent", "paper")]
    machine = cpu_name()
    result = {
        "benchmark": "selection",
        "machine": machine,
        "platform": {"machine": platform.machine(), "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
                     "numpy": np.__version__, "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "note": "CPU seconds are the solving process's own; wall seconds include whatever else the machine ran "
                "(load_average per row, uptime at the end).",
        "growth_exponent_cpu_vs_NC": growth_exponent(rows),
        "load_average_start": load_at_start, "load_average_end": os.getloadavg(),
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    output = args.out / f"selection-{'large-' if args.large_only else ''}{slug(machine)}.json"
    output.write_text(json.dumps(result, indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
