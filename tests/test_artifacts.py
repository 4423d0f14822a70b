"""Self-contained artifacts: a fitted pipeline saved with its backbone loads with the original gone."""

import json
import pickle
import re
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from qpm_sklearn import Dinov2Embedder, PatchEmbedder, QPMClassifier
from qpm_sklearn.artifacts import MANIFEST, load_pipeline, save_backbone, save_pipeline
from qpm_sklearn.testing import save_random_backbone, save_random_model

SMALL = dict(
    n_features=12, n_selected=4, n_per_class=2, hidden_size=16, n_layers=2,
    dense_epochs=2, sparse_epochs=1, dense_batch_size=16, sparse_batch_size=16,
)  # fmt: skip


def _images(seed=0):
    rng = np.random.RandomState(seed)
    y = np.repeat(["cat", "dog"], 6)
    base = np.where(y == "cat", 40, 200).astype(np.uint8)[:, None, None, None]
    return base + rng.randint(0, 30, (len(y), 30, 30, 3)).astype(np.uint8), y


@pytest.fixture
def fitted(tmp_path):
    """A pipeline fitted on a backbone folder of its own (the tests delete it)."""
    backbone = save_random_backbone(tmp_path / "original", "tiny", num_register_tokens=4)
    X, y = _images()
    # preprocessing="auto": the bundle must carry the image-processor configuration too.
    embedder = Dinov2Embedder(str(backbone), image_size=28, preprocessing="auto", device="cpu", batch_size=4)
    pipeline = make_pipeline(embedder, QPMClassifier(**SMALL, random_state=0)).fit(X, y)
    return pipeline, backbone, X


def test_loads_with_the_original_backbone_and_the_saved_folder_moved(fitted, tmp_path):
    pipeline, backbone, X = fitted
    expected_labels, expected_proba = pipeline.predict(X), pipeline.predict_proba(X)
    saved = save_pipeline(pipeline, tmp_path / "bundle")
    shutil.rmtree(backbone)
    moved = shutil.move(saved, tmp_path / "elsewhere")
    loaded = load_pipeline(moved)
    assert str(backbone) not in json.dumps(loaded[0].get_params())
    np.testing.assert_array_equal(loaded.predict(X), expected_labels)
    # same weights, batch size and threads: only reading them back could change the numbers
    np.testing.assert_allclose(loaded.predict_proba(X), expected_proba, rtol=0, atol=1e-6)
    assert loaded[0].get_params()["preprocessing"] == "auto"
    assert loaded[0].get_params()["image_size"] == 28
    np.testing.assert_array_equal(loaded.classes_, ["cat", "dog"])


def test_folder_holds_no_pickle(fitted, tmp_path):
    pipeline, _, X = fitted
    # machine-local and torch-typed parameters: the cache is dropped, the dtype kept by name
    pipeline[0].set_params(embedding_cache=str(tmp_path / "cache"), dtype=torch.float32)
    folder = save_pipeline(pipeline, tmp_path / "bundle")
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == [
        "backbones/step0/config.json", "backbones/step0/model.safetensors",
        "backbones/step0/preprocessor_config.json", MANIFEST, "step1.npz",
    ]  # fmt: skip
    with np.load(folder / "step1.npz", allow_pickle=False) as archive:  # refuses pickled data
        assert "sparse_weight_" in archive.files
    manifest = json.loads((folder / MANIFEST).read_text())
    assert [step["estimator"] for step in manifest["steps"]] == ["Dinov2Embedder", "QPMClassifier"]
    assert manifest["steps"][0]["params"]["model"] is None
    assert manifest["steps"][0]["params"]["embedding_cache"] is None
    loaded = load_pipeline(folder)
    assert loaded[0].get_params()["dtype"] == "float32" and loaded[0].get_params()["embedding_cache"] is None
    assert not list(tmp_path.glob(".bundle*"))  # no staging folder left behind


def test_pickled_pipeline_names_the_missing_backbone(fitted, tmp_path):
    pipeline, backbone, X = fitted
    restored = pickle.loads(pickle.dumps(pipeline))
    assert "_backbone" not in vars(restored[0])  # the torch model is never pickled
    shutil.rmtree(backbone)
    with pytest.raises(FileNotFoundError, match="save_pipeline") as error:
        restored.predict(X)
    assert str(backbone) in str(error.value)


def test_refusals(fitted, tmp_path):
    pipeline, _, X = fitted
    with pytest.raises(TypeError, match="must be a sklearn.pipeline.Pipeline"):
        save_pipeline(pipeline[-1], tmp_path / "a")
    with pytest.raises(TypeError, match="step 'standardscaler' is a StandardScaler"):
        save_pipeline(make_pipeline(StandardScaler(), QPMClassifier()), tmp_path / "b")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        save_pipeline(pipeline, tmp_path / "full")
    folder = save_pipeline(pipeline, tmp_path / "bundle")
    manifest = json.loads((folder / MANIFEST).read_text())

    def broken(change):
        copy = shutil.copytree(folder, tmp_path / f"broken{len(list(tmp_path.iterdir()))}")
        edited = json.loads(json.dumps(manifest))
        change(edited)
        (copy / MANIFEST).write_text(json.dumps(edited))
        return copy

    with pytest.raises(ValueError, match="relative path inside the folder"):
        load_pipeline(broken(lambda m: m["steps"][0].update(backbone="../original")))
    with pytest.raises(ValueError, match="one of the classes"):
        load_pipeline(broken(lambda m: m["steps"][1].update(estimator="Pipeline")))
    with pytest.raises(ValueError, match="format version"):
        load_pipeline(broken(lambda m: m.update(format_version=2)))
    with pytest.raises(ValueError, match="invalid parameters"):
        load_pipeline(broken(lambda m: m["steps"][0]["params"].update(batch_size=0)))
    incomplete = broken(lambda m: None)
    assert load_pipeline(incomplete).predict(X).shape == (len(X),)  # the unchanged copy loads
    shutil.rmtree(incomplete / "backbones")
    with pytest.raises(FileNotFoundError, match="backbone of step 'dinov2embedder'"):
        load_pipeline(incomplete)
    with pytest.raises(FileNotFoundError, match="no pipeline.json"):
        load_pipeline(tmp_path / "full")


def test_save_backbone_keeps_a_two_tower_models_vision_features(tmp_path):
    # CLIP's checkpoint holds both towers; the copy holds the vision tower the embedder runs.
    original = save_random_model(tmp_path / "clip", "clip")
    embedder = PatchEmbedder(str(original), image_size=32, device="cpu")
    X, _ = _images()
    expected = embedder.transform(X[:3])
    copy = save_backbone(embedder, tmp_path / "copy")
    shutil.rmtree(original)
    copied = embedder.set_params(model=str(copy)).transform(X[:3])
    np.testing.assert_allclose(copied, expected, rtol=0, atol=1e-6)
    assert json.loads((copy / "config.json").read_text())["model_type"] == "clip_vision_model"


def section_code(heading):
    """The python code blocks of one ``## heading`` section of docs/deploying.md, in order."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "deploying.md").read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return [textwrap.dedent(block) for block in re.findall(r"^ *```python\n(.*?)^ *```", section, flags=re.S | re.M)]


def test_docs_examples_run(fitted, tmp_path, monkeypatch):
    pipeline, backbone, X = fitted
    expected = pipeline.predict(X)
    blocks = section_code("Self-contained artifacts")
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    namespace = {"pipeline": pipeline, "images": X}
    exec(blocks[0], namespace)
    np.testing.assert_array_equal(namespace["labels"], expected)
    exec(blocks[1], namespace)
    assert pipeline[0].get_params()["model"] == str(tmp_path / "backbone_copy")
    shutil.rmtree(backbone)
    np.testing.assert_array_equal(pipeline.predict(X), expected)  # now on the copy
