"""The examples run end to end offline (they are the README's main command)."""

import importlib.util
import re
from pathlib import Path

import numpy as np
from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_offline_on_digits(tmp_path, capsys):
    result = load_example("quickstart").main(["--out", str(tmp_path / "explanation.png")])
    out = capsys.readouterr().out
    assert "UNTRAINED" in out, "the output must say plainly that no pretrained weights were used"
    assert "class -> features" in out
    # the explained image's true class is shown, and whether the model got it right
    assert re.search(r"first test image: true \d, predicted \d \((correct|MISCLASSIFIED)\)", out)
    # ten digit classes: chance is 0.1; even random ViT features separate digits well
    assert result["dense_accuracy"] > 0.5 and result["sparse_accuracy"] > 0.5
    assert (tmp_path / "explanation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quickstart_with_a_model_folder_and_an_image_folder(tmp_path, tiny_backbone, capsys):
    rng = np.random.RandomState(0)
    for label, level in (("dark", 40), ("bright", 210)):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(8):
            pixels = np.clip(level + rng.randint(-30, 30, (40, 50, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{i}.jpg")
    quickstart = load_example("quickstart")
    result = quickstart.main(
        ["--model", tiny_backbone, "--images", str(tmp_path / "images"), "--out", str(tmp_path / "e.png"),
         "--device", "cpu"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "UNTRAINED" not in out
    assert "dark" in out and "bright" in out
    assert 0.0 <= result["sparse_accuracy"] <= 1.0
    assert (tmp_path / "e.png").exists()


def test_explain_parts_writes_the_docs_figures(tmp_path):
    load_example("explain_parts").main(["--out", str(tmp_path)])
    written = sorted(p.name for p in tmp_path.glob("*.png"))
    assert written == sorted(p.name for p in (EXAMPLES.parent / "docs" / "figures").glob("*.png"))
    for path in tmp_path.glob("*.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_watermark_example_measures_before_and_after(capsys):
    result = load_example("watermark").main(["--seeds", "1"])
    out = capsys.readouterr().out
    assert "watermark feature" in out and "reference: fitted without watermark" in out
    run = result["runs"][0]
    assert run["watermark_feature"] in run["dense_channels_firing"]
    assert run["watermark_feature"] not in run["edit"]["added"]
    for key in ("before", "exclude_watermark_feature", "exclude_dense_channels_firing", "clean_fit"):
        assert 0.0 <= run[key]["test_accuracy"] <= 1.0
