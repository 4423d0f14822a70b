"""Cost of the global explanations: the feature atlas against one predict_proba pass, and the HTML report at CUB size.

A QPMClassifier of CUB's shape (200 classes, ``n_features`` adapter channels, 50 selected, 5 per
class) is fitted briefly on random single tokens (its weights are as good as random: speed and
size do not depend on them), then applied to a float16 memmap of ``--rows`` random 16 x 16 patch
grids (768-d, as DINOv2-B at 224 px). Measured:

* ``predict_proba`` over the memmap, then :func:`qpm_sklearn.report.feature_atlas` (with ``y``,
  k = 8) over the same memmap: seconds of each and their ratio (goal: atlas <= 1.5 x predict_proba);
* the atlas's own memory (numpy allocations, tracemalloc peak) on half and on all rows: the
  bound is O(n_selected * k) + one batch, so the two peaks must match;
* :func:`qpm_sklearn.report.write_report` with that atlas and 224 x 224 photo-like images (random
  crops of scikit-learn's two bundled sample photos): seconds, file size, thumbnails;
* with Chromium and Playwright present, the report opened from ``file://`` in headless Chromium:
  first contentful paint and load event.

The MLP's width is ``--hidden-size`` (the default 2048 makes the CPU forward pass the whole
benchmark; the ratio is what matters and is reported with the width used).

Usage::

    python benchmarks/report.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qpm_sklearn import QPMClassifier  # noqa: E402
from qpm_sklearn.report import feature_atlas, write_report  # noqa: E402
from speed import cpu_name, slug  # noqa: E402

N_CLASSES, N_SELECTED, N_PER_CLASS, GRID, DIM, IMAGE = 200, 50, 5, 16, 768, 224


def photo_like_images(n: int, seed: int = 0) -> np.ndarray:
    """``n`` 224 x 224 crops (random position and scale) of scikit-learn's bundled sample photos."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.RandomState(seed)
    out = np.empty((n, IMAGE, IMAGE, 3), dtype=np.uint8)
    for i in range(n):
        photo = photos[i % len(photos)]
        side = rng.randint(120, min(photo.shape[:2]))
        top, left = rng.randint(0, photo.shape[0] - side), rng.randint(0, photo.shape[1] - side)
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        out[i] = np.asarray(crop.resize((IMAGE, IMAGE), Image.Resampling.BILINEAR))
    return out


def traced_atlas(clf, X, y, batch_size):
    tracemalloc.start()
    start = time.perf_counter()
    atlas = feature_atlas(clf, X, y=y, k=8, batch_size=batch_size)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return atlas, seconds, peak


def browser_timings(path: Path) -> dict:
    chromium = os.environ.get("QPM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return {"browser": "playwright not installed"}
    if chromium is None:
        return {"browser": "chromium not installed"}
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            start = time.perf_counter()
            page.goto(path.resolve().as_uri(), wait_until="load")
            page.screenshot()
            first_screen = time.perf_counter() - start
            paint = page.evaluate(
                "(performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || null"
            )
            load = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
            return {"browser": browser.version, "first_contentful_paint_ms": paint, "load_event_ms": load,
                    "open_and_screenshot_seconds": first_screen}  # fmt: skip
        finally:
            browser.close()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".", help="folder for the JSON result")
    parser.add_argument("--rows", type=int, default=1024, help="rows of the float16 memmap (default 1024)")
    parser.add_argument("--hidden-size", type=int, default=256, help="MLP width (default 256; the estimator's is 2048)")
    parser.add_argument("--n-features", type=int, default=512, help="adapter channels (default 512)")
    parser.add_argument("--batch-size", type=int, default=256, help="rows per atlas batch (default 256)")
    parser.add_argument("--keep", default=None, help="also copy the report here")
    args = parser.parse_args(argv)

    import torch

    load_before = os.getloadavg()
    rng = np.random.RandomState(0)
    y_fit = np.repeat(np.arange(N_CLASSES), 3)
    X_fit = rng.normal(size=(len(y_fit), DIM)).astype(np.float32) + np.eye(N_CLASSES, DIM)[y_fit] * 3
    clf = QPMClassifier(n_features=args.n_features, n_selected=N_SELECTED, n_per_class=N_PER_CLASS,
                        hidden_size=args.hidden_size, dense_epochs=1, sparse_epochs=1, device="cpu",
                        random_state=0).fit(X_fit, y_fit)  # fmt: skip

    with tempfile.TemporaryDirectory() as folder:
        X = np.lib.format.open_memmap(Path(folder) / "X.npy", mode="w+", dtype=np.float16,
                                      shape=(args.rows, GRID, GRID, DIM))  # fmt: skip
        for start in range(0, args.rows, 128):
            stop = min(start + 128, args.rows)
            X[start:stop] = rng.normal(size=(stop - start, GRID, GRID, DIM)).astype(np.float16)
        X.flush()
        del X
        X = np.load(Path(folder) / "X.npy", mmap_mode="r")
        y = rng.randint(0, N_CLASSES, size=args.rows)

        clf.predict_proba(X[:8])  # warm-up: network built, threads started
        start = time.perf_counter()
        clf.predict_proba(X)
        predict_seconds = time.perf_counter() - start
        half_atlas, _, half_peak = traced_atlas(clf, X[: args.rows // 2], y[: args.rows // 2], args.batch_size)
        atlas, atlas_seconds, atlas_peak = traced_atlas(clf, X, y, args.batch_size)
        # Every class gets typical images (the random labels make few rows correct): the size and
        # write time are those of a CUB report, 4 images per class panel.
        class_rows = np.stack([rng.permutation(args.rows)[:8] for _ in range(N_CLASSES)])
        shown = atlas.__class__(**{**atlas.__dict__, "class_examples": class_rows,
                                   "class_margins": np.ones(class_rows.shape)})  # fmt: skip
        images = photo_like_images(args.rows)
        report = Path(folder) / "report.html"
        start = time.perf_counter()
        write_report(clf, X, images, report, k=8, atlas=shown)
        write_seconds = time.perf_counter() - start
        size = report.stat().st_size
        text = report.read_text()
        n_images = text.count("<img ")
        timings = browser_timings(report)
        if args.keep:
            shutil.copy(report, args.keep)

    result = {
        "benchmark": "report",
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "note": "CPU machine shared with other developers; wall times include their load (load averages "
                "before/after). The MLP width is reduced (hidden_size) so that the CPU run stays short: the "
                "ratio atlas/predict_proba is the quantity of interest.",
        "rows": args.rows,
        "grid": [GRID, GRID],
        "embedding_dim": DIM,
        "dtype": "float16 memmap",
        "n_classes": N_CLASSES,
        "n_features": args.n_features,
        "n_selected": N_SELECTED,
        "hidden_size": args.hidden_size,
        "k": 8,
        "batch_size": args.batch_size,
        "predict_proba_seconds": predict_seconds,
        "atlas_seconds": atlas_seconds,
        "atlas_over_predict_proba": atlas_seconds / predict_seconds,
        "atlas_numpy_peak_bytes_half_rows": half_peak,
        "atlas_numpy_peak_bytes_all_rows": atlas_peak,
        "report_write_seconds": write_seconds,
        "report_bytes": size,
        "report_images": n_images,
        "report_class_images": 4,
        **timings,
    }
    del half_atlas
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"report-{slug(cpu_name())}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
