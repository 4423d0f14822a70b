"""Read a QPM classifier as a whole: a feature atlas, part names and a browsable HTML report.

The data are ``make_parts``' synthetic patch grids, where the truth is known: every class is a
combination of two of four part prototypes, planted at random cells among noise and clutter.
Each sample is drawn as a picture (14 px per grid cell): grey token norm, with each planted part
marked by its prototype's colour, so the report shows what the model saw. A small
QPMClassifier is fitted; then

* :func:`~qpm_sklearn.report.feature_atlas` finds each selected feature's strongest test images;
* :func:`~qpm_sklearn.metrics.part_alignment` scores how often their peaks land on each planted
  part (the prototypes are the "keypoints"), and
  :func:`~qpm_sklearn.metrics.suggest_feature_names` names the features after their part;
* :func:`~qpm_sklearn.report.write_report` writes ``report.html``, one self-contained page;
* with Chromium installed, a screenshot of its first screen is written too (the picture of
  docs/explanations.md).

Run:  python examples/global_explanations.py                      # into ./global_explanations/
      python examples/global_explanations.py --out docs/figures   # also regenerates the docs screenshot

Feature ids and digits depend on the machine's floating-point details; which prototype each
feature finds is what stays.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from qpm_sklearn import QPMClassifier
from qpm_sklearn.datasets import make_parts
from qpm_sklearn.metrics import part_alignment, suggest_feature_names
from qpm_sklearn.report import feature_atlas, write_report

PIXELS_PER_CELL = 14
PART_NAMES = ["red disk", "blue square", "green bar", "orange ring"]
COLOURS = np.array([[230, 40, 40], [40, 90, 230], [40, 190, 60], [250, 150, 20]], dtype=np.float64)
SCREENSHOT = "report_screenshot.jpg"
# Small and fast (a few seconds on a CPU); n_selected = the 4 part prototypes.
MODEL = dict(n_features=32, hidden_size=64, n_layers=2, n_selected=4, n_per_class=2, dense_epochs=30,
             sparse_epochs=20, dense_batch_size=32, sparse_batch_size=32, dense_lr=1e-2, device="cpu")  # fmt: skip


def draw(grid: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """A picture of one patch grid: token norm in grey, each planted part a mark in its prototype's colour."""
    norm = np.linalg.norm(grid, axis=-1)
    norm = (norm - norm.min()) / max(norm.max() - norm.min(), 1e-12)
    picture = np.repeat(np.kron(80 + 120 * norm, np.ones((PIXELS_PER_CELL, PIXELS_PER_CELL)))[..., None], 3, axis=2)
    yy, xx = np.mgrid[:PIXELS_PER_CELL, :PIXELS_PER_CELL] - (PIXELS_PER_CELL - 1) / 2
    shapes = [np.hypot(yy, xx) <= 5, (np.abs(yy) <= 4) & (np.abs(xx) <= 4), np.abs(yy) <= 2,
              (np.hypot(yy, xx) <= 6) & (np.hypot(yy, xx) >= 3.5)]  # fmt: skip
    for prototype, row, col in parts:
        cell = picture[row * PIXELS_PER_CELL : (row + 1) * PIXELS_PER_CELL, col * PIXELS_PER_CELL : (col + 1) * PIXELS_PER_CELL]
        cell[shapes[prototype]] = COLOURS[prototype]
    return picture.astype(np.uint8)


def keypoints_of(parts: np.ndarray, n_prototypes: int) -> np.ndarray:
    """Each prototype's planted cell as a keypoint (x, y, visible) in the picture's pixels."""
    keypoints = np.zeros((len(parts), n_prototypes, 3))
    for i, sample in enumerate(parts):
        for prototype, row, col in sample:
            keypoints[i, prototype] = ((col + 0.5) * PIXELS_PER_CELL, (row + 0.5) * PIXELS_PER_CELL, 1)
    return keypoints


def screenshot(page: Path, destination: Path) -> bool:
    """The first screen of ``page`` in headless Chromium, as a JPEG; False when no Chromium is installed."""
    chromium = os.environ.get("QPM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return False
    with tempfile.TemporaryDirectory() as folder:
        png = Path(folder) / "shot.png"
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--window-size=1200,900", f"--screenshot={png}", page.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)  # fmt: skip
        buffer = io.BytesIO()
        Image.open(png).convert("RGB").save(buffer, format="JPEG", quality=85, optimize=True)
    destination.write_bytes(buffer.getvalue())
    return True


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="global_explanations", help="folder for report.html and the screenshot")
    parser.add_argument("--n-samples", type=int, default=400, help="samples of make_parts (half for training)")
    parser.add_argument("--no-screenshot", action="store_true", help="skip the Chromium screenshot")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    X, y, _, parts = make_parts(n_samples=args.n_samples, random_state=0, return_parts=True)
    half = len(X) // 2
    images = np.stack([draw(X[i], parts[i]) for i in range(len(X))])
    clf = QPMClassifier(random_state=0, **MODEL).fit(X[:half], y[:half])
    X_test, y_test, images_test = X[half:], y[half:], images[half:]

    atlas = feature_atlas(clf, X_test, y=y_test, k=8)
    sizes = np.tile(images.shape[2:0:-1], (len(X_test), 1))  # (width, height) of every picture
    alignment = part_alignment(atlas, None, keypoints_of(parts[half:], len(PART_NAMES)), sizes, radius=0.05)
    names = suggest_feature_names(alignment, PART_NAMES, min_share=0.5, features=atlas.features)
    path = write_report(clf, X_test, images_test, out / "report.html", y=y_test, atlas=atlas, feature_names=names,
                        alignment=alignment, part_names=PART_NAMES, class_names=[f"class {c}" for c in clf.classes_],
                        title="QPMClassifier on planted parts")  # fmt: skip
    print(f"test accuracy {atlas.accuracy:.3f}; report: {path} ({path.stat().st_size / 1e6:.2f} MB)")
    for feature, row in zip(atlas.features, alignment):
        print(f"feature {int(feature):3d}: {names.get(int(feature), '(unnamed)'):22s} part shares "
              + " ".join(f"{share:.2f}" for share in row))  # fmt: skip
    shot = None
    if not args.no_screenshot:
        shot = out / SCREENSHOT
        if screenshot(path, shot):
            print(f"screenshot: {shot}")
        else:
            shot = None
            print("no Chromium found (apt-get install chromium): no screenshot")
    return {"atlas": atlas, "alignment": alignment, "names": names, "report": path, "screenshot": shot,
            "parts": parts[half:]}  # fmt: skip


if __name__ == "__main__":
    main()
