"""Does a CPU fit with one random_state give the same result under 1 and under the default threads?

Runs the offline quickstart's pipeline (scikit-learn's digits, the tiny untrained
DINOv2-with-registers backbone, the quickstart's QPMClassifier settings, random_state=0) in
two subprocesses, one with ``OMP_NUM_THREADS=1`` and one with the environment's default,
and compares each stage: the embeddings, the dense stage's pooled training features, the
selected features and the test predictions. Writes JSON (machine, load, per-stage
comparison) to ``--out``.

    python benchmarks/thread_reproducibility.py --out benchmarks/results/thread_reproducibility.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def child(out: str) -> None:
    import torch

    import qpm_sklearn.classifier as classifier
    from qpm_sklearn import Dinov2Embedder, QPMClassifier
    from qpm_sklearn._testing import save_random_backbone

    sys.path.insert(0, str(ROOT / "examples"))
    from quickstart import digits_images
    from sklearn.model_selection import train_test_split

    record: dict[str, np.ndarray] = {}
    select = classifier.qpm_head

    def recording_head(features, *args, **kwargs):
        record["dense_features"] = np.array(features)
        head = select(features, *args, **kwargs)
        record["selected"] = np.array(head.selected)
        return head

    classifier.qpm_head = recording_head
    start = time.perf_counter()
    images, labels, _ = digits_images()
    train, test = train_test_split(np.arange(len(labels)), test_size=0.25, stratify=labels, random_state=0)
    model = str(save_random_backbone(Path(tempfile.mkdtemp()) / "tiny-dinov2", "tiny", hidden_size=64))
    embedder = Dinov2Embedder(model=model, image_size=56, local_files_only=True)
    X_train, X_test = embedder.fit_transform(images[train]), embedder.transform(images[test])
    clf = QPMClassifier(
        n_features=64, n_selected=20, n_per_class=3, hidden_size=256, n_layers=2, dense_epochs=15, sparse_epochs=10,
        dense_batch_size=64, sparse_batch_size=64, random_state=0,
    ).fit(X_train, labels[train])  # fmt: skip
    record.update(embeddings=X_train, predictions=clf.predict(X_test), proba=clf.predict_proba(X_test),
                  y_test=labels[test], seconds=np.array(time.perf_counter() - start),
                  torch_threads=np.array(torch.get_num_threads()))  # fmt: skip
    np.savez(out, **record)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="thread_reproducibility.json", help="JSON path")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return {}
    report: dict = dict(machine=platform.processor() or platform.machine(), cores=os.cpu_count(),
                        load_average_start=os.getloadavg(), runs={})  # fmt: skip
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, threads in (("omp_1", "1"), ("default", None)):
            env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
            if threads:
                env["OMP_NUM_THREADS"] = threads
            path = Path(folder) / f"{name}.npz"
            subprocess.run([sys.executable, __file__, "--child", str(path)], env=env, check=True)
            with np.load(path) as archive:
                results[name] = {key: archive[key] for key in archive.files}
            run = results[name]
            report["runs"][name] = dict(
                torch_threads=int(run["torch_threads"]), seconds=float(run["seconds"]),
                accuracy=float(np.mean(run["predictions"] == run["y_test"])),
            )  # fmt: skip
    one, default = results["omp_1"], results["default"]

    def digest(array):
        return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]

    report["stages"] = {
        stage: dict(identical=digest(one[stage]) == digest(default[stage]),
                    max_abs_difference=float(np.max(np.abs(one[stage].astype(float) - default[stage].astype(float))))
                    if one[stage].shape == default[stage].shape else None)
        for stage in ("embeddings", "dense_features", "selected", "proba")
    }  # fmt: skip
    report["test_predictions_differing"] = int(np.sum(one["predictions"] != default["predictions"]))
    report["test_samples"] = int(len(one["predictions"]))
    report["load_average_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
