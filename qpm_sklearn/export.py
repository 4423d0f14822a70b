"""Export a fitted :class:`~qpm_sklearn.QPMClassifier` to ONNX, for serving without scikit-learn or torch.

:func:`to_onnx` writes the adapter and head (patch tokens → class probabilities) as one
ONNX file whose metadata holds the class labels and, given the embedder, the
preprocessing settings. :func:`export_pipeline` writes a folder that serves images →
probabilities: ``backbone.onnx`` (uint8 pixels → patch grid, normalisation included),
``head.onnx`` (:func:`to_onnx`) and ``pipeline.json`` (the resize settings and labels),
read by :class:`qpm_sklearn.serving.OnnxImageClassifier` with numpy, Pillow and
onnxruntime only. Needs the ``onnx`` package (``pip install "qpm_sklearn[export]"``);
the exports are checked against ``predict_proba`` with onnxruntime in the tests.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from torch import nn

from . import __version__
from . import backbones as _backbones
from . import images as _images
from ._atomic import write_bytes_atomically
from ._head import HeadRecord
from ._stages import dense_network, sparse_network
from .adapter import QPMNetwork

if TYPE_CHECKING:
    from .classifier import QPMClassifier
    from .embedding import PatchEmbedder

__all__ = ["PIPELINE_FILE", "export_pipeline", "metadata", "network", "to_onnx"]

#: The description of an :func:`export_pipeline` folder.
PIPELINE_FILE = "pipeline.json"
_OPSET = 18


def network(clf: QPMClassifier, stage: Literal["sparse", "dense"] = "sparse") -> QPMNetwork:
    """The fitted torch network of one stage, in ``eval`` mode on the CPU (a new copy on each call).

    ``forward(tokens (B, P, D), grid (h, w))`` returns ``(logits, maps, features)``; the
    module compiles with ``torch.jit.script``.

    Parameters
    ----------
    clf : QPMClassifier
        Fitted.
    stage : {"sparse", "dense"}, default="sparse"

    Returns
    -------
    network : qpm_sklearn.adapter.QPMNetwork

    Examples
    --------
    >>> import torch
    >>> from qpm_sklearn.export import network
    >>> from qpm_sklearn.testing import fitted_toy_classifier
    >>> clf, X, y = fitted_toy_classifier()
    >>> logits = network(clf)(torch.from_numpy(X[:2]).flatten(1, 2), X.shape[1:3])[0]
    >>> tuple(logits.shape)
    (2, 3)
    """
    check_is_fitted(clf)
    if stage == "dense":
        built = dense_network(clf.dense_mlp_state_, clf.dense_head_state_)
    elif stage == "sparse":
        head = HeadRecord(selected=clf.selected_features_, weight=clf.sparse_weight_, bias=clf.sparse_bias_,
                          mean=clf.feature_mean_, std=clf.feature_std_, info={})  # fmt: skip
        built = sparse_network(clf.sparse_mlp_state_, head)
    else:
        raise ValueError(f"stage must be 'sparse' or 'dense'; got {stage!r}.")
    return built.eval()


class _TokensToProbabilities(nn.Module):
    """(B, h, w, d) patch grid → (probabilities, logits): the network with the grid read from the input."""

    def __init__(self, network: QPMNetwork) -> None:
        super().__init__()
        self.network = network

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, height, width, dim = tokens.shape
        logits = self.network(tokens.reshape(batch, height * width, dim), (height, width))[0]
        return torch.softmax(logits, dim=1), logits


class _PixelsToTokens(nn.Module):
    """uint8 (B, S, S, 3) pixels → the embedder's (B, h, w, d) patch grid (normalisation, backbone, layout)."""

    def __init__(self, backbone: nn.Module, layout: _backbones.Layout, settings: dict, model: str) -> None:
        super().__init__()
        self.backbone, self.layout, self.settings, self.model = backbone, layout, settings, model
        self.grid = layout.grid(settings["image_size"], model)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        values = _images.normalize(
            pixels, preprocessing=self.settings["preprocessing"], mean=self.settings["mean"], std=self.settings["std"]
        )
        hidden = self.backbone(**self.layout.model_inputs(values)).last_hidden_state
        return self.layout.split(hidden, self.grid, self.model)[1]


def metadata(clf: QPMClassifier, embedder: PatchEmbedder | None = None, stage: str = "sparse") -> dict[str, str]:
    """The ONNX metadata :func:`to_onnx` writes: JSON strings under ``qpm_sklearn.*`` keys.

    ``qpm_sklearn.classes`` (the labels, in output column order), ``qpm_sklearn.stage``,
    ``qpm_sklearn.n_features_in``, ``qpm_sklearn.version`` and, given ``embedder``,
    ``qpm_sklearn.preprocessing``: model, family, image size, resize filter (a PIL name),
    normalisation (``preprocessing``, ``mean``, ``std``) and ``exif_transpose``.

    Parameters
    ----------
    clf : QPMClassifier
        Fitted.
    embedder : PatchEmbedder, default=None
    stage : {"sparse", "dense"}, default="sparse"

    Returns
    -------
    metadata : dict of str to str

    Examples
    --------
    >>> import json
    >>> from qpm_sklearn.export import metadata
    >>> from qpm_sklearn.testing import fitted_toy_classifier
    >>> json.loads(metadata(fitted_toy_classifier()[0])["qpm_sklearn.classes"])
    [0, 1, 2]
    """
    check_is_fitted(clf)
    classes = np.asarray(clf.classes_)
    if classes.dtype.kind not in "biufU" and not all(isinstance(label, str) for label in classes):
        raise TypeError(f"ONNX metadata holds class labels that are numbers or strings; classes_ holds {classes.dtype}.")
    result = {
        "qpm_sklearn.classes": json.dumps(classes.tolist()),
        "qpm_sklearn.stage": json.dumps(stage),
        "qpm_sklearn.n_features_in": json.dumps(int(clf.n_features_in_)),
        "qpm_sklearn.version": json.dumps(__version__),
    }
    if embedder is not None:
        result["qpm_sklearn.preprocessing"] = json.dumps(preprocessing_settings(embedder))
    return result


def preprocessing_settings(embedder: PatchEmbedder) -> dict[str, Any]:
    """How ``embedder`` turns an image into pixel values, resolved against its model's configuration.

    Parameters
    ----------
    embedder : PatchEmbedder

    Returns
    -------
    settings : dict
        ``model``, ``family``, ``output``, ``image_size``, ``resample`` (a PIL filter name),
        ``preprocessing``, ``mean``, ``std``, ``exif_transpose``.

    Examples
    --------
    >>> import tempfile
    >>> from qpm_sklearn import PatchEmbedder
    >>> from qpm_sklearn.export import preprocessing_settings
    >>> from qpm_sklearn.testing import save_random_model
    >>> embedder = PatchEmbedder(str(save_random_model(tempfile.mkdtemp(), "resnet")), image_size=64)
    >>> preprocessing_settings(embedder)["image_size"]
    64
    """
    from .embedding import cache_settings

    settings, _ = cache_settings(embedder, torch.float32)
    return {
        "model": settings["model"],
        "family": settings["family"],
        "output": settings["output"],
        "image_size": int(settings["image_size"]),
        "resample": _images.PREPROCESSING_FILTERS.get(settings["resample"], settings["resample"]),
        "preprocessing": settings["preprocessing"],
        "mean": list(settings["mean"]),
        "std": list(settings["std"]),
        "exif_transpose": settings["exif_transpose"],
    }


def _export(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, output_names: list[str],
            dynamic: dict[int, str], props: dict[str, str], opset_version: int) -> Path:  # fmt: skip
    """Export ``module`` to ONNX at ``path`` (atomically), with named dynamic axes and metadata."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as scratch:
        exported = Path(scratch) / "model.onnx"
        # torch.export's tracing keeps shapes symbolic (the TorchScript tracer would freeze the batch
        # wherever a model reads len(tensor)) and decomposes what ONNX lacks, such as the antialiased
        # bicubic resize of position embeddings.
        dynamic_shapes = {input_name: {axis: torch.export.Dim(name) for axis, name in dynamic.items()}}
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the exporter's progress and advice, not the caller's business
            torch.onnx.export(
                module, (example,), str(exported), input_names=[input_name], output_names=output_names,
                dynamic_shapes=dynamic_shapes, opset_version=opset_version, dynamo=True, external_data=False,
                verbose=False,
            )  # fmt: skip
        model = onnx.load(str(exported))
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    return write_bytes_atomically(path, model.SerializeToString())


def to_onnx(
    clf: QPMClassifier,
    path: str | os.PathLike[str],
    *,
    stage: Literal["sparse", "dense"] = "sparse",
    embedder: PatchEmbedder | None = None,
    opset_version: int = _OPSET,
) -> Path:
    """Write the fitted adapter and head as an ONNX model: patch grid → class probabilities.

    Input ``tokens``: float32 ``(batch, h, w, d)``, batch and grid dynamic (any grid works:
    the adapter is token-wise and the pooling a mean). Outputs ``probabilities``
    ``(batch, n_classes)`` (softmax, columns in ``classes_`` order, as
    :meth:`~qpm_sklearn.QPMClassifier.predict_proba`) and ``logits``. The metadata
    (:func:`metadata`) holds the class labels and, given ``embedder``, its preprocessing.
    The file is replaced atomically.

    Parameters
    ----------
    clf : QPMClassifier
        Fitted.
    path : str or path-like
        The ``.onnx`` file to write.
    stage : {"sparse", "dense"}, default="sparse"
    embedder : PatchEmbedder, default=None
        Its preprocessing settings go into the metadata.
    opset_version : int, default=18

    Returns
    -------
    path : pathlib.Path

    Examples
    --------
    >>> import tempfile, onnxruntime
    >>> from qpm_sklearn.export import to_onnx
    >>> from qpm_sklearn.testing import fitted_toy_classifier
    >>> clf, X, y = fitted_toy_classifier()
    >>> path = to_onnx(clf, tempfile.mkdtemp() + "/head.onnx")
    >>> session = onnxruntime.InferenceSession(path)
    >>> session.run(["probabilities"], {"tokens": X[:2]})[0].shape
    (2, 3)
    """
    props = metadata(clf, embedder, stage)
    module = _TokensToProbabilities(network(clf, stage))
    example = torch.zeros(2, 2, 2, int(clf.n_features_in_))
    return _export(module, example, Path(path), "tokens", ["probabilities", "logits"],
                   {0: "batch", 1: "height", 2: "width"}, props, opset_version)  # fmt: skip


def export_pipeline(
    clf: QPMClassifier,
    embedder: PatchEmbedder,
    folder: str | os.PathLike[str],
    *,
    stage: Literal["sparse", "dense"] = "sparse",
    opset_version: int = _OPSET,
) -> Path:
    """Write a folder that serves images → probabilities without torch: two ONNX files and a JSON.

    ``backbone.onnx`` maps uint8 pixels ``(batch, S, S, 3)``, squash-resized to the
    embedder's ``image_size`` S, to the patch grid (the normalisation is inside; the batch
    is dynamic, S fixed); ``head.onnx`` is :func:`to_onnx`'s model; ``pipeline.json``
    holds the resize filter, ``exif_transpose``, the labels and the file names.
    :class:`qpm_sklearn.serving.OnnxImageClassifier` reads the folder.

    Parameters
    ----------
    clf : QPMClassifier
        Fitted on ``embedder``'s patch grid.
    embedder : PatchEmbedder
        With ``output="patch"``.
    folder : str or path-like
        Created if needed; the three files in it are replaced.
    stage : {"sparse", "dense"}, default="sparse"
    opset_version : int, default=18

    Returns
    -------
    folder : pathlib.Path

    Examples
    --------
    >>> import tempfile
    >>> from qpm_sklearn.export import export_pipeline
    >>> from qpm_sklearn.serving import OnnxImageClassifier
    >>> from qpm_sklearn.testing import fitted_toy_pipeline
    >>> embedder, clf, images = fitted_toy_pipeline()
    >>> served = OnnxImageClassifier(export_pipeline(clf, embedder, tempfile.mkdtemp()))
    >>> served.predict_proba(images[:2]).shape
    (2, 2)
    """
    settings = preprocessing_settings(embedder)
    if settings["output"] != "patch":
        raise ValueError(f"export_pipeline needs embedder.output='patch'; got {settings['output']!r}.")
    folder = Path(folder)
    config = _backbones.load_config(embedder.model, local_files_only=embedder.local_files_only)
    layout = _backbones.layout_of(config, settings["model"])
    backbone = _backbones.load_backbone(embedder.model, layout, local_files_only=embedder.local_files_only)
    backbone = backbone.to(torch.float32).eval().requires_grad_(False)
    side = settings["image_size"]
    _export(
        _PixelsToTokens(backbone, layout, settings, settings["model"]).eval(),
        torch.zeros(2, side, side, 3, dtype=torch.uint8), folder / "backbone.onnx", "pixels", ["tokens"],
        {0: "batch"}, {"qpm_sklearn.preprocessing": json.dumps(settings)}, opset_version,
    )  # fmt: skip
    to_onnx(clf, folder / "head.onnx", stage=stage, embedder=embedder, opset_version=opset_version)
    description = {
        "format": "qpm_sklearn.onnx_pipeline",
        "version": 1,
        "backbone": "backbone.onnx",
        "head": "head.onnx",
        "classes": json.loads(metadata(clf, stage=stage)["qpm_sklearn.classes"]),
        "preprocessing": settings,
    }
    write_bytes_atomically(folder / PIPELINE_FILE, json.dumps(description, indent=2).encode())
    return folder
