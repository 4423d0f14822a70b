"""Shared fixtures: tiny random DINOv2 backbones saved locally (never the network), and the
command line's tiny settings and image folders."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory):
    from qpm_sklearn.testing import save_random_backbone

    return str(save_random_backbone(tmp_path_factory.mktemp("dinov2_reg"), "tiny", num_register_tokens=4))


@pytest.fixture(scope="session")
def tiny_backbone_noreg(tmp_path_factory):
    from qpm_sklearn.testing import save_random_backbone

    return str(save_random_backbone(tmp_path_factory.mktemp("dinov2"), "tiny", num_register_tokens=0))


@pytest.fixture
def count_stages(monkeypatch):
    """The ``desc`` ("dense" / "sparse") of every training run QPMClassifier starts, in order."""
    import qpm_sklearn._stages as stages

    calls = []
    original = stages.train_network

    def counting(*args, **kwargs):
        calls.append(kwargs.get("desc"))
        return original(*args, **kwargs)

    monkeypatch.setattr(stages, "train_network", counting)
    return calls


# ------------------------------------------------------------------ command-line fixtures
@pytest.fixture(scope="session")
def tiny_fit_options():
    """``qpm-sklearn fit`` options of a tiny classifier: 3 classes, 2 of 4 selected features each."""
    return [
        "-p", "n_features=8", "-p", "n_selected=4", "-p", "n_per_class=2", "-p", "hidden_size=8",
        "-p", "n_layers=1", "-p", "dense_epochs=1", "-p", "sparse_epochs=1", "-p", "random_state=0",
        "-p", "device=\"cpu\"",
    ]  # fmt: skip


@pytest.fixture(scope="session")
def embedder_options(tiny_backbone):
    """Command-line embedder options for the tiny backbone at 56 pixels on the CPU, offline and quiet."""
    return ["--model", tiny_backbone, "--image-size", "56", "--device", "cpu", "--local-files-only", "-q"]


@pytest.fixture(scope="session")
def make_image_folder(tmp_path_factory):
    """``make_image_folder(n_per_class)``: a new ``root/<class>/<image>.png`` of 3 classes, 28 x 28
    random pixels with the class's colour channel at 255 (the same images for the same count)."""
    import numpy as np
    from PIL import Image

    def make(n_per_class):
        root = tmp_path_factory.mktemp("images")
        rng = np.random.default_rng(0)
        for c in range(3):
            (root / f"class_{c}").mkdir()
            for j in range(n_per_class):
                pixels = rng.integers(0, 256, size=(28, 28, 3), dtype=np.uint8)
                pixels[:, :, c] = 255
                Image.fromarray(pixels).save(root / f"class_{c}" / f"{j}.png")
        return root

    return make
