"""Self-contained artifacts: a fitted pipeline saved together with its backbone's weights.

A pickle, a skops file or an MLflow model of a fitted ``make_pipeline(embedder,
QPMClassifier())`` names the backbone by hub id or folder; it loads only where that
name resolves. :func:`save_pipeline` writes a folder that carries everything::

    folder/
        pipeline.json              the steps, their classes and parameters (JSON)
        backbones/step0/           the embedder's backbone: config.json,
                                   model.safetensors, preprocessor_config.json
        step1.npz                  the classifier, in QPMClassifier.save's format

and :func:`load_pipeline` rebuilds the pipeline from it with no hub and no other
folder: each embedder's ``model`` points at its bundled backbone. Neither writes nor
reads a pickle: the parameters are the exact JSON of :mod:`qpm_sklearn.persistence`,
the classifier is :meth:`QPMClassifier.save`'s checked file, the weights are
safetensors. Loading therefore executes no code from the folder; it rebuilds only the
classes of :data:`BUNDLED_ESTIMATORS`.

:func:`save_backbone` writes one backbone alone, for an embedder kept in some other
format: ``embedder.set_params(model=save_backbone(embedder, folder))``.

:data:`SKOPS_TRUSTED_TYPES` is the list to trust when loading a skops file (or an
MLflow model, whose scikit-learn flavour writes skops files) of these estimators.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from ._atomic import write_bytes_atomically
from ._utils import quiet_transformers
from .backbones import hub_name, layout_of, load_backbone, load_config
from .classifier import QPMClassifier
from .embedding import Dinov2Embedder, PatchEmbedder
from .persistence import ModelFileDefect, decode_value, encode_value, short

if TYPE_CHECKING:
    import transformers

__all__ = ["BUNDLED_ESTIMATORS", "FORMAT_VERSION", "SKOPS_TRUSTED_TYPES", "load_pipeline", "save_backbone", "save_pipeline"]

FORMAT_VERSION = 1
MANIFEST = "pipeline.json"
_BACKBONES = "backbones"
_PROCESSOR_CONFIG = "preprocessor_config.json"
_MANIFEST_KEYS = {"format", "format_version", "library_version", "pipeline_params", "steps"}
_FORMAT_NAME = "qpm_sklearn.pipeline"

#: The classes :func:`save_pipeline` stores and :func:`load_pipeline` rebuilds, by name.
BUNDLED_ESTIMATORS: dict[str, type] = {
    "PatchEmbedder": PatchEmbedder,
    "Dinov2Embedder": Dinov2Embedder,
    "QPMClassifier": QPMClassifier,
}

#: The types a skops file of these estimators holds beyond scikit-learn's and numpy's own:
#: pass it as ``skops.io.load(path, trusted=SKOPS_TRUSTED_TYPES)`` or
#: ``mlflow.sklearn.log_model(..., skops_trusted_types=SKOPS_TRUSTED_TYPES)``.
#: Their state is numbers, strings, lists, dicts and numpy arrays only (the embedder's
#: loaded model and the classifier's torch networks are never serialised), so nothing
#: else needs trusting. A ``device`` or ``dtype`` given as a torch object, or ``memory`` as
#: a ``joblib.Memory``, adds those types; give them as strings (``device="cpu"``,
#: ``memory="cache_folder"``) instead.
SKOPS_TRUSTED_TYPES: list[str] = [f"{cls.__module__}.{cls.__qualname__}" for cls in BUNDLED_ESTIMATORS.values()]


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def save_backbone(embedder: PatchEmbedder | str | os.PathLike[str], folder: str | os.PathLike[str], *,
                  local_files_only: bool | None = None) -> Path:  # fmt: skip
    """Write the weights and configurations of an embedder's backbone to ``folder``.

    The folder receives what ``from_pretrained`` reads: ``config.json``,
    ``model.safetensors`` (the vision model the embedder runs: for a two-tower CLIP or
    SigLIP checkpoint, its vision tower) and, when the model has one,
    ``preprocessor_config.json`` (read by ``preprocessing="auto"``). An embedder given
    ``model=folder`` then computes the same features with no hub and no original folder.

    Parameters
    ----------
    embedder : PatchEmbedder or str or path-like
        The embedder whose ``model`` to save, or a hub id / local folder.
    folder : str or path-like
        Where to write; created if missing, and must not hold files yet.
    local_files_only : bool, default=None
        Never contact the hub; None takes the embedder's own setting (False for a name).

    Returns
    -------
    folder : pathlib.Path
        The folder written, as an absolute path (a relative ``model`` would resolve
        against the working directory of whoever loads the embedder).

    Raises
    ------
    FileExistsError
        When ``folder`` exists and is not empty.

    Examples
    --------
    >>> import tempfile
    >>> from qpm_sklearn import Dinov2Embedder
    >>> from qpm_sklearn.artifacts import save_backbone
    >>> from qpm_sklearn.testing import save_random_backbone
    >>> embedder = Dinov2Embedder(str(save_random_backbone(tempfile.mkdtemp(), "tiny")))
    >>> copy = save_backbone(embedder, tempfile.mkdtemp() + "/backbone")
    >>> sorted(p.name for p in copy.iterdir())
    ['config.json', 'model.safetensors', 'preprocessor_config.json']
    """
    if isinstance(embedder, PatchEmbedder):
        model, offline = embedder.model, embedder.local_files_only if local_files_only is None else local_files_only
        verbose = embedder.verbose
    else:
        model, offline, verbose = embedder, bool(local_files_only), False
    folder = Path(folder).expanduser().resolve()
    _check_empty(folder, "folder")
    name = os.fspath(model)
    config = load_config(model, local_files_only=offline, verbose=verbose)
    backbone = cast("transformers.PreTrainedModel", load_backbone(model, layout_of(config, name), local_files_only=offline, verbose=verbose))
    processor = _processor_config(model, offline)
    folder.mkdir(parents=True, exist_ok=True)
    with quiet_transformers(verbose):  # its progress bar, as for loading
        backbone.save_pretrained(folder)
    if processor is not None:
        write_bytes_atomically(folder / _PROCESSOR_CONFIG, (json.dumps(processor, indent=2, sort_keys=True) + "\n").encode())
    return folder


def save_pipeline(pipeline: Pipeline, folder: str | os.PathLike[str]) -> Path:
    """Save a fitted pipeline with its backbones' weights: a folder that loads anywhere.

    The pipeline's steps must be embedders (:class:`~qpm_sklearn.PatchEmbedder`,
    :class:`~qpm_sklearn.Dinov2Embedder`) and :class:`~qpm_sklearn.QPMClassifier`s
    (see the module doc for the layout). Each embedder's backbone is written with
    :func:`save_backbone`; its parameters are kept except ``model`` (the bundled copy)
    and ``embedding_cache`` (a location on this machine, saved as None, like the
    classifier's and the pipeline's ``memory``). A ``dtype`` given as a torch dtype is
    saved as its name.

    The folder is written under a temporary name beside it and renamed when complete,
    so a failed save leaves no partial folder.

    Parameters
    ----------
    pipeline : sklearn.pipeline.Pipeline
        The fitted pipeline.
    folder : str or path-like
        Where to write; it must not exist, or be empty.

    Returns
    -------
    folder : pathlib.Path
        The folder written.

    Raises
    ------
    TypeError
        When ``pipeline`` is no Pipeline, or holds a step of another class.
    FileExistsError
        When ``folder`` exists and is not empty.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from sklearn.pipeline import make_pipeline
    >>> from qpm_sklearn import Dinov2Embedder, QPMClassifier
    >>> from qpm_sklearn.artifacts import load_pipeline, save_pipeline
    >>> from qpm_sklearn.testing import save_random_backbone
    >>> backbone = str(save_random_backbone(tempfile.mkdtemp(), "tiny"))
    >>> images = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 3), dtype=np.uint8)
    >>> y = np.repeat(["cat", "dog"], 4)
    >>> small = dict(n_features=8, n_selected=4, n_per_class=2, hidden_size=8, n_layers=1,
    ...              dense_epochs=1, sparse_epochs=1, random_state=0)
    >>> pipeline = make_pipeline(Dinov2Embedder(backbone, image_size=28, device="cpu"),
    ...                          QPMClassifier(**small)).fit(images, y)
    >>> folder = save_pipeline(pipeline, tempfile.mkdtemp() + "/model")
    >>> loaded = load_pipeline(folder)  # needs neither `backbone` nor the hub
    >>> bool((loaded.predict(images) == pipeline.predict(images)).all())
    True
    """
    if not isinstance(pipeline, Pipeline):
        raise TypeError(f"pipeline must be a sklearn.pipeline.Pipeline; got a {type(pipeline).__name__}.")
    for name, step in pipeline.steps:
        if type(step) not in BUNDLED_ESTIMATORS.values():
            raise TypeError(
                f"save_pipeline stores steps of the classes {sorted(BUNDLED_ESTIMATORS)} only; step {name!r} is a "
                f"{type(step).__name__}. For other pipelines, make the backbone local with save_backbone and "
                f"embedder.set_params(model=...), then use joblib or skops (with SKOPS_TRUSTED_TYPES)."
            )
    check_is_fitted(pipeline)
    folder = Path(folder)
    _check_empty(folder, "folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    # A new folder created with os.mkdir gets the umask's permissions, as the final one would.
    staging = folder.parent / f".{folder.name}.{uuid.uuid4().hex}.tmp"
    staging.mkdir()
    try:
        steps = [_save_step(index, name, step, staging) for index, (name, step) in enumerate(pipeline.steps)]
        params = pipeline.get_params(deep=False)
        params.pop("steps")
        params["memory"] = None  # a cache location belongs to a machine, not to the model
        from . import __version__

        manifest = {
            "format": _FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "library_version": __version__,
            "pipeline_params": {key: encode_value(value, key) for key, value in params.items()},
            "steps": steps,
        }
        write_bytes_atomically(staging / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
        if folder.is_dir():
            folder.rmdir()  # empty (checked above); rename cannot replace it on every platform
        os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _save_step(index: int, name: str, step: Any, folder: Path) -> dict:
    estimator = type(step).__name__
    if isinstance(step, QPMClassifier):
        file = f"step{index}.npz"
        step.save(folder / file)
        return {"name": name, "estimator": estimator, "file": file}
    backbone = f"{_BACKBONES}/step{index}"
    save_backbone(step, folder / backbone)
    params = step.get_params(deep=False)
    params["model"] = None  # the bundled backbone, set again by load_pipeline
    params["embedding_cache"] = None
    if type(params["dtype"]).__module__ == "torch":
        params["dtype"] = str(params["dtype"]).removeprefix("torch.")
    encoded = {key: encode_value(value, key) for key, value in params.items()}
    return {"name": name, "estimator": estimator, "params": encoded, "backbone": backbone}


def _check_empty(folder: Path, argument: str) -> None:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(f"{argument}={str(folder)!r} exists and is not an empty folder; choose a new one.")


def _processor_config(model, local_files_only: bool) -> dict | None:
    from transformers.image_processing_utils import ImageProcessingMixin

    try:
        settings, _ = ImageProcessingMixin.get_image_processor_dict(hub_name(model), local_files_only=local_files_only)
    except (OSError, ValueError):
        return None  # the model has none; preprocessing="auto" refuses it wherever it is loaded
    return settings


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_pipeline(folder: str | os.PathLike[str]) -> Pipeline:
    """Load a pipeline written by :func:`save_pipeline`, with its bundled backbones.

    Each embedder's ``model`` is set to its backbone's folder inside ``folder`` (an
    absolute path), so the pipeline reads nothing else; the folder must stay where it is
    while the pipeline is used. Each classifier is read with :meth:`QPMClassifier.load`
    and its checks. No pickle is read and no code from the folder runs.

    Parameters
    ----------
    folder : str or path-like
        A folder written by :func:`save_pipeline`.

    Returns
    -------
    pipeline : sklearn.pipeline.Pipeline
        The fitted pipeline (``memory=None``, ``embedding_cache=None``; set them again
        with ``set_params``).

    Raises
    ------
    FileNotFoundError
        When ``folder``, its manifest or a bundled backbone is missing.
    ValueError
        For any other defect of the folder, naming it and the defect.

    Examples
    --------
    See :func:`save_pipeline`.
    """
    folder = Path(folder).expanduser().resolve()
    manifest_path = folder / MANIFEST
    if not folder.is_dir():
        raise FileNotFoundError(f"folder={str(folder)!r} is not a folder.")
    if not manifest_path.is_file():
        raise FileNotFoundError(f"folder={str(folder)!r} has no {MANIFEST}: not a folder written by save_pipeline.")
    try:
        manifest = _read_manifest(manifest_path)
        steps = [(step["name"], _load_step(step, folder)) for step in manifest["steps"]]
        params = {key: decode_value(value, f"pipeline parameter {key!r}") for key, value in manifest["pipeline_params"].items()}
        if params.get("memory") is not None:
            raise ModelFileDefect(f"pipeline parameter 'memory' must be null; got {short(params['memory'])}")
        try:
            return Pipeline(steps, **params)
        except TypeError as exc:
            raise ModelFileDefect(f"invalid pipeline parameters: {exc}") from None
    except ModelFileDefect as defect:
        raise ValueError(f"{str(folder)!r} is not a valid save_pipeline folder: {defect}") from None


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFileDefect(f"{MANIFEST} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT_NAME:
        raise ModelFileDefect(f"{MANIFEST} does not describe a {_FORMAT_NAME} folder")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION or type(version) is not int:
        raise ModelFileDefect(
            f"written by qpm_sklearn {manifest.get('library_version')} in format version {version!r}; this version "
            f"reads format version {FORMAT_VERSION} only. Load it with the version that wrote it"
        )
    if set(manifest) != _MANIFEST_KEYS:
        raise ModelFileDefect(f"{MANIFEST} must have the keys {sorted(_MANIFEST_KEYS)}; got {sorted(manifest)}")
    steps = manifest["steps"]
    if not isinstance(steps, list) or not steps or not all(isinstance(step, dict) for step in steps):
        raise ModelFileDefect(f"{MANIFEST}['steps'] must be a non-empty list of objects")
    if not isinstance(manifest["pipeline_params"], dict):
        raise ModelFileDefect(f"{MANIFEST}['pipeline_params'] must be an object")
    return manifest


def _load_step(step: dict, folder: Path) -> Any:
    name, estimator = step.get("name"), step.get("estimator")
    if not isinstance(name, str) or estimator not in BUNDLED_ESTIMATORS:
        raise ModelFileDefect(f"step {short(step)} must name itself and one of the classes {sorted(BUNDLED_ESTIMATORS)}")
    cls = BUNDLED_ESTIMATORS[estimator]
    if cls is QPMClassifier:
        if set(step) != {"name", "estimator", "file"}:
            raise ModelFileDefect(f"step {name!r} must have the keys ['estimator', 'file', 'name']")
        path = _inside(folder, step["file"], f"step {name!r}'s file")
        if not path.is_file():
            raise FileNotFoundError(f"folder={str(folder)!r}: step {name!r}'s model file {step['file']!r} is missing.")
        return QPMClassifier.load(path)
    if set(step) != {"name", "estimator", "params", "backbone"} or not isinstance(step["params"], dict):
        raise ModelFileDefect(f"step {name!r} must have the keys ['backbone', 'estimator', 'name', 'params']")
    backbone = _inside(folder, step["backbone"], f"step {name!r}'s backbone")
    if not (backbone / "config.json").is_file():
        raise FileNotFoundError(
            f"folder={str(folder)!r}: the backbone of step {name!r} ({step['backbone']!r}, with config.json and the "
            f"weights) is missing; the folder is incomplete. Save the pipeline again with save_pipeline."
        )
    params = {key: decode_value(value, f"step {name!r} parameter {key!r}") for key, value in step["params"].items()}
    expected = set(cls().get_params(deep=False))
    if set(params) != expected:
        missing, unknown = sorted(expected - set(params)), sorted(set(params) - expected)
        raise ModelFileDefect(f"step {name!r}: the parameters do not match {estimator}'s: missing {missing}, unknown {unknown}")
    if params["model"] is not None or params["embedding_cache"] is not None:
        raise ModelFileDefect(f"step {name!r}: parameters 'model' and 'embedding_cache' must be null in the manifest")
    try:
        return cls(**dict(params, model=str(backbone))).fit(None)  # fit validates the parameters
    except (TypeError, ValueError) as exc:
        raise ModelFileDefect(f"step {name!r}: invalid parameters: {exc}") from None


def _inside(folder: Path, relative: Any, what: str) -> Path:
    """``folder / relative``, refused unless it is a relative path that stays inside ``folder``."""
    if not isinstance(relative, str) or not relative or Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise ModelFileDefect(f"{what} must be a relative path inside the folder; got {short(relative)}")
    return folder / relative
