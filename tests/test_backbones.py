"""PatchEmbedder per backbone family against the model's own output, on tiny random models.

Each family's model is saved with save_pretrained (with its image-processor configuration) and
loaded through from_pretrained, as a hub id would be. The references below are independent of
qpm_sklearn.backbones: the token layout is written out per family from the model classes, the
pixels are made with PIL and numpy from the saved preprocessor_config.json, and the model is
called through transformers' own classes.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qpm_sklearn import Dinov2Embedder, PatchEmbedder, QPMClassifier
from qpm_sklearn.testing import save_random_model

# family → (how to get the vision model from the saved folder, leading tokens before the
# patches in last_hidden_state (None: an (n, C, h, w) map), whether token 0 is a CLS token)
FAMILIES = {
    "dinov2": ("AutoModel", 1, True),
    "dinov2_with_registers": ("AutoModel", 1 + 4, True),
    "dinov3_vit": ("AutoModel", 1 + 4, True),
    "vit": ("AutoModel", 1, True),
    "clip": ("CLIPModel.vision_model", 1, True),
    "siglip": ("SiglipModel.vision_model", 0, False),
    "siglip2": ("Siglip2Model.vision_model", 0, False),
    "resnet": ("AutoModel", None, False),
    "convnext": ("AutoModel", None, False),
    "dinov3_convnext": ("AutoModel", 1, True),  # token 0: the model's pooled token
}
_FILTERS = {2: Image.Resampling.BILINEAR, 3: Image.Resampling.BICUBIC}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_model(request, tmp_path_factory):
    return request.param, str(save_random_model(tmp_path_factory.mktemp(request.param), request.param))


def _images(n=3, seed=0, shape=(40, 52, 3)):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def _processor_pixels(folder, images):
    """The pixels preprocessing="auto" should give: the saved processor's filter, size and statistics."""
    settings = json.loads((Path(folder) / "preprocessor_config.json").read_text())
    if "max_num_patches" in settings:
        side = int(settings["max_num_patches"] ** 0.5) * settings["patch_size"]
    elif settings.get("do_center_crop"):
        side = settings["crop_size"]["height"]
    else:
        side = settings["size"].get("height", settings["size"].get("shortest_edge"))
    mean, std = np.array(settings["image_mean"]), np.array(settings["image_std"])
    out = []
    for image in images:
        resized = Image.fromarray(image).resize((side, side), _FILTERS[settings["resample"]])
        out.append(((np.asarray(resized, dtype=np.float64) / 255 - mean) / std).transpose(2, 0, 1))
    return torch.tensor(np.stack(out), dtype=torch.float32)


def _own_output(family, folder, pixel_values):
    """The vision model's own forward pass (last_hidden_state, pooler_output), as numpy."""
    import transformers

    how = FAMILIES[family][0]
    if how == "AutoModel":
        model = transformers.AutoModel.from_pretrained(folder)
    else:
        model = getattr(transformers, how.split(".")[0]).from_pretrained(folder).vision_model
    model.eval()
    kwargs = {"pixel_values": pixel_values}
    if family == "siglip2":  # NaFlex input: row-major patches flattened (row, column, channel)
        n, c, s, _ = pixel_values.shape
        p = model.config.patch_size
        g = s // p
        patches = pixel_values.numpy().reshape(n, c, g, p, g, p).transpose(0, 2, 4, 3, 5, 1).reshape(n, g * g, -1)
        kwargs = dict(pixel_values=torch.tensor(patches), pixel_attention_mask=torch.ones(n, g * g, dtype=torch.long),
                      spatial_shapes=torch.tensor([[g, g]] * n))  # fmt: skip
    with torch.no_grad():
        output = model(**kwargs)
    return output.last_hidden_state.numpy(), output.pooler_output.numpy().reshape(len(pixel_values), -1)


def _cpu(folder, **params):
    return PatchEmbedder(folder, **{"device": "cpu", **params})


def test_grid_cls_and_mean_equal_the_models_own_output(family_model):
    family, folder = family_model
    n_prefix, has_cls = FAMILIES[family][1:]
    X = _images(3)
    hidden, pooled = _own_output(family, folder, _processor_pixels(folder, X))
    grid = _cpu(folder).transform(X)  # preprocessing="auto", image size from the processor
    n, h, w, d = grid.shape
    assert (n, h, w) == (3, h, h) and grid.dtype == np.float32
    if n_prefix is None:  # a CNN map (n, C, h, w)
        assert hidden.shape == (3, d, h, w)
        for row in range(h):
            for col in range(w):
                np.testing.assert_allclose(grid[:, row, col], hidden[:, :, row, col], atol=1e-4)
        patches = hidden.reshape(3, d, h * w).transpose(0, 2, 1)
    else:
        assert hidden.shape == (3, n_prefix + h * w, d)
        for row in range(h):
            for col in range(w):  # row-major after the leading tokens
                np.testing.assert_allclose(grid[:, row, col], hidden[:, n_prefix + row * w + col], atol=1e-4)
        patches = hidden[:, n_prefix:]
    mean = _cpu(folder, output="mean").transform(X)
    np.testing.assert_allclose(mean, patches.mean(1), atol=1e-4)
    if family == "resnet":  # its pooler is the average pool of the map
        np.testing.assert_allclose(mean, pooled, atol=1e-4)
    if has_cls:
        cls = _cpu(folder, output="cls").transform(X)
        np.testing.assert_allclose(cls, hidden[:, 0], atol=1e-4)
        if family in ("dinov2", "dinov2_with_registers", "dinov3_vit", "dinov3_convnext"):
            np.testing.assert_allclose(cls, pooled, atol=1e-4)  # their pooler_output is token 0
    else:
        with pytest.raises(ValueError, match="no CLS token.*'mean'"):
            _cpu(folder, output="cls").transform(X)


def test_a_classifier_fits_and_explains_on_every_family(family_model):
    family, folder = family_model
    X = _images(12, seed=1)
    y = np.arange(12) % 2
    X[y == 1, 8:30, 10:34] = 255  # something to find
    grid = _cpu(folder).transform(X)
    clf = QPMClassifier(
        n_features=8, n_selected=4, n_per_class=2, hidden_size=16, n_layers=1,
        dense_epochs=2, sparse_epochs=1, dense_batch_size=6, sparse_batch_size=6, random_state=0,
    ).fit(grid, y)  # fmt: skip
    explanation = clf.explain(grid[:2])
    assert explanation.maps.shape == (2, 2, *grid.shape[1:3])
    assert np.isfinite(explanation.contributions).all()


def test_the_cache_keeps_families_apart(family_model, tmp_path):
    family, folder = family_model
    _cpu(folder, output="mean", embedding_cache=tmp_path).transform(_images(2))
    (settings,) = tmp_path.glob("*/settings.json")
    assert json.loads(settings.read_text())["family"] == family


# ------------------------------------------------------------------------------------------------
# preprocessing="auto" and the defaults
# ------------------------------------------------------------------------------------------------


def test_auto_preprocessing_differs_from_imagenet_where_the_processor_does(tmp_path):
    folder = str(save_random_model(tmp_path / "siglip", "siglip"))  # mean = std = 0.5, bilinear
    X = _images(2)
    auto = _cpu(folder).transform(X)
    imagenet = _cpu(folder, preprocessing="imagenet", image_size=64).transform(X)
    assert not np.allclose(auto, imagenet, atol=1e-2)
    # Given statistics replace the processor's; the filter and size stay the processor's.
    given = _cpu(folder, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)).transform(X)
    assert not np.allclose(given, auto, atol=1e-3)


def test_auto_without_a_processor_configuration_is_refused(tmp_path):
    folder = save_random_model(tmp_path / "vit", "vit", image_processor=False)
    with pytest.raises(ValueError, match=r"preprocessor_config.json.*preprocessing='imagenet'"):
        _cpu(str(folder)).transform(_images(1))
    assert _cpu(str(folder), preprocessing="imagenet", image_size=32).transform(_images(1)).shape == (1, 2, 2, 32)


def test_dinov2_embedder_keeps_its_defaults(tiny_backbone):
    embedder = Dinov2Embedder()
    assert (embedder.model, embedder.image_size, embedder.preprocessing) == (
        "facebook/dinov2-with-registers-base", 224, "imagenet"
    )
    assert isinstance(embedder, PatchEmbedder)
    X = _images(2)
    # On a DINOv2 model "auto" reads ImageNet statistics and the bicubic filter: the same numbers.
    reference = Dinov2Embedder(tiny_backbone, image_size=56, device="cpu").transform(X)
    np.testing.assert_allclose(_cpu(tiny_backbone).transform(X), reference, atol=1e-6)


def test_unknown_family_is_refused_naming_the_supported_ones(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model_type='bert'.*dinov3_vit.*resnet"):
        _cpu(str(tmp_path)).transform(_images(1))


def test_image_size_must_be_a_multiple_of_the_stride(tmp_path):
    folder = str(save_random_model(tmp_path / "resnet", "resnet"))
    with pytest.raises(ValueError, match="multiple of the model's total stride 32"):
        _cpu(folder, image_size=48).transform(_images(1))


# ------------------------------------------------------------------------------------------------
# Conventions: feature names, pandas output, tags, parameters
# ------------------------------------------------------------------------------------------------


def test_feature_names_and_pandas_output(tiny_backbone):
    pd = pytest.importorskip("pandas")
    images = pd.Series([_images(1, seed=i)[0] for i in range(3)], index=["a", "b", "c"])
    embedder = Dinov2Embedder(tiny_backbone, image_size=28, device="cpu", output="cls")
    names = embedder.get_feature_names_out()
    assert list(names) == [f"cls{i}" for i in range(32)]
    frame = embedder.set_output(transform="pandas").transform(images)
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == list(names)
    assert list(frame.index) == ["a", "b", "c"]  # a Series' index is kept
    np.testing.assert_allclose(frame.to_numpy(), embedder.set_output(transform="default").transform(list(images)))
    patch = Dinov2Embedder(tiny_backbone, image_size=28, device="cpu").set_output(transform="pandas")
    with pytest.raises(ValueError, match="4-D grid"):
        patch.transform(list(images))
    with pytest.raises(ValueError, match="4-D grid"):
        patch.get_feature_names_out()


def test_tags_describe_image_input_and_float_output():
    from sklearn.utils import get_tags

    tags = get_tags(PatchEmbedder())
    assert tags.input_tags.string and not tags.input_tags.two_d_array and not tags.input_tags.three_d_array
    assert tags.transformer_tags.preserves_dtype == [] and not tags.requires_fit


@pytest.mark.parametrize("name", ["image_size", "batch_size", "n_jobs"])
def test_bools_are_refused_for_integer_parameters(name):
    with pytest.raises(ValueError, match=name):
        PatchEmbedder(**{name: True}).fit(None)


def test_the_embedding_cache_has_one_name(tiny_backbone, tmp_path):
    X = _images(2)
    Dinov2Embedder(tiny_backbone, image_size=28, device="cpu", embedding_cache=tmp_path / "c").transform(X)
    assert list((tmp_path / "c").glob("*/settings.json"))  # it really is the embedding cache
    assert "cache_dir" not in Dinov2Embedder().get_params()
    with pytest.raises(TypeError, match="cache_dir"):
        Dinov2Embedder(tiny_backbone, cache_dir=tmp_path)


# ------------------------------------------------------------------------------------------------
# The paper table on other backbones
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["resnet", "dinov3_vit"])
def test_paper_table_runs_on_a_resnet_and_a_dinov3(family, tmp_path):
    from _fake_datasets import write_fake_cub

    from qpm_sklearn.cli import main

    write_fake_cub(tmp_path / "root", n_classes=3, n_per_class=4, size=28)
    model = str(save_random_model(tmp_path / family, family))
    out = tmp_path / "table.json"
    argv = [
        "table", "--dataset", "cub", "--root", str(tmp_path / "root"), "--model", model, "--out", str(out),
        "--rows", "linear_probe,qpm", "--quick", "--image-size", "64", "--batch-size", "8", "--device", "cpu",
        "--n-features", "16", "--hidden-size", "16", "--n-layers", "1", "--n-selected", "8", "--n-per-class", "5",
        "--random-state", "0", "--fail-fast", "-q",
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    probe, qpm = report["rows"]
    assert report["backbone"]["family"] == family
    assert qpm["status"] == probe["status"] == "ok" and 0 <= qpm["metrics"]["Accuracy"] <= 1
    assert "DINO" not in qpm["label"] and family in qpm["label"] and "adapter" in qpm["label"]
    if family == "resnet":  # no CLS: the probe reads the mean-pooled map; beside the paper's fine-tuned ResNet50
        assert probe["tokens"] == "mean" and "mean-pooled" in probe["label"]
        assert qpm["paper"]["Accuracy"] == 82.9 and "fine-tuned" in report["backbone"]["paper_reference"]
        assert probe["paper"] == {}
    else:  # the paper has no DINOv3 rows: nothing to show beside
        assert probe["tokens"] == "cls" and qpm["paper"] == probe["paper"] == {}
