"""What the README's commands cost on a CPU: one run, one JSON file.

Sections (each timed as wall-clock and as CPU seconds, so that a run on a shared machine still shows
what a quiet one would take single-threaded):

* ``quickstart``  ``python examples/quickstart.py`` in a subprocess, once with ``OMP_NUM_THREADS=1``
  and once with torch's default threads;
* ``cpu_fit``     the README's CPU-sized ``QPMClassifier`` (its ``CPU_CONFIG``) fitted on random
  embeddings of ``--images`` images with the patch grid and width of ``--backbone`` at
  ``--image-size``;
* ``paper_fit``   the paper's defaults: one dense and one sparse epoch on ``--paper-images``
  images of CUB's 16 x 16 x 768 ViT-B grid, extrapolated to CUB's 5,994 training images and
  25 + 25 epochs (the selection is seconds and left out);
* ``embedder``    ``Dinov2Embedder.transform`` of random uint8 images with a random-weight backbone
  of ``--backbone``'s architecture at ``--image-size`` (speed does not depend on the weights).

Nothing is downloaded. The result goes to ``cpu_costs-<cpu>.json`` in the current directory
(``--out`` names another path).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/cpu_costs.py            # all sections, a few minutes
    python benchmarks/cpu_costs.py --sections quickstart
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The CPU-sized configuration the README gives for machines without a GPU.
CPU_CONFIG = dict(n_features=64, n_selected=30, n_per_class=3, hidden_size=256, n_layers=2, dense_epochs=10, sparse_epochs=5)
PATCH_SIZE = 14
WIDTH = {"small": 384, "base": 768}
CUB_TRAIN_IMAGES = 5994
PAPER_EPOCHS = 25


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


class Timer:
    """Wall-clock and CPU seconds (this process and its finished children) of a block."""

    def __enter__(self):
        self._wall = time.perf_counter()
        self._cpu = self._cpu_now()
        return self

    def __exit__(self, *exc):
        self.wall_s = time.perf_counter() - self._wall
        self.cpu_s = self._cpu_now() - self._cpu

    @staticmethod
    def _cpu_now() -> float:
        return sum(
            usage.ru_utime + usage.ru_stime
            for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
        )


def quickstart(args) -> dict:
    results = {}
    for name, threads in (("threads_1", "1"), ("default_threads", None)):
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        if threads:
            env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        with tempfile.TemporaryDirectory() as folder, Timer() as timer:
            subprocess.run(
                [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--out", str(Path(folder) / "q.png")],
                check=True, env=env, cwd=folder, stdout=subprocess.DEVNULL,
            )  # fmt: skip
        results[name] = dict(wall_s=round(timer.wall_s, 1), cpu_s=round(timer.cpu_s, 1))
    return results


def random_embeddings(n, grid, dim, n_classes, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    X = rng.standard_normal((n, *grid, dim), dtype=np.float32)
    X[..., : n_classes] += 2.0 * np.eye(n_classes, dtype=np.float32)[y][:, None, None, :]
    return X, y


def cpu_fit(args) -> dict:
    from qpm_sklearn import QPMClassifier

    side = args.image_size // PATCH_SIZE
    X, y = random_embeddings(args.images, (side, side), WIDTH[args.backbone], args.classes)
    with Timer() as timer:
        clf = QPMClassifier(**CPU_CONFIG, device="cpu", random_state=0).fit(X, y)
    stages = {stage: round(sum(r["seconds"] for r in clf.history_ if r["stage"] == stage), 1) for stage in ("dense", "sparse")}
    return dict(
        config=CPU_CONFIG, images=args.images, grid=[side, side], dim=WIDTH[args.backbone], classes=args.classes,
        wall_s=round(timer.wall_s, 1), cpu_s=round(timer.cpu_s, 1), epoch_seconds=stages,
        selection_s=round(float(clf.selection_info_["seconds"]), 2),
    )  # fmt: skip


def paper_fit(args) -> dict:
    from qpm_sklearn import QPMClassifier

    n_classes = 10
    X, y = random_embeddings(args.paper_images, (16, 16), 768, n_classes)
    with Timer() as timer:
        clf = QPMClassifier(dense_epochs=1, sparse_epochs=1, n_selected=50, n_per_class=5, device="cpu", random_state=0)
        clf.fit(X, y)
    epoch = {stage: sum(r["seconds"] for r in clf.history_ if r["stage"] == stage) for stage in ("dense", "sparse")}
    scale = CUB_TRAIN_IMAGES / args.paper_images
    hours = PAPER_EPOCHS * scale * (epoch["dense"] + epoch["sparse"]) / 3600
    # The epochs' seconds are wall-clock; on a busy machine scale them by the fit's CPU/wall ratio to
    # estimate what one quiet core per thread would take.
    cpu_per_wall = timer.cpu_s / timer.wall_s
    return dict(
        images=args.paper_images, wall_s=round(timer.wall_s, 1), cpu_s=round(timer.cpu_s, 1),
        epoch_seconds={k: round(v, 2) for k, v in epoch.items()}, cpu_per_wall=round(cpu_per_wall, 3),
        cub_epoch_minutes_cpu={k: round(v * scale * cpu_per_wall / 60, 1) for k, v in epoch.items()},
        cub_full_fit_hours_extrapolated=round(hours, 1),
        cub_full_fit_cpu_hours_extrapolated=round(hours * cpu_per_wall, 1),
    )  # fmt: skip


def embedder(args) -> dict:
    from qpm_sklearn import Dinov2Embedder
    from qpm_sklearn.testing import save_random_backbone

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.embed_images, args.image_size, args.image_size, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        model = str(save_random_backbone(Path(folder) / "backbone", args.backbone))
        embed = Dinov2Embedder(model=model, image_size=args.image_size, device="cpu", local_files_only=True)
        embed.transform(images[:2])  # load the weights outside the timing
        with Timer() as timer:
            embed.transform(images)
    return dict(
        backbone=args.backbone, image_size=args.image_size, images=args.embed_images,
        wall_s=round(timer.wall_s, 1), cpu_s=round(timer.cpu_s, 1),
        img_per_s=round(args.embed_images / timer.wall_s, 2), cpu_s_per_img=round(timer.cpu_s / args.embed_images, 3),
    )  # fmt: skip


SECTIONS = {"quickstart": quickstart, "cpu_fit": cpu_fit, "paper_fit": paper_fit, "embedder": embedder}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of: {','.join(SECTIONS)}")
    parser.add_argument("--images", type=int, default=1000, help="training images of the cpu_fit section (default 1000)")
    parser.add_argument("--classes", type=int, default=20, help="classes of the cpu_fit section (default 20)")
    parser.add_argument("--backbone", choices=sorted(WIDTH), default="small", help="architecture of cpu_fit/embedder")
    parser.add_argument("--image-size", type=int, default=112, help="image side in px for cpu_fit/embedder (default 112)")
    parser.add_argument("--paper-images", type=int, default=128, help="images timed by paper_fit (default 128)")
    parser.add_argument("--embed-images", type=int, default=32, help="images timed by embedder (default 32)")
    parser.add_argument("--out", default=None, help="JSON path (default: cpu_costs-<cpu>.json in the current directory)")
    args = parser.parse_args(argv)
    wanted = args.sections.split(",")
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")

    import torch

    report = dict(
        cpu=cpu_name(), cores=os.cpu_count(), torch=torch.__version__, torch_threads=torch.get_num_threads(),
        omp_num_threads=os.environ.get("OMP_NUM_THREADS"), load_average_start=os.getloadavg(), sections={},
    )  # fmt: skip
    for name in wanted:
        report["sections"][name] = SECTIONS[name](args)
        print(name, json.dumps(report["sections"][name]))
    report["load_average_end"] = os.getloadavg()
    path = Path(args.out) if args.out else Path.cwd() / f"cpu_costs-{slug(report['cpu'])}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"written: {path}")
    return report


if __name__ == "__main__":
    main()
