"""``qpm-sklearn explain``: a CSV of contributions and a figure per image, for a saved model."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

from ._console import say
from ._errors import UsageError
from ._inputs import (
    add_embedder_options,
    embed,
    embedder_params_for_model,
    image_files,
    load_model,
    model_file,
    read_embeddings,
    read_feature_names,
)
from ._outputs import prepare_output_folder, written_together

_DEFAULT_IMAGE_SIZE = 224


def _figures(explanation, files: list[str], n: int, size: int, dpi: int) -> dict[str, bytes]:
    """``{file name: PNG bytes}`` of the first ``n`` images, rendered in memory."""
    import matplotlib.pyplot as plt

    from ..images import load_resized
    from ..plotting import plot_explanation

    rendered = {}
    for i, file in enumerate(files[:n]):
        figure = plot_explanation(explanation, index=i, image=load_resized(file, i, size))
        buffer = io.BytesIO()
        try:
            figure.savefig(buffer, format="png", dpi=dpi)
        finally:
            plt.close(figure)
        rendered[f"{i:04d}_{Path(file).stem}.png"] = buffer.getvalue()
    return rendered


def run(args: argparse.Namespace) -> int:
    if args.figures < 0 or args.dpi < 1:
        raise UsageError(f"--figures {args.figures} / --dpi {args.dpi}: expected --figures >= 0 and --dpi >= 1")
    # Inputs and the output folder are checked before the model (and torch) is loaded.
    model_path = model_file(args.model_file)
    names = read_feature_names(args.feature_names)
    if args.embeddings is not None:
        if args.images:
            raise UsageError("explain takes either IMAGES or --embeddings, not both")
        X = read_embeddings(args.embeddings)
        inputs, files, params = [str(i) for i in range(len(X))], None, {}
    else:
        if not args.images:
            raise UsageError("explain needs IMAGES or --embeddings")
        files = image_files(args.images)
        params = embedder_params_for_model(model_path, args, "explain")
    out = prepare_output_folder(Path(args.out).expanduser(), "--out")
    clf = load_model(model_path, names)
    if files is not None:
        X = embed(files, params, args)
        inputs = files
    explanation = clf.explain(X)
    frame = explanation.to_frame()
    frame.insert(1, "input", np.asarray(inputs, dtype=object)[frame["sample"].to_numpy()])
    # A file name that is not valid UTF-8 keeps its bytes (as .paths.txt does).
    csv = frame.to_csv(index=False).encode("utf-8", "surrogateescape")
    figures = {}
    if files is not None and args.figures > 0:
        figures = _figures(explanation, files, args.figures, int(params.get("image_size") or _DEFAULT_IMAGE_SIZE), args.dpi)
    with written_together() as outputs:
        for name, content in figures.items():
            outputs.write_bytes(out / name, content)
        outputs.write_bytes(out / "contributions.csv", csv, primary=True)
    say(f"{len(X)} explained: {out / 'contributions.csv'} ({len(frame)} rows), {len(figures)} figures in {out}")
    return 0


def register(commands, common: argparse.ArgumentParser) -> None:
    """Add ``explain`` to the subcommands."""
    parser = commands.add_parser(
        "explain",
        parents=[common],
        help="explain predictions: a CSV of contributions and figures",
        description="Explain the predictions of a saved model: OUT/contributions.csv (one row per image and "
        "feature of its predicted class) and a figure per image. Images are embedded with the settings "
        "saved beside the model (options given here override them).",
    )
    parser.add_argument("model_file", metavar="MODEL.npz", help="a model written by 'qpm-sklearn fit'")
    parser.add_argument("images", nargs="*", metavar="IMAGES", help="image files or folders")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for contributions.csv and the figures (created if missing)")
    parser.add_argument("--embeddings", default=None, metavar="FILE.npy", help="embeddings instead of images")
    parser.add_argument("--figures", type=int, default=20, metavar="N", help="figures of the first N images (default 20)")
    parser.add_argument("--dpi", type=int, default=100, help="resolution of the figures (default 100)")
    parser.add_argument("--feature-names", default=None, metavar="FILE.json", help="names of features: {id: name} or a list")
    add_embedder_options(parser)
    parser.set_defaults(handler=run)
