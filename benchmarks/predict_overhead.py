"""Per-call overhead of ``QPMClassifier.predict`` / ``explain`` on a small batch.

A model with the default 11M-parameter MLP (768-d tokens, 4 x 2048 hidden, 512 features) is fitted
briefly on random tokens; then ``predict`` and ``explain`` of 4 samples of one token each are timed
(median of ``--repeats`` calls). On so small a batch the forward pass itself is cheap, so the time
measures what every call pays besides it: validation, building the network, moving weights.

Usage::

    python benchmarks/predict_overhead.py --out benchmarks/results --label before
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qpm_sklearn import QPMClassifier  # noqa: E402
from speed import cpu_name  # noqa: E402


def median_seconds(call, repeats: int) -> float:
    call()  # first call: lazy imports, allocator warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".", help="folder for the JSON result (default: current directory)")
    parser.add_argument("--label", default="", help="tag of this run (e.g. before / after)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per method (default: 20)")
    parser.add_argument("--batch", type=int, default=4, help="samples per call (default: 4)")
    args = parser.parse_args(argv)

    import torch

    rng = np.random.RandomState(0)
    n_classes, n_train, dim = 12, 48, 768
    X = rng.normal(size=(n_train, dim)).astype(np.float32)
    y = np.repeat(np.arange(n_classes), n_train // n_classes)
    clf = QPMClassifier(dense_epochs=1, sparse_epochs=1, device="cpu", random_state=0).fit(X, y)
    n_parameters = dim * 2048 + 2 * 2048 * 2048 + 2048 * 512
    batch = X[: args.batch]
    result = {
        "benchmark": "predict_overhead",
        "label": args.label,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mlp_weights": n_parameters,
        "batch": args.batch,
        "repeats": args.repeats,
        "predict_seconds": median_seconds(lambda: clf.predict(batch), args.repeats),
        "predict_proba_seconds": median_seconds(lambda: clf.predict_proba(batch), args.repeats),
        "explain_seconds": median_seconds(lambda: clf.explain(batch), args.repeats),
        "dense_predict_seconds": median_seconds(lambda: clf.predict(batch, stage="dense"), args.repeats),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"predict_overhead-{args.label}.json" if args.label else "predict_overhead.json"
    (out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
