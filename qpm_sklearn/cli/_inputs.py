"""Input files and shared options of the commands, read and checked before any long work."""

from __future__ import annotations

import argparse
import codecs
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._console import note
from ._errors import CommandError
from ._sidecar import read_sidecar

# Rows of an embeddings file checked for NaN at a time (bounded memory on a memory-mapped file).
_FINITE_CHECK_ROWS = 256


def key_value(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` with VALUE read as JSON (numbers, true/false, null, lists), else as a string."""
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (e.g. n_selected=30); got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def read_file_bytes(path: str, option: str) -> bytes:
    """The bytes of the file ``path``, or a CommandError naming ``option`` and the problem."""
    try:
        return Path(path).expanduser().read_bytes()
    except FileNotFoundError:
        raise CommandError(f"{option} {path}: no such file") from None
    except IsADirectoryError:
        raise CommandError(f"{option} {path}: is a folder; expected a file") from None
    except OSError as exc:
        raise CommandError(f"{option} {path}: cannot read it ({exc.strerror or exc})") from None


def read_text(path: str, option: str) -> str:
    """A UTF-8 text file (a leading byte-order mark dropped); other encodings refused."""
    raw = read_file_bytes(path, option)
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in raw:
        raise CommandError(f"{option} {path}: the file is UTF-16 (or binary); save it as UTF-8 text")
    raw = raw.removeprefix(codecs.BOM_UTF8)  # Windows editors write one; it is not part of the first line
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise CommandError(
            f"{option} {path}: line {line} is not UTF-8 (Latin-1 or another encoding?); save the file as UTF-8"
        ) from None


def read_labels(path: str, n: int) -> np.ndarray:
    """One label per line (blank lines ignored, spaces around a label dropped); integers stay integers."""
    lines = [line.strip() for line in read_text(path, "--labels").splitlines() if line.strip()]
    if len(lines) != n:
        raise CommandError(f"--labels {path}: expected {n} labels, one per row of --embeddings; found {len(lines)}")
    try:
        labels = np.array([int(line) for line in lines])
    except ValueError:
        labels = np.array(lines)
    check_two_classes(labels, f"--labels {path}")
    return labels


def check_two_classes(labels: np.ndarray, what: str) -> None:
    """A CommandError when ``labels`` hold fewer than two classes."""
    classes = np.unique(labels)
    if len(classes) < 2:
        raise CommandError(f"{what}: every sample has the class {classes[0]!r}; a classifier needs at least 2 classes")


def read_embeddings(path: str) -> np.ndarray:
    """A finite numeric ``.npy`` array of 2 to 4 axes (memory-mapped), or a CommandError."""
    require_input_file(path, "--embeddings")
    try:
        X = np.load(Path(path).expanduser(), mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        raise CommandError(f"--embeddings {path}: not a .npy array file (write one with numpy.save)") from None
    if isinstance(X, np.lib.npyio.NpzFile):
        names = list(X.files)
        X.close()
        raise CommandError(
            f"--embeddings {path}: an .npz archive (arrays {names[:5]}); expected one .npy array: numpy.save('X.npy', X)"
        )
    if X.dtype.kind not in "fiu" or X.ndim not in (2, 3, 4) or len(X) == 0:
        raise CommandError(
            f"--embeddings {path}: expected a non-empty numeric array (n, d), (n, p, d) or (n, h, w, d); "
            f"got shape {X.shape}, dtype {X.dtype}"
        )
    for start in range(0, len(X), _FINITE_CHECK_ROWS):
        finite = np.isfinite(X[start : start + _FINITE_CHECK_ROWS]).reshape(min(_FINITE_CHECK_ROWS, len(X) - start), -1)
        bad = np.flatnonzero(~finite.all(axis=1))
        if len(bad):
            raise CommandError(f"--embeddings {path}: row {start + int(bad[0])} holds NaN or infinite values; embeddings must be finite")
    return X


def require_input_file(path: str, option: str) -> None:
    """Raise the CommandError of :func:`read_file_bytes` for a missing file, without reading it."""
    file = Path(path).expanduser()
    if not file.exists():
        raise CommandError(f"{option} {path}: no such file")
    if file.is_dir():
        raise CommandError(f"{option} {path}: is a folder; expected a file")


def read_feature_names(path: str | None) -> dict | list | None:
    """Feature names from a JSON file: an object ``{id: name}`` or a list of names."""
    if path is None:
        return None
    try:
        names = json.loads(read_text(path, "--feature-names"))
    except json.JSONDecodeError as exc:
        raise CommandError(f"--feature-names {path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(names, (dict, list)):
        raise CommandError(f"--feature-names {path}: expected a JSON object id -> name or a list of names")
    return names


def image_files(inputs: Sequence[str]) -> list[str]:
    """Image files named in ``inputs``: files as given, folders searched recursively (sorted)."""
    from ..datasets._folder import IMAGE_EXTENSIONS

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
                raise CommandError(f"IMAGES {item}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this folder")
            files += found
        elif path.is_file():
            files.append(str(path))
        else:
            raise CommandError(f"IMAGES {item}: no such file or folder")
    return files


# ------------------------------------------------------------------------------ embedder options
def add_embedder_options(parser: argparse.ArgumentParser) -> None:
    """The options of :class:`Dinov2Embedder` that ``embed``, ``fit`` and ``explain`` share."""
    group = parser.add_argument_group("embedder (see Dinov2Embedder)")
    group.add_argument("--model", default=None, help="hub id or local folder of the backbone (default: DINOv2-with-registers base)")
    group.add_argument("--output", choices=("patch", "cls", "mean"), default=None, help="what to keep per image (default: patch)")
    group.add_argument("--image-size", type=int, default=None, help="input side in pixels (default: 224)")
    group.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: 64)")
    group.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    group.add_argument("--output-dtype", choices=("float32", "float16"), default=None, help="dtype of the embeddings")
    group.add_argument("--local-files-only", action="store_true", default=None, help="never contact the Hugging Face hub")
    group.add_argument("--embedding-cache", default=None, metavar="DIR", help="embedding cache folder: reruns read it back")


def embedder_params(args: argparse.Namespace) -> dict:
    """The embedder options given on the command line (unset ones left out)."""
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


def embedder_params_for_model(model_path: Path, args: argparse.Namespace, command: str, *, warn_defaults: bool = True) -> dict:
    """The embedder settings saved beside ``model_path``, overridden by those on the command line.

    With ``warn_defaults``, a warning (naming ``command``) when neither gives any: the images would
    be embedded with the defaults, which may not be how the training embeddings were made.
    """
    saved = read_sidecar(model_path)
    given = embedder_params(args)
    if warn_defaults and saved is None and not given:
        note(
            f"qpm-sklearn {command}: warning: no embedder settings are saved with {model_path} (fitted on "
            "--embeddings, or written by QPMClassifier.save); the images are embedded with the defaults, so "
            "give --model, --image-size, ... as the training embeddings were made"
        )
    return {**(saved or {}), **given}  # options on the command line win


def embed(files: list[str], params: dict, args: argparse.Namespace) -> np.ndarray:
    """Embed ``files`` with a :class:`Dinov2Embedder` of ``params`` (progress unless ``--quiet``)."""
    from ..embedding import Dinov2Embedder

    if args.image_size is not None and args.image_size < 1:
        raise CommandError(f"--image-size {args.image_size}: expected a positive number of pixels")
    cache = {"embedding_cache": args.embedding_cache} if args.embedding_cache else {}
    if not args.quiet:
        note(f"embedding {len(files)} images with {params.get('model', 'the default model')}")
    return Dinov2Embedder(**params, **cache, verbose=not args.quiet).transform(files)


def model_file(path: str) -> Path:
    """The model file ``path`` (MODEL.npz) when it is a file; else a CommandError."""
    model_path = Path(path).expanduser()
    if not model_path.is_file():
        raise CommandError(f"MODEL {path}: no such file" if not model_path.exists() else f"MODEL {path}: is a folder; expected a model file")
    return model_path


def load_model(model_path: Path, feature_names: dict | list | None = None):
    """The :class:`QPMClassifier` saved at ``model_path`` (with ``feature_names`` set unless None);
    a file it refuses is a CommandError naming it."""
    from ..classifier import QPMClassifier

    try:
        clf = QPMClassifier.load(model_path)
    except ValueError as exc:
        raise CommandError(f"MODEL {model_path}: {exc}") from None
    if feature_names is not None:
        clf.set_params(feature_names=feature_names)
    return clf
