"""Time the SLDD/Q-SENN solvers (qpm_sklearn.glm) at CUB size on CUB-like synthetic features.

5,994 samples × 512 non-negative, correlated features (ReLU of a random projection of noisy class
prototypes, like pooled adapter features), 200 classes; 90 % split as the baselines use it.
Writes benchmarks/results/glm_solvers.json.  Run: OMP_NUM_THREADS=1 python benchmarks/glm_solvers.py
"""

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from qpm_sklearn.glm import elastic_net_path, group_elastic_net_selection, max_regularisation, standardisation


def cub_like_features(n=5994, n_features=512, n_classes=200, latent=64, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    prototypes = rng.normal(size=(n_classes, latent))
    projection = rng.normal(size=(latent, n_features)) / np.sqrt(latent)
    latent_codes = prototypes[y] + 1.5 * rng.normal(size=(n, latent))
    F = np.maximum(latent_codes @ projection + 0.3 * rng.normal(size=(n, n_features)), 0.0) * 0.2
    return F, y


def main():
    F, y = cub_like_features()
    train = np.random.default_rng(1).permutation(len(y))[: int(0.9 * len(y))]
    F, y = F[train], y[train]
    t0 = time.perf_counter()
    selected = group_elastic_net_selection(F, y, n_keep=50)
    t_select = time.perf_counter() - t0
    mean, std = standardisation(F[:, selected])
    Z = (F[:, selected] - mean) / std
    lam_max = max_regularisation(F[:, selected], y, group=False) / 0.99
    t0 = time.perf_counter()
    path = elastic_net_path(Z, y, lam_max=lam_max)
    t_path = time.perf_counter() - t0
    result = {
        "device": f"CPU {platform.machine()} ({os.cpu_count()} cores), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        "n_samples": int(len(y)), "n_features": int(F.shape[1]), "n_classes": 200,
        "selection_seconds": round(t_select, 2), "path_seconds": round(t_path, 2),
        "path_points": len(path), "path_epochs_total": int(sum(p["epochs"] for p in path)),
        "path_unconverged": int(sum(not p["converged"] for p in path)),
        "nnz_per_class": [round(float((p["weight"] != 0).sum() / 200), 2) for p in path[::10]],
    }
    out = Path(__file__).parent / "results" / "glm_solvers.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
