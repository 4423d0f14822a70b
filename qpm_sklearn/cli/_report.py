"""``qpm-sklearn report``: one self-contained HTML page of the whole model, for a saved model and its images."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._console import say
from ._errors import CommandError, UsageError
from ._inputs import (
    add_embedder_options,
    embed,
    embedder_params_for_model,
    image_files,
    load_model,
    model_file,
    read_embeddings,
    read_feature_names,
    read_labels,
)
from ._outputs import check_output_file


def run(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise UsageError(f"-k {args.k}: expected a positive number of images per feature")
    # Inputs and the output file are checked before the model (and torch) is loaded.
    model_path = model_file(args.model_file)
    names = read_feature_names(args.feature_names)
    files = image_files(args.images)
    y = None if args.labels is None else read_labels(args.labels, len(files))
    X = None
    if args.embeddings is not None:
        X = read_embeddings(args.embeddings)
        if len(X) != len(files):
            raise CommandError(
                f"--embeddings {args.embeddings}: {len(X)} rows for {len(files)} images; expected one row per image, "
                "in the order the images are listed"
            )
    # The saved settings give the image size and preprocessing of the figures even for --embeddings.
    params = embedder_params_for_model(model_path, args, "report", warn_defaults=X is None)
    out = check_output_file(Path(args.out).expanduser(), "--out")
    clf = load_model(model_path, names)
    if X is None:
        X = embed(files, params, args)
    from ..report import write_report

    preprocessing = params.get("preprocessing", "imagenet")
    written = write_report(
        clf, X, files, out, y=y, k=args.k, image_size=params.get("image_size"),
        preprocessing="imagenet" if preprocessing == "auto" else preprocessing,
    )  # fmt: skip
    size = written.stat().st_size / 2**20
    say(f"report of {len(clf.classes_)} classes and {len(clf.selected_features_)} features written to {written} ({size:.1f} MB)")
    return 0


def register(commands, common: argparse.ArgumentParser) -> None:
    """Add ``report`` to the subcommands."""
    parser = commands.add_parser(
        "report",
        parents=[common],
        help="write a self-contained HTML report of the whole model",
        description="Write one static HTML file (images embedded, no network) showing what every selected "
        "feature responds to across IMAGES, and each class's features on its typical images. Images are "
        "embedded with the settings saved beside the model, or read from --embeddings (one row per image, "
        "in the order the images are listed; folders are searched recursively and sorted).",
    )
    parser.add_argument("model_file", metavar="MODEL.npz", help="a model written by 'qpm-sklearn fit'")
    parser.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders")
    parser.add_argument("--out", required=True, metavar="REPORT.html", help="the HTML file to write")
    parser.add_argument("--embeddings", default=None, metavar="FILE.npy", help="embeddings of IMAGES instead of embedding them")
    parser.add_argument("--labels", default=None, metavar="FILE", help="true labels, one per image: accuracies and class panels")
    parser.add_argument("-k", type=int, default=8, help="top images per feature (default 8)")
    parser.add_argument("--feature-names", default=None, metavar="FILE.json", help="names of features: {id: name} or a list")
    add_embedder_options(parser)
    parser.set_defaults(handler=run)
