"""``qpm-sklearn fit``: fit a QPMClassifier on an image folder or on embeddings, and save it."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from ..cpu_cost import SlowCPUFitWarning
from ._console import note, say
from ._errors import CommandError, UsageError
from ._inputs import (
    add_embedder_options,
    check_two_classes,
    embed,
    embedder_params,
    key_value,
    read_embeddings,
    read_feature_names,
    read_labels,
)
from ._outputs import check_output_file, written_together
from ._sidecar import stage_sidecar

#: ``--cpu-sized``: the CPU-sized configuration of docs/guide.md ("On a CPU", and the quickstart's
#: ``--cpu-sized``): 112 px (8 x 8 patches; the small backbone unless --model names one), a smaller
#: adapter and fewer epochs. ``-p`` and the embedder options win.
CPU_SIZED = dict(n_features=64, n_selected=30, n_per_class=3, hidden_size=256, n_layers=2, dense_epochs=10, sparse_epochs=5)
CPU_SIZED_EMBEDDER = dict(model="facebook/dinov2-with-registers-small", image_size=112)
# The parameters that size the work; with none of them given, a CPU fit runs the paper's GPU sizes.
_SIZE_PARAMS = ("n_features", "hidden_size", "n_layers", "dense_epochs", "sparse_epochs")


def model_path(out: str) -> Path:
    """The file :meth:`QPMClassifier.save` writes for ``out`` (``.npz`` appended when missing)."""
    path = Path(out).expanduser()
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def _check_feature_names(names, n_features: int, n_selected: int, path: str) -> None:
    """What can be checked before training: a list's length, a dict's keys as channel ids."""
    if isinstance(names, list) and len(names) != n_selected:
        raise CommandError(f"--feature-names {path}: a list needs one name per selected feature ({n_selected}); got {len(names)}")
    if isinstance(names, dict):
        for key in names:
            if not str(key).strip().isdecimal() or not 0 <= int(key) < n_features:
                raise CommandError(f"--feature-names {path}: key {key!r} is not an adapter channel id 0..{n_features - 1}")


def _warn_paper_sizes_on_cpu(params: dict, cpu_sized: bool) -> bool:
    """Say so when the paper's GPU-sized configuration is about to run on the CPU; True when it did."""
    from .._device import resolve_device

    if not cpu_sized and not any(name in params for name in _SIZE_PARAMS):
        if resolve_device(params.get("device")).type == "cpu":
            note(
                "qpm-sklearn fit: warning: fitting the paper's GPU-sized configuration on the CPU (hours for a few "
                "thousand images); add --cpu-sized for the CPU-sized one (docs/cli.md)"
            )
            return True
    return False


def _read_training_data(args: argparse.Namespace) -> tuple:
    """``(X or None, y, image paths or None)``: the inputs checked, nothing embedded yet."""
    if args.embeddings is not None:
        if args.images is not None or args.labels is None:
            raise UsageError("fit takes either IMAGES (class subfolders) or --embeddings with --labels")
        X = read_embeddings(args.embeddings)
        return X, read_labels(args.labels, len(X)), None
    if args.images is None:
        raise UsageError("fit needs IMAGES (a folder of class subfolders) or --embeddings and --labels")
    from ..datasets import load_image_folder

    try:
        data = load_image_folder(args.images, labels="names")
    except (OSError, ValueError) as exc:
        raise CommandError(f"IMAGES {args.images}: {exc}") from None
    check_two_classes(data.labels, f"IMAGES {args.images}")
    return None, data.labels, data.paths


def run(args: argparse.Namespace) -> int:
    # Everything that can be checked is checked before the classifier (and torch) is imported, and
    # before any embedding or training starts.
    out = check_output_file(model_path(args.out), "--out")
    X, y, image_paths = _read_training_data(args)
    names = read_feature_names(args.feature_names)
    params = {**(CPU_SIZED if args.cpu_sized else {}), **dict(args.param or [])}
    from ..classifier import QPMClassifier

    try:
        clf = QPMClassifier(verbose=not args.quiet, **params)
    except TypeError as exc:  # an unknown -p NAME
        raise UsageError(f"-p: {exc}") from None
    settings = clf.get_params()
    if names is not None:
        _check_feature_names(names, settings["n_features"], settings["n_selected"], args.feature_names)
        clf.set_params(feature_names=names)
    warned = _warn_paper_sizes_on_cpu(params, args.cpu_sized)
    embedder = None
    if image_paths is not None:
        embedder = {**(CPU_SIZED_EMBEDDER if args.cpu_sized else {}), **embedder_params(args)}
        X = embed(image_paths, embedder, args)
    with warnings.catch_warnings():
        if warned:  # the classifier's own estimate would say the same once more
            warnings.simplefilter("ignore", SlowCPUFitWarning)
        clf.fit(X, y)
    summary = clf.summary()  # checks the feature names against the selection, before anything is written
    with written_together() as outputs:
        staged = outputs.save(out, clf.save, primary=True)
        stage_sidecar(outputs, out, staged, embedder)  # carries the model's checksum (see _sidecar)
    say(f"model written to {out} ({len(clf.classes_)} classes, {len(clf.selected_features_)} features)")
    say(summary)
    return 0


def register(commands, common: argparse.ArgumentParser) -> None:
    """Add ``fit`` to the subcommands."""
    parser = commands.add_parser(
        "fit",
        parents=[common],
        help="fit a QPMClassifier and save it",
        description="Fit a QPMClassifier on a folder of class subfolders (IMAGES/<class>/<image>; embedded "
        "through --embedding-cache, so a folder already embedded is read back) or on --embeddings with --labels.",
        epilog="Classifier parameters: -p NAME=VALUE, repeatable, e.g. -p n_selected=30 -p dense_epochs=10 "
        "(values are read as JSON; see QPMClassifier for the names).",
    )
    parser.add_argument("images", nargs="?", default=None, metavar="IMAGES", help="folder with one subfolder per class")
    parser.add_argument("--embeddings", default=None, metavar="FILE.npy", help="embeddings instead of images")
    parser.add_argument("--labels", default=None, metavar="FILE", help="with --embeddings: one label per line (UTF-8)")
    parser.add_argument("--out", required=True, metavar="MODEL.npz", help="where to save the model (.npz appended when missing)")
    parser.add_argument("-p", "--param", action="append", type=key_value, metavar="NAME=VALUE", help="a classifier parameter")
    parser.add_argument(
        "--cpu-sized", action="store_true",
        help="the CPU-sized configuration (112 px, the small backbone unless --model is given, a smaller adapter, "
        "10 + 5 epochs) instead of QPMClassifier's defaults, which are the paper's GPU sizes; -p and the "
        "embedder options override it",
    )  # fmt: skip
    parser.add_argument("--feature-names", default=None, metavar="FILE.json", help="names of features: {id: name} or a list")
    add_embedder_options(parser)
    parser.set_defaults(handler=run)
