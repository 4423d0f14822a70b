"""ONNX export and torch-free serving agree with the estimator's own predictions."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

from qpm_sklearn.export import export_pipeline, network, to_onnx  # noqa: E402
from qpm_sklearn.testing import fitted_toy_classifier, fitted_toy_pipeline  # noqa: E402


@pytest.fixture(scope="module")
def toy():
    return fitted_toy_classifier()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return fitted_toy_pipeline(tmp_path_factory.mktemp("backbone"))


def _run(path, tokens):
    return onnxruntime.InferenceSession(str(path)).run(["probabilities", "logits"], {"tokens": tokens})


@pytest.mark.parametrize("stage", ["sparse", "dense"])
def test_onnx_probabilities_match_predict_proba_for_any_batch_and_grid(toy, tmp_path, stage):
    clf, X, _ = toy
    path = to_onnx(clf, tmp_path / "head.onnx", stage=stage)
    other_grid = np.random.default_rng(1).normal(size=(5, 3, 5, X.shape[-1])).astype(np.float32)
    for tokens in (X[:1], X[:7], X, other_grid):
        probabilities, logits = _run(path, tokens)
        np.testing.assert_allclose(probabilities, clf.predict_proba(tokens, stage=stage), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
        assert logits.shape == probabilities.shape


def test_metadata_holds_labels_and_preprocessing(pipeline, tmp_path):
    embedder, clf, _ = pipeline
    model = onnx.load(str(to_onnx(clf, tmp_path / "head.onnx", embedder=embedder)))
    props = {entry.key: json.loads(entry.value) for entry in model.metadata_props}
    assert props["qpm_sklearn.classes"] == clf.classes_.tolist() == ["bright", "dark"]
    assert props["qpm_sklearn.stage"] == "sparse"
    settings = props["qpm_sklearn.preprocessing"]
    assert (settings["image_size"], settings["resample"], settings["preprocessing"]) == (28, "bicubic", "imagenet")
    np.testing.assert_allclose(settings["mean"], (0.485, 0.456, 0.406))


def test_network_compiles_with_torchscript(toy):
    clf, X, _ = toy
    for stage in ("sparse", "dense"):
        scripted = torch.jit.script(network(clf, stage))
        logits = scripted(torch.from_numpy(X).flatten(1, 2), (4, 4))[0]
        expected = clf.decision_function(X, stage=stage)
        np.testing.assert_allclose(logits.detach().numpy(), expected, rtol=1e-4, atol=1e-5)


def test_exported_pipeline_serves_images_like_the_estimators(pipeline, tmp_path):
    embedder, clf, images = pipeline
    folder = export_pipeline(clf, embedder, tmp_path / "served")
    assert sorted(p.name for p in folder.iterdir()) == ["backbone.onnx", "head.onnx", "pipeline.json"]
    from qpm_sklearn.serving import OnnxImageClassifier

    served = OnnxImageClassifier(folder, batch_size=5)  # batches of 5 and a last one of 4: a dynamic batch
    expected = clf.predict_proba(embedder.transform(images))
    np.testing.assert_allclose(served.predict_proba(images), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(served.predict(images), clf.classes_[expected.argmax(axis=1)])


def test_serving_runs_without_torch(pipeline, tmp_path):
    embedder, clf, images = pipeline
    folder = export_pipeline(clf, embedder, tmp_path / "served")
    np.save(tmp_path / "images.npy", images[:3])
    script = (
        "import sys; sys.modules['torch'] = None; sys.modules['sklearn'] = None\n"  # importing either now fails
        "import numpy as np\n"
        "from qpm_sklearn.serving import OnnxImageClassifier\n"
        f"served = OnnxImageClassifier({str(folder)!r})\n"
        f"print(list(served.predict(np.load({str(tmp_path / 'images.npy')!r}))))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(list(clf.predict(embedder.transform(images[:3]))))


def test_export_pipeline_refuses_vector_outputs(pipeline, tmp_path):
    embedder, clf, _ = pipeline
    with pytest.raises(ValueError, match="output='patch'"):
        export_pipeline(clf, embedder.set_params(output="cls"), tmp_path / "x")
    embedder.set_params(output="patch")
