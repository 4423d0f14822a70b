"""Explain a QPM classifier on synthetic parts data, where the truth is known.

Every class of ``make_parts`` is a combination of two localised part prototypes shared between
classes, placed at random cells among noise and clutter. A small QPMClassifier is fitted, its
table row is printed for the dense stage and the sparse (QPM) stage, and four figures are written:

* ``explanation.png``  - one test prediction: evidence map and the features that add up to it;
* ``evidence_dense_vs_qpm.png`` - where the dense and the QPM model find their class evidence;
* ``comparison.png``   - the features two classes share and those that tell them apart;
* ``assignment.png``   - the global class x feature assignment.

Run:  python examples/explain_parts.py                     # figures into the current directory
      python examples/explain_parts.py --out docs/figures   # regenerate the figures of docs/explanations.md

The numbers and feature ids depend on the machine's floating-point details (CPU make, threads,
library versions), so another machine can pick other features and print other digits; the picture
(QPM evidence on the parts, dense evidence spread out) is what stays.
"""

import argparse
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

from qpm_sklearn import QPMClassifier  # noqa: E402
from qpm_sklearn.datasets import make_parts  # noqa: E402
from qpm_sklearn.explanation import upsample_maps  # noqa: E402
from qpm_sklearn.metrics import evaluate  # noqa: E402
from qpm_sklearn.plotting import plot_assignment, plot_class_comparison, plot_explanation  # noqa: E402

PIXELS_PER_CELL = 14


def token_image(grid):
    """A grey 'image' of a patch grid: the token norm per cell, 14 px per cell (parts and clutter are bright)."""
    norm = np.linalg.norm(grid, axis=-1)
    norm = (norm - norm.min()) / max(norm.max() - norm.min(), 1e-12)
    return np.kron(norm, np.ones((PIXELS_PER_CELL, PIXELS_PER_CELL)))


def evidence(maps, weights):
    """The class evidence map sum_j w_j M_j (what Plausibility scores; docs/method.md#plausibility)."""
    return np.einsum("nk,nkhw->nhw", weights, maps)


def plot_dense_vs_qpm(clf, X, masks, n_show=4):
    """Image, dense evidence and QPM evidence for a few samples, part cells outlined."""
    from matplotlib.figure import Figure

    rows = {}
    for stage in ("dense", "sparse"):
        weights = clf.class_weights(stage=stage)
        codes = np.searchsorted(clf.classes_, clf.predict(X[:n_show], stage=stage))
        rows[stage] = evidence(clf.feature_maps(X[:n_show], stage=stage), weights[codes])
    fig = Figure(figsize=(3 * n_show, 9), layout="constrained")
    axes = fig.subplots(3, n_show)
    size = tuple(PIXELS_PER_CELL * s for s in X.shape[1:3])
    for i in range(n_show):
        image = token_image(X[i])
        panels = [
            ("image (token norm)", None),
            ("dense model evidence", rows["dense"][i]),
            ("QPM evidence", rows["sparse"][i]),
        ]
        for ax, (title, heat) in zip(axes[:, i], panels):
            ax.imshow(image, cmap="gray")
            if heat is not None:
                ax.imshow(upsample_maps(heat, size), cmap="jet", alpha=0.55, vmin=0, vmax=1)
            ax.contour(np.kron(masks[i], np.ones((PIXELS_PER_CELL, PIXELS_PER_CELL))), levels=[0.5], colors="white")
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("class evidence Σ w·map; white outline = the parts that decide the class")
    return fig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".", help="folder for the PNG files (default: the current directory)")
    parser.add_argument("--random-state", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    X, y, masks = make_parts(n_samples=300, random_state=args.random_state)
    X_train, y_train, X_test, y_test, masks_test = X[:200], y[:200], X[200:], y[200:], masks[200:]
    clf = QPMClassifier(
        n_features=32, hidden_size=64, n_layers=2, n_selected=4, n_per_class=2,
        dense_epochs=30, sparse_epochs=20, dense_batch_size=32, sparse_batch_size=32, dense_lr=1e-2,
        device="cpu", random_state=args.random_state,
    ).fit(X_train, y_train)

    columns = ["Accuracy", "Plausibility", "SID@5", "Class-Independence", "Contrastiveness"]
    print(f"{'stage':<8}" + "".join(f"{key:>20}" for key in columns))
    for stage in ("dense", "sparse"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # SID@5 is undefined with 2 features per class
            row = evaluate(
                clf, X_test, y_test, masks=masks_test, X_train=X_train, y_train=y_train, stage=stage, random_state=0
            )
        cells = [row.get(key) for key in columns]
        print(f"{stage:<8}" + "".join(f"{'-' if v is None else f'{100 * v:.1f}':>20}" for v in cells))

    class_names = [f"class {c}" for c in clf.classes_]
    expl = clf.explain(X_test[:1])
    fig = plot_explanation(expl, index=0, image=token_image(X_test[0]), class_names=class_names, true_label=y_test[0])
    fig.savefig(out / "explanation.png", dpi=100)
    print(f"\nexplanation.png: test sample 0, true class {y_test[0]}, predicted {expl.prediction[0]}, "
          f"features {expl.features[0].tolist()}")
    plot_dense_vs_qpm(clf, X_test, masks_test).savefig(out / "evidence_dense_vs_qpm.png", dpi=80)

    # Two classes that share a feature, with one test example of each.
    pairs = [(a, b) for a in clf.classes_ for b in clf.classes_ if a < b and len(clf.compare_classes(a, b)["shared"])]
    a, b = pairs[0] if pairs else clf.classes_[:2]
    examples = [int(np.flatnonzero(y_test == a)[0]), int(np.flatnonzero(y_test == b)[0])]
    plot_class_comparison(
        clf, a, b, X=X_test[examples], images=[token_image(X_test[i]) for i in examples], class_names=class_names
    ).savefig(out / "comparison.png", dpi=100)
    shared = clf.compare_classes(a, b)["shared"].tolist()
    print(f"comparison.png: class {a} vs class {b}, shared features {shared}")
    plot_assignment(clf, class_names=class_names).savefig(out / "assignment.png", dpi=100)
    print(f"figures written to {out}/")


if __name__ == "__main__":
    main()
