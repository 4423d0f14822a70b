"""skops and MLflow round trips of a fitted pipeline with the documented trusted types."""

import numpy as np
import pytest
from sklearn.pipeline import make_pipeline

from qpm_sklearn.persistence import SKOPS_TRUSTED_TYPES
from qpm_sklearn.testing import fitted_toy_pipeline


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    embedder, clf, images = fitted_toy_pipeline(tmp_path_factory.mktemp("backbone"))
    return make_pipeline(embedder, clf), images


def test_skops_needs_exactly_the_documented_types(pipeline):
    sio = pytest.importorskip("skops.io")
    pipe, images = pipeline
    data = sio.dumps(pipe)
    assert sorted(sio.get_untrusted_types(data=data)) == sorted(SKOPS_TRUSTED_TYPES[:2])
    loaded = sio.loads(data, trusted=SKOPS_TRUSTED_TYPES)
    np.testing.assert_array_equal(loaded.predict(images), pipe.predict(images))


def test_mlflow_log_model_and_pyfunc_round_trip(pipeline, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("skops")
    pipe, images = pipeline
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local file store: no tracking server in tests
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(pipe, name="model", skops_trusted_types=SKOPS_TRUSTED_TYPES)
    model = mlflow.pyfunc.load_model(info.model_uri)
    np.testing.assert_array_equal(np.asarray(model.predict(images)), pipe.predict(images))
