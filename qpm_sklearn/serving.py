"""Serve an exported pipeline (:func:`qpm_sklearn.export.export_pipeline`) with numpy, Pillow and onnxruntime.

Nothing here imports torch or scikit-learn: a serving container needs ``numpy``,
``Pillow`` and ``onnxruntime`` (and this module, or a copy of its forty lines). The
images are read and squash-resized by the same code as the embedder's
(:func:`qpm_sklearn.images.load_resized`), so the pixels that enter the backbone are
the embedder's exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .images import Images, check_images, load_resized

__all__ = ["OnnxImageClassifier"]


class OnnxImageClassifier:
    """Images → class probabilities and labels from an :func:`~qpm_sklearn.export.export_pipeline` folder.

    Parameters
    ----------
    folder : str or path-like
        Holds ``pipeline.json``, ``backbone.onnx`` and ``head.onnx``.
    providers : sequence of str, default=None
        onnxruntime execution providers (None: onnxruntime's default, the CPU).
    batch_size : int, default=32
        Images per backbone run.

    Attributes
    ----------
    classes_ : ndarray
        The labels, in the order of the probability columns.
    preprocessing : dict
        The embedder's settings (``image_size``, ``resample``, ``exif_transpose``, ...).

    Examples
    --------
    >>> import tempfile
    >>> from qpm_sklearn.export import export_pipeline
    >>> from qpm_sklearn.serving import OnnxImageClassifier
    >>> from qpm_sklearn.testing import fitted_toy_pipeline
    >>> embedder, clf, images = fitted_toy_pipeline()
    >>> served = OnnxImageClassifier(export_pipeline(clf, embedder, tempfile.mkdtemp()))
    >>> bool((served.predict(images) == clf.predict(embedder.transform(images))).all())
    True
    """

    def __init__(self, folder: str | os.PathLike[str], *, providers: list[str] | None = None, batch_size: int = 32) -> None:
        import onnxruntime

        folder = Path(folder)
        description = json.loads((folder / "pipeline.json").read_text())
        if description.get("format") != "qpm_sklearn.onnx_pipeline":
            raise ValueError(f"{folder / 'pipeline.json'} does not describe a qpm_sklearn ONNX pipeline.")
        self.preprocessing: dict[str, Any] = description["preprocessing"]
        self.classes_ = np.asarray(description["classes"])
        self.batch_size = int(batch_size)
        options = {} if providers is None else {"providers": providers}
        self._backbone = onnxruntime.InferenceSession(str(folder / description["backbone"]), **options)
        self._head = onnxruntime.InferenceSession(str(folder / description["head"]), **options)

    def pixels(self, X: Images) -> np.ndarray:
        """The uint8 ``(n, S, S, 3)`` pixels the backbone takes (read, RGB, squash-resized).

        Parameters
        ----------
        X : sequence of paths / PIL images / uint8 arrays, or uint8 ndarray (n, H, W[, 3])

        Returns
        -------
        pixels : ndarray of uint8, shape (n, S, S, 3)
        """
        X = check_images(X)
        side, resample = int(self.preprocessing["image_size"]), self.preprocessing["resample"]
        exif = bool(self.preprocessing["exif_transpose"])
        return np.stack([load_resized(X[index], index, side, resample, exif) for index in range(len(X))])

    def predict_proba(self, X: Images) -> np.ndarray:
        """Class probabilities, columns in ``classes_`` order.

        Parameters
        ----------
        X : sequence of paths / PIL images / uint8 arrays, or uint8 ndarray (n, H, W[, 3])

        Returns
        -------
        proba : ndarray of float32, shape (n, n_classes)
        """
        pixels = self.pixels(X)
        parts = []
        for start in range(0, len(pixels), self.batch_size):
            tokens = self._backbone.run(["tokens"], {"pixels": pixels[start : start + self.batch_size]})[0]
            parts.append(self._head.run(["probabilities"], {"tokens": tokens})[0])
        return np.concatenate(parts)

    def predict(self, X: Images) -> np.ndarray:
        """Predicted labels.

        Parameters
        ----------
        X : sequence of paths / PIL images / uint8 arrays, or uint8 ndarray (n, H, W[, 3])

        Returns
        -------
        labels : ndarray of shape (n,)
        """
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
