"""Quickstart: images → frozen DINOv2 patch embeddings → an interpretable QPM classifier.

Run with no arguments, it works offline: scikit-learn's digits images and a tiny
*untrained* DINOv2-with-registers backbone built and saved locally (no
pretrained weights can be downloaded here, so its features are random
projections and accuracies are far below what real weights give).

With real weights and your own images (one subfolder per class)::

    python examples/quickstart.py --model facebook/dinov2-with-registers-base --images /data/birds

``--model`` takes a hub id or a local folder saved with ``save_pretrained``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline

from qpm_sklearn import Dinov2Embedder, QPMClassifier
from qpm_sklearn.testing import save_random_backbone


def digits_images():
    """The 1,797 8×8 digits as uint8 grey images (n, 8, 8), with their labels."""
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return images, digits.target, [str(c) for c in digits.target_names]


def folder_images(root):
    from qpm_sklearn.datasets import load_image_folder

    data = load_image_folder(root)
    return list(data.paths), np.asarray(data.labels), list(data.class_names)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="hub id or local folder of a DINOv2 model (default: a tiny random one)")
    parser.add_argument("--images", help="folder with one subfolder of images per class (default: digits)")
    parser.add_argument("--out", default="quickstart_explanation.png", help="where to save the figure")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: auto)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()

    if args.images:
        images, labels, class_names = folder_images(args.images)
    else:
        images, labels, class_names = digits_images()
    if args.model:
        model, image_size = args.model, 224
        classifier = QPMClassifier(device=args.device, random_state=args.seed)
    else:
        print("No pretrained weights are reachable offline: building a tiny UNTRAINED DINOv2-with-registers")
        print("backbone (random weights) for this demo. Pass --model facebook/dinov2-with-registers-base")
        print("on a machine with the weights for real features.\n")
        model = str(save_random_backbone(Path(tempfile.mkdtemp()) / "tiny-dinov2", "tiny", hidden_size=64))
        image_size = 56
        classifier = QPMClassifier(
            n_features=64, n_selected=20, n_per_class=3, hidden_size=256, n_layers=2,
            dense_epochs=15, sparse_epochs=10, dense_batch_size=64, sparse_batch_size=64,
            device=args.device, random_state=args.seed,
        )  # fmt: skip

    indices = np.arange(len(labels))
    train, test = train_test_split(indices, test_size=0.25, stratify=labels, random_state=args.seed)
    pick = lambda idx: images[idx] if isinstance(images, np.ndarray) else [images[i] for i in idx]  # noqa: E731

    pipeline = make_pipeline(
        Dinov2Embedder(model=model, image_size=image_size, device=args.device, local_files_only=not args.model),
        classifier,
    )
    pipeline.fit(pick(train), labels[train])
    qpm = pipeline[-1]
    embeddings = pipeline[0].transform(pick(test))
    dense_accuracy = np.mean(qpm.predict(embeddings, stage="dense") == labels[test])
    sparse_accuracy = np.mean(qpm.predict(embeddings) == labels[test])
    print(f"test accuracy  dense model : {dense_accuracy:.3f}  ({qpm.n_features} features, all classes)")
    print(f"test accuracy  QPM model   : {sparse_accuracy:.3f}  ({qpm.n_selected} features, "
          f"{qpm.n_per_class} per class)")
    info = qpm.selection_info_
    print(f"selection: objective {info['objective']:.3f}, upper bound {info['upper_bound']:.3f}, "
          f"gap {100 * info['gap']:.2f} %, {info['seconds']:.2f} s\n")

    print("class -> features (adapter channel ids)")
    for code, label in enumerate(qpm.classes_):
        name = class_names[label] if isinstance(label, (int, np.integer)) else str(label)
        print(f"  {name:>12}: {' '.join(f'{f:4d}' for f in qpm.class_features(label))}")

    explanation = qpm.explain(embeddings[:1])
    predicted, true = explanation.prediction[0], labels[test[0]]
    verdict = "correct" if predicted == true else "MISCLASSIFIED"
    features = ", ".join(f"{f} ({c:+.2f})" for f, c in zip(explanation.features[0], explanation.contributions[0]))
    print(f"\nfirst test image: true {class_names[true]}, predicted {class_names[predicted]} ({verdict}); its logit "
          f"= {explanation.intercept[0]:+.2f} + sum of features {features}")
    print("(a contribution compares the feature with its value on an average training image: negative = weaker)")
    try:
        from qpm_sklearn.plotting import plot_explanation
    except ImportError:
        print("matplotlib is not installed: no figure (pip install 'qpm_sklearn[plot]').")
    else:
        from qpm_sklearn.images import load_resized

        image = load_resized(pick(test[:1])[0], 0, image_size)  # squashed as the backbone saw it
        figure = plot_explanation(explanation, index=0, image=image, class_names=class_names, true_label=true)
        figure.savefig(args.out, dpi=100)
        print(f"explanation figure saved to {args.out}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return {"dense_accuracy": float(dense_accuracy), "sparse_accuracy": float(sparse_accuracy)}


if __name__ == "__main__":
    main()
