"""Quickstart: images → frozen DINOv2 patch embeddings → an interpretable QPM classifier.

Run with no arguments, it works offline: scikit-learn's digits images and a tiny
*untrained* DINOv2-with-registers backbone built and saved locally (no
pretrained weights can be downloaded here, so its features are random
projections and accuracies are far below what real weights give).

With real weights and your own images (one subfolder per class)::

    python examples/quickstart.py --model facebook/dinov2-with-registers-base --images /data/birds

``--model`` takes a hub id or a local folder saved with ``save_pretrained``. It
switches on the paper's configuration (224 px, the 2048-wide adapter, 25 + 25
epochs): a GPU job, which on a CPU takes hours. Without a GPU add ``--cpu-sized``
(112 px, a small adapter, 10 + 5 epochs; the README's CPU-sized configuration)::

    python examples/quickstart.py --model facebook/dinov2-with-registers-small --images /data/birds --cpu-sized

Work on your own images shows a progress bar per stage (``--quiet`` hides them); the
offline demo is quick and prints only its results.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline

from qpm_sklearn import Dinov2Embedder, QPMClassifier
from qpm_sklearn.cpu_cost import SlowCPUFitWarning
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


# The README's configuration for machines without a GPU: the adapter's cost grows with
# hidden_size² · n_layers per patch token, so a smaller adapter on an 8 × 8 grid (112 px)
# trained for fewer epochs fits in seconds to minutes where the paper's takes hours.
CPU_SIZED = dict(n_features=64, n_selected=30, n_per_class=3, hidden_size=256, n_layers=2,
                 dense_epochs=10, sparse_epochs=5)  # fmt: skip
CPU_SIZED_IMAGE_SIZE = 112
PAPER_IMAGE_SIZE = 224


def on_a_cpu(device):
    """Whether ``device`` (None: auto, as the estimators choose) runs on the CPU.

    An accelerator this machine lacks counts as the CPU: the estimators fall back to it.
    """
    import torch

    mps = getattr(torch.backends, "mps", None)
    available = {"cuda": torch.cuda.is_available(), "mps": mps is not None and mps.is_available()}
    if device is None:
        return not any(available.values())
    return not available.get(torch.device(device).type, False)


def own_data_configuration(cpu_sized, device, seed, verbose):
    """The classifier and image size for ``--model``: the paper's, or the CPU-sized one.

    The paper's configuration on a CPU warns once, naming the CPU-sized option: it takes
    hours there and would otherwise run for minutes before printing anything.
    """
    if cpu_sized:
        classifier = QPMClassifier(**CPU_SIZED, device=device, random_state=seed, verbose=verbose)
        return classifier, CPU_SIZED_IMAGE_SIZE
    if on_a_cpu(device):
        warnings.warn(
            "--model runs the paper's GPU configuration (224 px, a 2048-wide adapter, 25 + 25 epochs); on a CPU "
            "this takes hours. Add --cpu-sized for the CPU-sized configuration (112 px, a small adapter, "
            "10 + 5 epochs).",
            UserWarning,
            stacklevel=2,
        )
    return QPMClassifier(device=device, random_state=seed, verbose=verbose), PAPER_IMAGE_SIZE


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="hub id or local folder of a DINOv2 model (default: a tiny random one)")
    parser.add_argument("--images", help="folder with one subfolder of images per class (default: digits)")
    parser.add_argument("--out", default="quickstart_explanation.png", help="where to save the figure")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: auto)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu-sized", action="store_true",
                        help="with --model: the CPU-sized configuration instead of the paper's GPU one")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars on your own images")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.cpu_sized and not args.model:
        parser.error("--cpu-sized sizes the --model configuration; the offline demo is CPU-sized already")
    # Own images or a real backbone can take minutes: a bar per stage unless --quiet. The
    # offline demo takes seconds and prints only its results.
    verbose = int(bool(args.model or args.images) and not args.quiet)

    def stage(message):
        if verbose:
            print(f"[{time.perf_counter() - start:6.1f} s] {message}", file=sys.stderr, flush=True)

    if args.images:
        images, labels, class_names = folder_images(args.images)
    else:
        images, labels, class_names = digits_images()
    if args.model:
        model = args.model
        classifier, image_size = own_data_configuration(args.cpu_sized, args.device, args.seed, verbose)
    else:
        print("No pretrained weights are reachable offline: building a tiny UNTRAINED DINOv2-with-registers")
        print("backbone (random weights) for this demo. Pass --model facebook/dinov2-with-registers-base")
        print("on a machine with the weights for real features.\n")
        model = str(save_random_backbone(Path(tempfile.mkdtemp()) / "tiny-dinov2", "tiny", hidden_size=64))
        image_size = 56
        classifier = QPMClassifier(
            n_features=64, n_selected=20, n_per_class=3, hidden_size=256, n_layers=2,
            dense_epochs=15, sparse_epochs=10, dense_batch_size=64, sparse_batch_size=64,
            device=args.device, random_state=args.seed, verbose=verbose,
        )  # fmt: skip

    indices = np.arange(len(labels))
    train, test = train_test_split(indices, test_size=0.25, stratify=labels, random_state=args.seed)
    pick = lambda idx: images[idx] if isinstance(images, np.ndarray) else [images[i] for i in idx]  # noqa: E731

    pipeline = make_pipeline(
        Dinov2Embedder(model=model, image_size=image_size, device=args.device, local_files_only=not args.model,
                       verbose=verbose),
        classifier,
    )  # fmt: skip
    stage(f"embedding {len(train)} training images at {image_size} px, then fitting the dense and the QPM model")
    with warnings.catch_warnings():
        # The paper's configuration on a CPU was already warned about above, naming --cpu-sized.
        warnings.simplefilter("ignore", SlowCPUFitWarning)
        pipeline.fit(pick(train), labels[train])
    qpm = pipeline[-1]
    stage(f"embedding {len(test)} test images")
    embeddings = pipeline[0].transform(pick(test))
    stage("done: results")
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
    return {"dense_accuracy": float(dense_accuracy), "sparse_accuracy": float(sparse_accuracy),
            "pipeline": pipeline, "test_indices": test}  # fmt: skip


if __name__ == "__main__":
    main()
