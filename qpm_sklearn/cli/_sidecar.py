"""``MODEL.embedder.json``: how the images of a model written by ``fit`` were embedded.

The file holds the embedder's settings (``null`` for a model fitted on ``--embeddings``) and the
SHA-256 of the model file it was written with. ``fit`` stages it before the model and moves both
into place together (``_outputs``); ``explain`` reads it only when the checksum matches the model,
so settings written for another model -- a refit, a model replaced by ``QPMClassifier.save`` -- are
refused instead of used. A local backbone folder is stored as an absolute path, so ``explain``
works from any folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ._errors import CommandError
from ._outputs import OutputSet

SUFFIX = ".embedder.json"
_FORMAT = 1


def sidecar_path(model_path: Path) -> Path:
    """``MODEL.embedder.json`` beside ``MODEL.npz``."""
    return model_path.with_name(model_path.name.removesuffix(".npz") + SUFFIX)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def portable_settings(settings: dict) -> dict:
    """``settings`` with a backbone given as a local folder made absolute (hub ids unchanged)."""
    settings = dict(settings)
    model = settings.get("model")
    if model is not None and Path(model).expanduser().exists():
        settings["model"] = str(Path(model).expanduser().resolve())
    return settings


def stage_sidecar(outputs: OutputSet, model_path: Path, staged_model: Path, settings: dict | None) -> None:
    """Stage the sidecar of the model staged at ``staged_model`` (to be moved onto ``model_path``)."""
    content = {
        "format": _FORMAT,
        "model_sha256": _sha256(staged_model),
        "embedder": None if settings is None else portable_settings(settings),
    }
    outputs.write_bytes(sidecar_path(model_path), (json.dumps(content, indent=2) + "\n").encode("utf-8"))


def read_sidecar(model_path: Path) -> dict | None:
    """The embedder settings saved with ``model_path``: a dict, ``None`` (no settings), or a CommandError."""
    path = sidecar_path(model_path)
    if not path.exists():
        return None
    fix = f"delete {path} and give the embedder options (--model, --image-size, ...) on the command line"
    try:
        content = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandError(f"{path}: damaged embedder settings ({type(exc).__name__}); {fix}") from None
    if not isinstance(content, dict) or content.get("format") != _FORMAT or "model_sha256" not in content:
        raise CommandError(f"{path}: not embedder settings written by this version of qpm-sklearn fit; {fix}")
    settings = content.get("embedder")
    if settings is not None and not isinstance(settings, dict):
        raise CommandError(f"{path}: damaged embedder settings ('embedder' is not an object); {fix}")
    if content["model_sha256"] != _sha256(model_path):
        raise CommandError(f"{path}: written for another version of {model_path} (the model was replaced since); {fix}")
    return settings
