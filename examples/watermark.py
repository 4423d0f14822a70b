"""Remove a spurious feature from a fitted model: a watermark that gives one class away in training.

On planted-parts data (``make_parts``: every class is a combination of localised parts), every
training image of one class also carries a watermark -- the same token in the top-left cell -- and
no test image has it. The classifier learns a feature for the watermark and gives it to that class,
so at test time that class loses a feature's worth of evidence and its images are misclassified.

The script finds the selected feature that fires on the watermark cell (its mean map value there
on the watermarked training images, against its mean over the other cells) and removes it with
``clf.edit(X, y, exclude=[feature])`` -- the dense stage is reused, only the selection and the
sparse stage are redone. The dense stage was trained on the watermarked images too, so more of its
channels respond to the watermark; the second edit excludes every channel that fires on the cell
at least ``--threshold`` times more than elsewhere. Test accuracy is measured before and after,
next to a model fitted on the same images without the watermark, over ``--seeds`` data draws.

Run:  python examples/watermark.py            # prints the numbers of docs/correcting.md
      python examples/watermark.py --json benchmarks/results/watermark.json

The numbers depend on the machine's floating-point details (CPU make, threads, library versions).
"""

import argparse
import json
import time

import numpy as np

from qpm_sklearn import QPMClassifier
from qpm_sklearn.datasets import make_parts

SETTINGS = dict(n_features=32, n_selected=8, n_per_class=2, hidden_size=64, n_layers=2, dense_epochs=15,
                sparse_epochs=10, random_state=0, device="cpu")
WATERMARKED_CLASS = 0
WATERMARK_CELL = (0, 0)


def watermark_data(seed=0, n_train=400, n_test=400, strength=6.0):
    """Train / test split of one ``make_parts`` draw; the watermark on every training image of one class."""
    X, y, _ = make_parts(n_samples=n_train + n_test, n_classes=4, grid=(6, 6), n_dims=16, n_distractors=1,
                         random_state=seed)  # fmt: skip
    rng = np.random.RandomState(seed + 1)
    direction = rng.normal(size=X.shape[-1]).astype(np.float32)
    direction *= strength / np.linalg.norm(direction)
    X_clean, y_train, X_test, y_test = X[:n_train], y[:n_train], X[n_train:], y[n_train:]
    marked = y_train == WATERMARKED_CLASS
    X_train = X_clean.copy()
    X_train[marked, WATERMARK_CELL[0], WATERMARK_CELL[1]] += direction
    return X_train, X_clean, y_train, X_test, y_test, marked


def watermark_ratios(clf, X_train, marked, stage="sparse"):
    """Per channel of ``stage``: its mean map value at the watermark cell on the watermarked images,
    over its mean value at the other cells of the same images (1: no preference for the cell)."""
    maps = clf.feature_maps(X_train[marked], stage=stage)  # (n, K, h, w)
    at_cell = maps[:, :, WATERMARK_CELL[0], WATERMARK_CELL[1]].mean(0)
    elsewhere = (maps.sum((2, 3)).mean(0) - at_cell) / (maps.shape[2] * maps.shape[3] - 1)
    return at_cell / (elsewhere + 1e-6)


def class_accuracy(clf, X, y, label):
    rows = y == label
    return float(np.mean(clf.predict(X[rows]) == label))


def scores(clf, X_test, y_test):
    return {"test_accuracy": float(clf.score(X_test, y_test)),
            "watermarked_class_test_accuracy": class_accuracy(clf, X_test, y_test, WATERMARKED_CLASS)}


def run(seed, threshold):
    """One draw: fit, the edits, a clean reference fit; the numbers as a dict."""
    X_train, X_clean, y_train, X_test, y_test, marked = watermark_data(seed)
    settings = dict(SETTINGS, random_state=seed)
    start = time.perf_counter()
    clf = QPMClassifier(**settings).fit(X_train, y_train)
    fit_seconds = time.perf_counter() - start
    # 1. the selected feature that fires on the watermark: what a look at the explanations shows
    ratios = watermark_ratios(clf, X_train, marked)
    top = int(clf.selected_features_[np.argmax(ratios)])
    start = time.perf_counter()
    drop_top = clf.edit(X_train, y_train, exclude=[top])
    edit_seconds = time.perf_counter() - start
    # 2. every channel of the dense stage that fires on the watermark cell `threshold` times more than elsewhere
    dense_ratios = watermark_ratios(clf, X_train, marked, stage="dense")
    firing = np.flatnonzero(dense_ratios >= threshold).tolist()
    drop_all = clf.edit(X_train, y_train, exclude=firing)
    drop_all_no_tuning = clf.edit(X_train, y_train, exclude=firing, sparse_epochs=0)
    clean = QPMClassifier(**settings).fit(X_clean, y_train)  # reference: the same images, no watermark
    return {
        "seed": seed,
        "watermark_feature": top,
        "watermark_feature_ratio": float(ratios.max()),
        "watermark_feature_used_by": [int(c) for c in clf.classes_ if top in clf.class_features(c)],
        "dense_channels_firing": firing,
        "train_accuracy": float(clf.score(X_train, y_train)),
        "before": scores(clf, X_test, y_test),
        "exclude_watermark_feature": scores(drop_top, X_test, y_test),
        "exclude_dense_channels_firing": scores(drop_all, X_test, y_test),
        "exclude_dense_channels_firing_sparse_epochs_0": scores(drop_all_no_tuning, X_test, y_test),
        "clean_fit": scores(clean, X_test, y_test),
        "fit_seconds": fit_seconds,
        "edit_seconds": edit_seconds,
        "edit": drop_all.selection_info_["edit"],
    }


ROWS = (("before", "fitted on watermarked data"), ("exclude_watermark_feature", "edit: exclude the watermark feature"),
        ("exclude_dense_channels_firing", "edit: exclude every channel firing on it"),
        ("exclude_dense_channels_firing_sparse_epochs_0", "  same, sparse_epochs=0"),
        ("clean_fit", "reference: fitted without watermark"))  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="data draws (default 3)")
    parser.add_argument("--threshold", type=float, default=10.0,
                        help="a channel fires on the watermark when its map is this many times higher there")
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    runs = [run(seed, args.threshold) for seed in range(args.seeds)]
    for result in runs:
        print(f"seed {result['seed']}: watermark feature {result['watermark_feature']} "
              f"({result['watermark_feature_ratio']:.0f}x higher on the watermark cell, used by class "
              f"{result['watermark_feature_used_by']}); dense channels firing on it: {result['dense_channels_firing']}")
    print(f"{'test accuracy (no watermark at test)':44s} {'all classes':>12s} {'class 0':>8s}")
    summary = {}
    for key, title in ROWS:
        overall = [r[key]["test_accuracy"] for r in runs]
        marked = [r[key]["watermarked_class_test_accuracy"] for r in runs]
        summary[key] = {"test_accuracy": float(np.mean(overall)), "watermarked_class_test_accuracy": float(np.mean(marked))}
        print(f"{title:44s} {np.mean(overall):12.3f} {np.mean(marked):8.3f}")
    fit, edit = np.mean([r["fit_seconds"] for r in runs]), np.mean([r["edit_seconds"] for r in runs])
    print(f"fit {fit:.1f} s, edit {edit:.1f} s (mean over {len(runs)} draws)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"runs": runs, "mean": summary, "threshold": args.threshold}, handle, indent=2)
    return {"runs": runs, "mean": summary}


if __name__ == "__main__":
    main()
