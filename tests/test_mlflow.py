"""MLflow: the scikit-learn flavour with SKOPS_TRUSTED_TYPES, a self-contained pyfunc model, log_training.

Every run is tracked in a file store under tmp_path (no server). ``pip_requirements`` is
given to each ``log_model``: MLflow otherwise infers them by loading the model again in a
subprocess, which tests nothing of ours and costs seconds.
"""

import functools
import shutil

import numpy as np
import pytest
from sklearn.pipeline import make_pipeline

mlflow = pytest.importorskip("mlflow", reason="MLflow tests need the 'mlflow' extra (pip install qpm_sklearn[mlflow])")
skops_io = pytest.importorskip("skops.io", reason="the scikit-learn flavour serialises with skops (the 'mlflow' extra)")
import mlflow.pyfunc  # noqa: E402
import mlflow.sklearn  # noqa: E402

import qpm_sklearn  # noqa: E402
from qpm_sklearn import Dinov2Embedder, QPMClassifier  # noqa: E402
from qpm_sklearn.testing import save_random_backbone  # noqa: E402
from qpm_sklearn.tracking import log_pipeline, log_training  # noqa: E402
from test_artifacts import section_code  # noqa: E402

SMALL = dict(
    n_features=12, n_selected=4, n_per_class=2, hidden_size=16, n_layers=2,
    dense_epochs=3, sparse_epochs=2, dense_batch_size=16, sparse_batch_size=16,
)  # fmt: skip
REQUIREMENTS = ["qpm_sklearn"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    backbone = save_random_backbone(tmp_path_factory.mktemp("backbone"), "tiny", num_register_tokens=4)
    rng = np.random.RandomState(0)
    y = np.repeat(["cat", "dog"], 6)
    base = np.where(y == "cat", 40, 200).astype(np.uint8)[:, None, None, None]
    X = base + rng.randint(0, 30, (len(y), 30, 30, 3)).astype(np.uint8)
    pipeline = make_pipeline(Dinov2Embedder(str(backbone), image_size=28, device="cpu"), QPMClassifier(**SMALL, random_state=0))
    return pipeline.fit(X, y), backbone, X


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """A file store under tmp_path, through the environment so no global setting outlives the test."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    yield mlflow.MlflowClient()
    if mlflow.active_run() is not None:
        mlflow.end_run()


def test_skops_trusted_types_cover_a_fitted_pipeline(fitted):
    pipeline, _, X = fitted
    data = skops_io.dumps(pipeline)
    untrusted = skops_io.get_untrusted_types(data=data)
    assert untrusted and set(untrusted) <= set(qpm_sklearn.SKOPS_TRUSTED_TYPES)
    loaded = skops_io.loads(data, trusted=qpm_sklearn.SKOPS_TRUSTED_TYPES)
    np.testing.assert_array_equal(loaded.predict(X), pipeline.predict(X))


def test_sklearn_flavour_round_trips_images_to_labels(fitted, tracking):
    pipeline, _, X = fitted
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            pipeline, name="model", skops_trusted_types=qpm_sklearn.SKOPS_TRUSTED_TYPES, pip_requirements=REQUIREMENTS
        )
    assert mlflow.models.get_model_info(info.model_uri).flavors["sklearn"]["serialization_format"] == "skops"
    predicted = mlflow.pyfunc.load_model(info.model_uri).predict(X)
    np.testing.assert_array_equal(predicted, pipeline.predict(X))
    assert set(predicted) <= {"cat", "dog"}


def test_log_pipeline_loads_without_the_backbone_folder(fitted, tracking, tmp_path):
    pipeline, backbone, X = fitted
    expected, expected_proba = pipeline.predict(X), pipeline.predict_proba(X)
    with mlflow.start_run():
        info = log_pipeline(pipeline, pip_requirements=REQUIREMENTS)
    moved = shutil.move(backbone, tmp_path / "moved-away")  # the original folder is gone while loading
    try:
        model = mlflow.pyfunc.load_model(info.model_uri)
        np.testing.assert_array_equal(model.predict(X), expected)
        proba = model.predict(X, params={"method": "predict_proba"})
        np.testing.assert_allclose(proba, expected_proba, rtol=0, atol=1e-6)
        with pytest.raises(ValueError, match="params\\['method'\\]"):
            model.predict(X, params={"method": "decision_function"})
    finally:
        shutil.move(moved, backbone)


def test_log_training_records_history_and_selection(fitted, tracking):
    pipeline, _, _ = fitted
    classifier = pipeline[-1]
    with mlflow.start_run() as run:
        log_training(pipeline)
    data = tracking.get_run(run.info.run_id).data
    for stage in ("dense", "sparse"):
        rows = [row for row in classifier.history_ if row["stage"] == stage]
        logged = tracking.get_metric_history(run.info.run_id, f"{stage}_loss")
        assert [(m.step, m.value) for m in sorted(logged, key=lambda m: m.step)] == [
            (row["epoch"], pytest.approx(row["loss"])) for row in rows
        ]
    info = classifier.selection_info_
    assert data.metrics["selection_objective"] == pytest.approx(info["objective"])
    assert data.params["selection_status"] == info["status"]
    assert data.metrics["n_selected_features"] == len(classifier.selected_features_)
    summary = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/qpm_summary.txt")
    assert summary == classifier.summary()
    with pytest.raises(TypeError, match="QPMClassifier or a Pipeline ending in one"):
        log_training(pipeline[0])



def test_docs_examples_run(fitted, tracking, monkeypatch):
    pipeline, _, X = fitted
    for module in (mlflow.pyfunc, mlflow.sklearn):  # the examples leave the requirements to MLflow's inference
        monkeypatch.setattr(module, "log_model", functools.partial(module.log_model, pip_requirements=REQUIREMENTS))
    blocks = section_code("MLflow")
    assert len(blocks) == 2
    namespaces = [{"pipeline": pipeline, "images": X} for _ in blocks]
    for block, namespace in zip(blocks, namespaces):
        exec(block, namespace)
        np.testing.assert_array_equal(namespace["labels"], pipeline.predict(X))
    np.testing.assert_allclose(namespaces[0]["proba"], pipeline.predict_proba(X), rtol=0, atol=1e-6)
