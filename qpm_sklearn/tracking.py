"""MLflow: record what a fit learned, and log a fitted pipeline as a self-contained model.

Needs MLflow (``pip install qpm_sklearn[mlflow]``; ``mlflow-skinny`` is enough).

* :func:`log_training` records a fitted classifier's ``history_`` (one metric per loss
  term and stage, stepped by epoch), its ``selection_info_`` and its ``summary()`` in
  the active run. ``mlflow.sklearn.autolog`` records nothing of these: it patches
  scikit-learn's own estimators only (for a ``Pipeline``: its parameters and training
  scores, see docs/deploying.md#mlflow).
* :func:`log_pipeline` logs a fitted pipeline as an ``mlflow.pyfunc`` model that carries
  its backbone (:func:`qpm_sklearn.artifacts.save_pipeline` inside the model's
  artifacts), so ``mlflow.pyfunc.load_model(uri).predict(images)`` returns labels on a
  machine with neither the hub nor the original backbone folder.
* ``mlflow.sklearn.log_model`` itself works too, given
  ``skops_trusted_types=qpm_sklearn.SKOPS_TRUSTED_TYPES``; its artifact names the
  backbone by hub id or folder, which must then exist where it is loaded.
"""

from __future__ import annotations

import os
import tempfile
from numbers import Real
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from .artifacts import load_pipeline, save_pipeline
from .classifier import QPMClassifier

__all__ = ["PipelineModel", "log_pipeline", "log_training"]

_ARTIFACT = "pipeline"

if TYPE_CHECKING:
    from mlflow.pyfunc import PythonModel as _PythonModel
else:
    try:
        from mlflow.pyfunc import PythonModel as _PythonModel
    except ImportError:  # the module stays importable (docs, doctests); its functions say what is missing
        _PythonModel = object


def _mlflow() -> Any:
    try:
        import mlflow
        import mlflow.pyfunc
    except ImportError as exc:  # an optional extra: say how to get it
        raise ImportError("qpm_sklearn.tracking needs MLflow: pip install 'qpm_sklearn[mlflow]' (or mlflow-skinny).") from exc
    return mlflow


def log_training(estimator: QPMClassifier | Pipeline, *, prefix: str = "") -> None:
    """Record a fitted classifier's training history and feature selection in MLflow.

    Logged in the active run (started as ``mlflow.log_metric`` starts one when there
    is none):

    * per epoch of ``history_``: every numeric entry (``loss``, ``ce``, ``diversity``,
      ``l1_maps``, ``l1_features``, ``lr``, ``seconds``, and validation scores when
      early stopping ran) as metric ``"{prefix}{stage}_{name}"`` at ``step=epoch``,
      with ``stage`` "dense" or "sparse";
    * ``selection_info_``: numbers as metrics ``"{prefix}selection_{name}"`` (objective,
      upper bound, gap, seconds ...), strings as parameters of the same names (status,
      method ...);
    * ``"{prefix}n_selected_features"`` (a metric) and the text of ``summary()`` as the
      artifact ``"{prefix}qpm_summary.txt"``.

    Parameters
    ----------
    estimator : QPMClassifier or Pipeline
        A fitted classifier, or a fitted pipeline ending in one.
    prefix : str, default=""
        Put before every name, to log several models in one run.

    Returns
    -------
    None

    Examples
    --------
    >>> import mlflow  # doctest: +SKIP
    >>> from qpm_sklearn.tracking import log_training  # doctest: +SKIP
    >>> with mlflow.start_run():  # doctest: +SKIP
    ...     pipeline.fit(images, labels)
    ...     log_training(pipeline)
    """
    mlflow = _mlflow()
    classifier = estimator[-1] if isinstance(estimator, Pipeline) else estimator
    if not isinstance(classifier, QPMClassifier):
        raise TypeError(f"estimator must be a QPMClassifier or a Pipeline ending in one; got a {type(classifier).__name__}.")
    check_is_fitted(classifier)
    for row in classifier.history_:
        metrics = {
            f"{prefix}{row['stage']}_{key}": float(value)
            for key, value in row.items()
            if key not in ("epoch", "stage") and isinstance(value, Real) and not isinstance(value, bool)
        }
        mlflow.log_metrics(metrics, step=int(row["epoch"]))
    info = classifier.selection_info_
    numbers = {f"{prefix}selection_{k}": float(v) for k, v in info.items() if isinstance(v, Real) and not isinstance(v, bool)}
    numbers[f"{prefix}n_selected_features"] = float(len(classifier.selected_features_))
    mlflow.log_metrics(numbers)
    texts = {f"{prefix}selection_{k}": v for k, v in info.items() if isinstance(v, str)}
    if texts:
        mlflow.log_params(texts)
    mlflow.log_text(classifier.summary(), f"{prefix}qpm_summary.txt")


class PipelineModel(_PythonModel):
    """An ``mlflow.pyfunc`` model of a pipeline saved with :func:`~qpm_sklearn.artifacts.save_pipeline`.

    Built by :func:`log_pipeline`; MLflow loads it with the pipeline folder among the
    model's artifacts (key ``"pipeline"``). ``predict`` takes what the pipeline's first
    step takes (a uint8 image array ``(n, H, W, 3)``, a list of paths, a one-column
    DataFrame of paths) and returns the predicted labels; with ``params={"method":
    "predict_proba"}`` the class probabilities (columns in ``classes_`` order).
    """

    def load_context(self, context: Any) -> None:
        """Load the bundled pipeline.

        Parameters
        ----------
        context : mlflow.pyfunc.PythonModelContext
            Holds the local path of the ``"pipeline"`` artifact.

        Returns
        -------
        None
        """
        self.pipeline = load_pipeline(context.artifacts[_ARTIFACT])

    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        """Labels (or probabilities) of the images ``model_input``.

        Parameters
        ----------
        context : mlflow.pyfunc.PythonModelContext
            Unused.
        model_input : array-like of images
            Whatever the pipeline's embedder accepts (the annotation, ndarray, keeps MLflow
            from converting the input to a table).
        params : dict, default=None
            ``{"method": "predict"}`` (the default) or ``{"method": "predict_proba"}``.

        Returns
        -------
        predictions : ndarray
            Labels ``(n,)`` or probabilities ``(n, n_classes)``.
        """
        method = (params or {}).get("method", "predict")
        if method not in ("predict", "predict_proba"):
            raise ValueError(f"params['method'] must be 'predict' or 'predict_proba'; got {method!r}.")
        return np.asarray(getattr(self.pipeline, method)(model_input))


def log_pipeline(pipeline: Pipeline, name: str = "model", **kwargs: Any) -> Any:
    """Log a fitted pipeline, backbone included, as an ``mlflow.pyfunc`` model.

    The pipeline is written with :func:`~qpm_sklearn.artifacts.save_pipeline` (no
    pickle: JSON, the classifier's ``.npz`` and the backbone's safetensors) and logged
    as the artifact of a :class:`PipelineModel`, so the MLflow model needs neither the
    hub nor the original backbone folder where it is loaded; only qpm_sklearn must be
    installed there.

    Parameters
    ----------
    pipeline : sklearn.pipeline.Pipeline
        A fitted pipeline :func:`~qpm_sklearn.artifacts.save_pipeline` accepts.
    name : str, default="model"
        The model's name in the run.
    **kwargs
        Passed to ``mlflow.pyfunc.log_model`` (``pip_requirements``, ``input_example``,
        ``registered_model_name`` ...). The default ``signature`` declares the parameter
        ``method`` only (see :class:`PipelineModel`); a signature given here must declare
        it too for ``params`` to reach the model.

    Returns
    -------
    model_info : mlflow.models.model.ModelInfo
        What ``mlflow.pyfunc.log_model`` returns; ``model_info.model_uri`` loads it.

    Examples
    --------
    >>> import mlflow  # doctest: +SKIP
    >>> from qpm_sklearn.tracking import log_pipeline  # doctest: +SKIP
    >>> with mlflow.start_run():  # doctest: +SKIP
    ...     info = log_pipeline(pipeline)
    >>> mlflow.pyfunc.load_model(info.model_uri).predict(images)  # doctest: +SKIP
    array(['cat', 'dog', ...])
    """
    mlflow = _mlflow()
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec

    check_is_fitted(pipeline)
    # MLflow passes inference-time params only when the signature declares them.
    kwargs.setdefault("signature", ModelSignature(params=ParamSchema([ParamSpec("method", "string", "predict")])))
    with tempfile.TemporaryDirectory() as staging:
        folder = save_pipeline(pipeline, Path(staging) / _ARTIFACT)
        return mlflow.pyfunc.log_model(
            name=name, python_model=PipelineModel(), artifacts={_ARTIFACT: os.fspath(folder)}, **kwargs
        )
