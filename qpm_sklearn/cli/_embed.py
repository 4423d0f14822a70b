"""``qpm-sklearn embed``: embed images into the embedding cache and/or an ``.npy`` file."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ._console import say
from ._errors import UsageError
from ._inputs import add_embedder_options, embed, embedder_params, image_files
from ._outputs import check_output_file, file_name_bytes, written_together


def npy_path(save: str) -> Path:
    """The file ``numpy.save`` writes for ``save`` (``.npy`` appended when missing)."""
    path = Path(save).expanduser()
    return path if path.name.endswith(".npy") else path.with_name(path.name + ".npy")


def paths_file(npy: Path) -> Path:
    """``X.paths.txt`` beside ``X.npy``: the image of each row, one per line."""
    return npy.with_name(npy.name.removesuffix(".npy") + ".paths.txt")


def run(args: argparse.Namespace) -> int:
    if args.save is None and args.embedding_cache is None:
        raise UsageError("embed needs --embedding-cache (resumable) or --save (an .npy file), or both")
    files = image_files(args.images)
    save = None if args.save is None else check_output_file(npy_path(args.save), "--save")
    if save is not None:
        unlistable = [f for f in files if "\n" in f or "\r" in f]
        if unlistable:
            raise UsageError(f"--save: the image file name {unlistable[0]!r} holds a line break, which a .paths.txt cannot list")
    X = np.asarray(embed(files, embedder_params(args), args))
    if save is not None:
        listing = b"".join(file_name_bytes(f) + b"\n" for f in files)
        with written_together() as outputs:
            outputs.write_bytes(paths_file(save), listing)
            outputs.write(save, lambda handle: np.save(handle, X), primary=True)
        say(f"embeddings {tuple(X.shape)} written to {save} (rows in the order of {paths_file(save)})")
    if args.embedding_cache:
        say(f"{len(files)} images embedded {tuple(X.shape)}; cache: {args.embedding_cache}")
    return 0


def register(commands, common: argparse.ArgumentParser) -> None:
    """Add ``embed`` to the subcommands."""
    parser = commands.add_parser(
        "embed",
        parents=[common],
        help="embed a folder of images into the embedding cache",
        description="Embed images (files or folders, searched recursively) with a frozen backbone. With "
        "--embedding-cache every finished batch is kept: an interrupted run continues where it stopped.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders")
    parser.add_argument(
        "--save", default=None, metavar="FILE.npy", help="also write the embeddings (.npy appended when missing) and FILE.paths.txt"
    )
    add_embedder_options(parser)
    parser.set_defaults(handler=run)
