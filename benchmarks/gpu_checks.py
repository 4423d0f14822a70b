"""CUDA correctness checks that CPU tests cannot make; writes JSON.

1. Two CUDA fits with the same random_state: is ``assignment_`` identical, how
   far apart are the predictions?
2. A CUDA-fitted model pickled and loaded in a process that sees no GPU:
   does it predict, and how close to the CUDA predictions?
3. Dinov2Embedder on CUDA (bf16) against the CPU (float32) on the same images.

Usage: python benchmarks/gpu_checks.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/gpu_checks.json")
    args = parser.parse_args(argv)
    import torch

    from qpm_sklearn import Dinov2Embedder, QPMClassifier
    from qpm_sklearn.testing import save_random_backbone
    from qpm_sklearn.datasets import make_parts

    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    X, y, _ = make_parts(n_samples=600, n_classes=6, random_state=0)
    params = dict(n_features=64, n_selected=12, n_per_class=3, hidden_size=256, n_layers=3,
                  dense_epochs=10, sparse_epochs=10, random_state=0)  # fmt: skip
    start = time.perf_counter()
    first = QPMClassifier(**params, device="cuda").fit(X, y)
    second = QPMClassifier(**params, device="cuda").fit(X, y)
    proba_1, proba_2 = first.predict_proba(X), second.predict_proba(X)
    results["cuda_refit"] = {
        "assignment_identical": bool(np.array_equal(first.assignment_, second.assignment_)),
        "selected_identical": bool(np.array_equal(first.selected_features_, second.selected_features_)),
        "max_abs_proba_diff": float(np.abs(proba_1 - proba_2).max()),
        "prediction_agreement": float(np.mean(first.predict(X) == second.predict(X))),
        "seconds_two_fits": time.perf_counter() - start,
    }
    cpu = QPMClassifier(**params, device="cpu").fit(X, y)
    results["cpu_vs_cuda_fit"] = {
        "assignment_identical": bool(np.array_equal(first.assignment_, cpu.assignment_)),
        "prediction_agreement": float(np.mean(first.predict(X) == cpu.predict(X))),
    }
    with tempfile.TemporaryDirectory() as folder:
        model_path, data_path = os.path.join(folder, "m.pkl"), os.path.join(folder, "x.npy")
        with open(model_path, "wb") as handle:
            pickle.dump(first, handle)
        np.save(data_path, X)
        code = "\n".join(
            [
                "import pickle, warnings, numpy as np, torch",
                "assert not torch.cuda.is_available()",
                f"model = pickle.load(open({model_path!r}, 'rb'))",
                "with warnings.catch_warnings(record=True) as caught:",
                "    warnings.simplefilter('always')",
                f"    proba = model.predict_proba(np.load({data_path!r}))",
                f"np.save({data_path!r} + '.proba.npy', proba)",
                "print(sum('CUDA' in str(w.message) for w in caught))",
            ]
        )
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        entry = {"returncode": done.returncode, "stderr_tail": done.stderr[-500:]}
        if done.returncode == 0:
            proba_cpu = np.load(data_path + ".proba.npy")
            entry.update(
                cuda_fallback_warnings=int(done.stdout.strip() or 0),
                max_abs_proba_diff=float(np.abs(proba_cpu - proba_1).max()),
                prediction_agreement=float(np.mean(proba_cpu.argmax(1) == proba_1.argmax(1))),
            )
        results["pickle_to_cpu_only_process"] = entry
    with tempfile.TemporaryDirectory() as folder:
        backbone = save_random_backbone(folder, "small")
        images = np.random.RandomState(0).randint(0, 255, (32, 224, 224, 3), dtype=np.uint8)
        on_gpu = Dinov2Embedder(str(backbone), device="cuda").transform(images)
        on_cpu = Dinov2Embedder(str(backbone), device="cpu", batch_size=8).transform(images)
        cosine = np.sum(on_gpu * on_cpu, -1) / (np.linalg.norm(on_gpu, axis=-1) * np.linalg.norm(on_cpu, axis=-1))
        results["embedder_bf16_cuda_vs_fp32_cpu"] = {
            "min_token_cosine": float(cosine.min()),
            "mean_token_cosine": float(cosine.mean()),
            "max_abs_diff": float(np.abs(on_gpu - on_cpu).max()),
        }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
