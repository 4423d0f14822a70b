"""Shared fixtures: tiny random DINOv2 backbones saved locally (never the network)."""

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
