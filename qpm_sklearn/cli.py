"""The ``qpm-sklearn`` command line: embed images, fit, explain, and reproduce the paper's table.

::

    qpm-sklearn embed photos/ --embedding-cache emb/           # resumable: rerun to continue
    qpm-sklearn fit photos/ --embedding-cache emb/ --out model.npz -p n_selected=30
    qpm-sklearn explain model.npz photos/test/ --embedding-cache emb/ --out explained/
    qpm-sklearn report model.npz photos/test/ --embedding-cache emb/ --out report.html
    qpm-sklearn table --dataset cub --root ~/datasets --cache-dir cache/

``fit`` reads labels from class subfolders (``photos/<class>/<image>``) or takes an array of
embeddings with a labels file. The model is written with :meth:`QPMClassifier.save` (no pickle);
beside it, ``<model>.embedder.json`` keeps the embedder's settings, so ``explain`` embeds new
images the way the training images were embedded.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "build_parser"]

_EMBEDDER_SUFFIX = ".embedder.json"


# ------------------------------------------------------------------- helpers
def _key_value(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` with VALUE read as JSON (numbers, true/false, null, lists), else as a string."""
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (e.g. n_selected=30); got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def _image_files(inputs: Sequence[str]) -> list[str]:
    """Image files named in ``inputs``: files as given, folders searched recursively (sorted)."""
    from .datasets._folder import IMAGE_EXTENSIONS

    files: list[str] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(
                str(p)
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise SystemExit(f"error: {item}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this folder")
            files += found
        elif path.is_file():
            files.append(str(path))
        else:
            raise SystemExit(f"error: {item}: no such file or folder")
    return files


def _embedder_params(args: argparse.Namespace) -> dict:
    params = {
        "model": args.model,
        "output": args.output,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "device": args.device,
        "output_dtype": args.output_dtype,
        "local_files_only": args.local_files_only,
    }
    return {name: value for name, value in params.items() if value is not None}


def _make_embedder(params: dict, args: argparse.Namespace):
    from .embedding import Dinov2Embedder

    cache = {"embedding_cache": args.embedding_cache} if args.embedding_cache else {}
    return Dinov2Embedder(**params, **cache, verbose=not args.quiet)


def _embed(files: list[str], params: dict, args: argparse.Namespace) -> np.ndarray:
    if not args.quiet:
        sys.stderr.write(f"embedding {len(files)} images with {params.get('model', 'the default model')}\n")
    return _make_embedder(params, args).transform(files)


def _read_labels(path: str, n: int) -> np.ndarray:
    """One label per line (blank lines and a trailing newline ignored); numbers stay numbers."""
    lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if len(lines) != n:
        raise SystemExit(f"error: --labels {path}: expected {n} labels (one per embedding row); found {len(lines)}")
    try:
        return np.array([int(line) for line in lines])
    except ValueError:
        return np.array(lines)


def _read_feature_names(path: str | None) -> dict | list | None:
    if path is None:
        return None
    names = json.loads(Path(path).read_text())
    if not isinstance(names, (dict, list)):
        raise SystemExit(f"error: --feature-names {path}: expected a JSON object id -> name or a list of names")
    return names


def _embedder_file(model_path: Path) -> Path:
    return model_path.with_name(model_path.name.removesuffix(".npz") + _EMBEDDER_SUFFIX)


def _write(text: str) -> None:
    sys.stdout.write(text + "\n")


# ---------------------------------------------------------------- commands
def _cmd_embed(args: argparse.Namespace) -> int:
    files = _image_files(args.images)
    if args.save is None and args.embedding_cache is None:
        raise SystemExit("error: embed needs --embedding-cache (resumable) or --save (an .npy file), or both")
    X = _embed(files, _embedder_params(args), args)
    if args.save:
        save = Path(args.save)
        np.save(save, np.asarray(X))
        save.with_suffix(".paths.txt").write_text("\n".join(files) + "\n")
        _write(f"embeddings {tuple(X.shape)} written to {save} (rows in the order of {save.with_suffix('.paths.txt')})")
    if args.embedding_cache:
        _write(f"{len(files)} images embedded {tuple(X.shape)}; cache: {args.embedding_cache}")
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from .classifier import QPMClassifier

    embedder = None
    if args.embeddings is not None:
        if args.images is not None or args.labels is None:
            raise SystemExit("error: fit takes either IMAGES (class subfolders) or --embeddings with --labels")
        X = np.load(args.embeddings, mmap_mode="r")
        y = _read_labels(args.labels, len(X))
    elif args.images is not None:
        from .datasets import load_image_folder

        data = load_image_folder(args.images)
        embedder = _embedder_params(args)
        X = _embed(data.paths, embedder, args)
        y = np.asarray(data.class_names)[data.labels]
    else:
        raise SystemExit("error: fit needs IMAGES (a folder of class subfolders) or --embeddings and --labels")
    params = dict(args.param or [])
    if args.feature_names:
        params["feature_names"] = _read_feature_names(args.feature_names)
    try:
        clf = QPMClassifier(verbose=not args.quiet, **params)
    except TypeError as exc:  # an unknown -p NAME
        raise SystemExit(f"error: -p: {exc}") from exc
    clf.fit(X, y)
    path = clf.save(args.out)
    if embedder is not None:
        _embedder_file(path).write_text(json.dumps(embedder, indent=2) + "\n")
    _write(f"model written to {path} ({len(clf.classes_)} classes, {len(clf.selected_features_)} features)")
    _write(clf.summary())
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from .classifier import QPMClassifier

    model_path = Path(args.model_file)
    clf = QPMClassifier.load(model_path)
    if args.feature_names:
        clf.set_params(feature_names=_read_feature_names(args.feature_names))
    if args.embeddings is not None:
        X = np.load(args.embeddings, mmap_mode="r")
        names = [str(i) for i in range(len(X))]
        files = None
    else:
        if not args.images:
            raise SystemExit("error: explain needs IMAGES or --embeddings")
        files = _image_files(args.images)
        stored = _embedder_file(model_path)
        params = json.loads(stored.read_text()) if stored.exists() else {}
        params.update(_embedder_params(args))  # options on the command line win
        X = _embed(files, params, args)
        names = files
    explanation = clf.explain(X)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frame = explanation.to_frame()
    frame.insert(1, "input", np.asarray(names, dtype=object)[frame["sample"].to_numpy()])
    frame.to_csv(out / "contributions.csv", index=False)
    written = 0
    if files is not None and args.figures > 0:
        from .images import load_resized
        from .plotting import plot_explanation

        size = int(params.get("image_size") or 224)
        for i, file in enumerate(files[: args.figures]):
            figure = plot_explanation(explanation, index=i, image=load_resized(file, i, size))
            figure.savefig(out / f"{i:04d}_{Path(file).stem}.png", dpi=args.dpi)
            written += 1
    _write(f"{len(X)} explained: {out / 'contributions.csv'} ({len(frame)} rows), {written} figures in {out}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import report_command

    files = _image_files(args.images)
    embeddings = args.embeddings
    if embeddings is not None and len(np.load(embeddings, mmap_mode="r")) != len(files):
        raise SystemExit(f"error: --embeddings {embeddings}: expected one row per image ({len(files)})")
    y = None if args.labels is None else _read_labels(args.labels, len(files))
    try:
        message = report_command(
            args.model_file, files, args.out, embeddings=embeddings, y=y, k=args.k,
            feature_names=_read_feature_names(args.feature_names), embedder_params=_embedder_params(args),
            embedding_cache=args.embedding_cache, quiet=args.quiet,
        )  # fmt: skip
    except (ValueError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
    _write(message)
    return 0


def _cmd_table(argv: list[str]) -> int:
    from ._paper_table import main as paper_table

    return paper_table(argv, prog="qpm-sklearn table")


# ------------------------------------------------------------------ parser
def _add_embedder_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("embedder (see Dinov2Embedder)")
    group.add_argument("--model", default=None, help="hub id or local folder of the backbone (default: DINOv2-with-registers base)")
    group.add_argument(
        "--output", choices=("patch", "cls", "mean"), default=None, help="what to keep per image (default: patch)"
    )
    group.add_argument("--image-size", type=int, default=None, help="input side in pixels (default: 224)")
    group.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: 64)")
    group.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    group.add_argument("--output-dtype", choices=("float32", "float16"), default=None, help="dtype of the embeddings")
    group.add_argument("--local-files-only", action="store_true", default=None, help="never contact the Hugging Face hub")
    group.add_argument("--embedding-cache", default=None, metavar="DIR", help="embedding cache folder: reruns read it back")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """The options ``fit`` and ``explain`` share: embeddings given directly, feature names, quiet, embedder."""
    parser.add_argument("--embeddings", default=None, metavar="FILE.npy", help="embeddings instead of images")
    parser.add_argument("--feature-names", default=None, metavar="FILE.json", help="names of features: {id: name} or a list")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _add_embedder_options(parser)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``qpm-sklearn`` (``table``'s own options are the harness's)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="qpm-sklearn",
        description="Globally interpretable image classifiers on frozen DINOv2 features (DINO-QPM).",
        epilog="Run 'qpm-sklearn COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"qpm_sklearn {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    embed = commands.add_parser(
        "embed",
        help="embed a folder of images into the embedding cache",
        description="Embed images (files or folders, searched recursively) with a frozen backbone. With "
        "--embedding-cache every finished batch is kept: an interrupted run continues where it stopped.",
    )
    embed.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders")
    embed.add_argument("--save", default=None, metavar="FILE.npy", help="also write the embeddings (and FILE.paths.txt)")
    embed.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_embedder_options(embed)
    embed.set_defaults(handler=_cmd_embed)

    fit = commands.add_parser(
        "fit",
        help="fit a QPMClassifier and save it",
        description="Fit a QPMClassifier on a folder of class subfolders (IMAGES/<class>/<image>; embedded "
        "through --embedding-cache, so a folder already embedded is read back) or on --embeddings with --labels.",
        epilog="Classifier parameters: -p NAME=VALUE, repeatable, e.g. -p n_selected=30 -p dense_epochs=10 "
        "(values are read as JSON; see QPMClassifier for the names).",
    )
    fit.add_argument("images", nargs="?", default=None, metavar="IMAGES", help="folder with one subfolder per class")
    fit.add_argument("--labels", default=None, metavar="FILE", help="with --embeddings: one label per line")
    fit.add_argument("--out", required=True, metavar="MODEL.npz", help="where to save the model")
    fit.add_argument("-p", "--param", action="append", type=_key_value, metavar="NAME=VALUE", help="a classifier parameter")
    _add_model_options(fit)
    fit.set_defaults(handler=_cmd_fit)

    explain = commands.add_parser(
        "explain",
        help="explain predictions: a CSV of contributions and figures",
        description="Explain the predictions of a saved model: OUT/contributions.csv (one row per image and "
        "feature of its predicted class) and a figure per image. Images are embedded with the settings "
        "saved beside the model (options given here override them).",
    )
    explain.add_argument("model_file", metavar="MODEL.npz", help="a model written by 'qpm-sklearn fit'")
    explain.add_argument("images", nargs="*", metavar="IMAGES", help="image files or folders")
    explain.add_argument("--out", required=True, metavar="DIR", help="folder for contributions.csv and the figures")
    explain.add_argument("--figures", type=int, default=20, metavar="N", help="figures of the first N images (default 20)")
    explain.add_argument("--dpi", type=int, default=100)
    _add_model_options(explain)
    explain.set_defaults(handler=_cmd_explain)

    report = commands.add_parser(
        "report",
        help="write a self-contained HTML report of the whole model",
        description="Write one static HTML file (images embedded, no network) showing what every selected "
        "feature responds to across IMAGES, and each class's features on its typical images. Images are "
        "embedded with the settings saved beside the model, or read from --embeddings (one row per image, "
        "in the order the images are listed; folders are searched recursively and sorted).",
    )
    report.add_argument("model_file", metavar="MODEL.npz", help="a model written by 'qpm-sklearn fit'")
    report.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders")
    report.add_argument("--out", required=True, metavar="REPORT.html", help="the HTML file to write")
    report.add_argument("--labels", default=None, metavar="FILE", help="true labels, one per image: accuracies and class panels")
    report.add_argument("-k", type=int, default=8, help="top images per feature (default 8)")
    _add_model_options(report)
    report.set_defaults(handler=_cmd_report)

    commands.add_parser(
        "table",
        add_help=False,
        help="reproduce the paper's table on CUB-200-2011 or Stanford Cars (see 'table --help')",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``qpm-sklearn`` with ``argv`` (default: the process's arguments); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["table"]:  # the harness parses its own options
        return _cmd_table(argv[1:])
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
