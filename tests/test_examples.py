"""The examples run end to end offline and print what they claim (they are the README's main command).

Each printed number is read back from the output and checked against a recomputation
from the fitted pipeline the quickstart returns, so a quickstart that printed stale,
swapped or made-up numbers fails here.
"""

import importlib.util
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NUMBER = r"[-+]?\d+\.\d+"


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_report(out):
    """The quickstart's printed results as numbers (each line's pattern must match)."""
    dense = re.search(rf"test accuracy  dense model : ({NUMBER})  \((\d+) features, all classes\)", out)
    sparse = re.search(rf"test accuracy  QPM model   : ({NUMBER})  \((\d+) features, (\d+) per class\)", out)
    selection = re.search(rf"selection: objective ({NUMBER}), upper bound ({NUMBER}), gap ({NUMBER}) %", out)
    first = re.search(
        rf"first test image: true (\S+), predicted (\S+) \((correct|MISCLASSIFIED)\); its logit = ({NUMBER}) "
        r"\+ sum of features (.*)\n",
        out,
    )
    assert dense and sparse and selection and first, out
    table = out.split("class -> features (adapter channel ids)\n")[1].split("\n\n")[0]
    return {
        "dense_accuracy": float(dense[1]), "n_features": int(dense[2]),
        "sparse_accuracy": float(sparse[1]), "n_selected": int(sparse[2]), "n_per_class": int(sparse[3]),
        "objective": float(selection[1]), "upper_bound": float(selection[2]), "gap": float(selection[3]) / 100,
        "class_features": {line.split(":")[0].strip(): [int(f) for f in line.split(":")[1].split()]
                           for line in table.splitlines()},
        "true": first[1], "predicted": first[2], "verdict": first[3], "intercept": float(first[4]),
        "contributions": [(int(f), float(c)) for f, c in re.findall(rf"(-?\d+) \(({NUMBER})\)", first[5])],
    }  # fmt: skip


def check_report(report, result, images, labels, class_names):
    """Every printed number against the returned pipeline, recomputed on the test images."""
    pipeline, test = result["pipeline"], result["test_indices"]
    qpm = pipeline[-1]
    test_images = images[test] if isinstance(images, np.ndarray) else [images[i] for i in test]
    embeddings = pipeline[0].transform(test_images)

    # the two accuracies are those of the two stages on the held-out images (3 decimals printed)
    dense = np.mean(qpm.predict(embeddings, stage="dense") == labels[test])
    sparse = np.mean(pipeline.predict(test_images) == labels[test])
    assert report["dense_accuracy"] == pytest.approx(dense, abs=5e-4)
    assert report["sparse_accuracy"] == pytest.approx(sparse, abs=5e-4)
    assert (result["dense_accuracy"], result["sparse_accuracy"]) == pytest.approx((dense, sparse))
    assert (report["n_features"], report["n_selected"], report["n_per_class"]) == (
        qpm.n_features, qpm.n_selected, qpm.n_per_class)  # fmt: skip

    # the selection's bound is above its objective and the gap is their relative difference
    assert report["objective"] <= report["upper_bound"] + 1e-3
    relative = (report["upper_bound"] - report["objective"]) / abs(report["objective"])
    assert report["gap"] == pytest.approx(relative, abs=1e-3 / abs(report["objective"]) + 1e-4)

    # one line per class, naming the class, with its n_per_class features among the selected ones
    expected = {class_names[label]: list(qpm.class_features(label)) for label in qpm.classes_}
    assert report["class_features"] == expected
    for features in report["class_features"].values():
        assert len(set(features)) == qpm.n_per_class
        assert set(features) <= set(qpm.selected_features_)

    # the first test image: its true class, the model's prediction, and the logit as the printed sum
    predicted = pipeline.predict(test_images[:1])[0]
    assert report["true"] == class_names[labels[test[0]]]
    assert report["predicted"] == class_names[predicted]
    assert report["verdict"] == ("correct" if predicted == labels[test[0]] else "MISCLASSIFIED")
    explanation = qpm.explain(embeddings[:1])
    assert [f for f, _ in report["contributions"]] == list(explanation.features[0])
    assert [c for _, c in report["contributions"]] == pytest.approx(explanation.contributions[0], abs=5e-3 + 1e-5)
    assert sorted(f for f, _ in report["contributions"]) == sorted(qpm.class_features(predicted))
    logit = explanation.logit[0]
    if len(qpm.classes_) > 2:  # (two classes give one decision value, not a logit per class)
        assert qpm.decision_function(embeddings[:1])[0, list(qpm.classes_).index(predicted)] == pytest.approx(logit)
    printed = report["intercept"] + sum(c for _, c in report["contributions"])
    assert printed == pytest.approx(logit, abs=0.005 * (1 + len(report["contributions"])) + 1e-3)


def check_figure(path, out):
    """The figure the output names exists and decodes to a non-blank image."""
    assert f"explanation figure saved to {path}\n" in out
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.load()  # decodes every pixel: a truncated or corrupt file raises here
        pixels = np.asarray(image.convert("L"))
    assert min(pixels.shape) >= 200
    assert pixels.std() > 10, "a blank figure"


def test_quickstart_offline_on_digits(tmp_path, capsys):
    quickstart = load_example("quickstart")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the offline demo warns about nothing
        result = quickstart.main(["--out", str(tmp_path / "explanation.png")])
    captured = capsys.readouterr()
    out = captured.out
    assert "UNTRAINED" in out, "the output must say plainly that no pretrained weights were used"
    assert captured.err == "", "the offline demo is quiet: no progress bars, no stage lines"
    images, labels, class_names = quickstart.digits_images()
    report = read_report(out)
    assert sorted(report["class_features"]) == sorted(class_names)
    check_report(report, result, images, labels, class_names)
    # ten digit classes: chance is 0.1; even random ViT features separate digits well
    assert report["dense_accuracy"] > 0.5 and report["sparse_accuracy"] > 0.5
    check_figure(tmp_path / "explanation.png", out)
    assert re.search(r"done in \d+\.\d s\n$", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["explanation.png"]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Two classes of 8 photos each, dark and bright, as JPEG files in one folder per class."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.RandomState(0)
    for label, level in (("dark", 40), ("bright", 210)):
        (root / label).mkdir()
        for i in range(8):
            pixels = np.clip(level + rng.randint(-30, 30, (40, 50, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.jpg")
    return root


def test_quickstart_cpu_sized_on_a_model_folder_and_an_image_folder(tmp_path, tiny_backbone, image_folder, capsys):
    quickstart = load_example("quickstart")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the CPU-sized configuration gives no slowness warning
        result = quickstart.main(
            ["--model", tiny_backbone, "--images", str(image_folder), "--out", str(tmp_path / "e.png"),
             "--device", "cpu", "--cpu-sized"]
        )  # fmt: skip
    captured = capsys.readouterr()
    out = captured.out
    assert "UNTRAINED" not in out
    qpm = result["pipeline"][-1]
    assert {k: qpm.get_params()[k] for k in quickstart.CPU_SIZED} == quickstart.CPU_SIZED
    assert result["pipeline"][0].image_size == quickstart.CPU_SIZED_IMAGE_SIZE
    # own images: a line per stage on stderr (the bars go there too), results alone on stdout
    assert "embedding 12 training images at 112 px" in captured.err
    assert "embedding 4 test images" in captured.err
    assert "[" not in out.split("class -> features")[0]
    images, labels, class_names = quickstart.folder_images(image_folder)
    report = read_report(out)
    assert sorted(report["class_features"]) == ["bright", "dark"]
    check_report(report, result, images, labels, class_names)
    # dark against bright is separable by mean intensity: the dense stage must get every test image
    assert report["dense_accuracy"] == 1.0
    check_figure(tmp_path / "e.png", out)


@pytest.mark.parametrize("device", ["cpu", None, "cuda"])  # None and "cuda" fall back to the CPU here
def test_the_paper_configuration_on_a_cpu_warns_once_and_names_the_cpu_sized_option(device, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    quickstart = load_example("quickstart")
    with pytest.warns(UserWarning) as records:
        classifier, image_size = quickstart.own_data_configuration(False, device, seed=0, verbose=1)
    assert len(records) == 1
    message = str(records[0].message)
    assert "--cpu-sized" in message and "hours" in message
    # the paper's configuration itself: the estimator's defaults at 224 px
    from qpm_sklearn import QPMClassifier

    defaults = QPMClassifier().get_params()
    assert {k: v for k, v in classifier.get_params().items() if k not in ("device", "random_state", "verbose")} == {
        k: v for k, v in defaults.items() if k not in ("device", "random_state", "verbose")
    }
    assert image_size == 224 and classifier.verbose == 1
    # the CPU-sized configuration, and the paper's on an accelerator, do not warn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        classifier, image_size = quickstart.own_data_configuration(True, "cpu", seed=0, verbose=0)
        assert image_size == quickstart.CPU_SIZED_IMAGE_SIZE and classifier.hidden_size == 256
        if device != "cpu":  # on a machine with a GPU, auto and "cuda" run there
            monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
            quickstart.own_data_configuration(False, device, seed=0, verbose=0)


def test_cpu_sized_without_a_model_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_example("quickstart").main(["--cpu-sized"])
    assert exit_info.value.code == 2
    assert "--cpu-sized" in capsys.readouterr().err


def test_quickstart_quiet_and_without_matplotlib_prints_only_results_and_no_figure(
    tmp_path, tiny_backbone, image_folder, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "qpm_sklearn.plotting", None)  # `import` of it raises ImportError
    load_example("quickstart").main(
        ["--model", tiny_backbone, "--images", str(image_folder), "--out", str(tmp_path / "e.png"),
         "--device", "cpu", "--cpu-sized", "--quiet"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert captured.err == "", "--quiet: no progress bars, no stage lines"
    assert "test accuracy  QPM model" in captured.out
    assert "matplotlib is not installed: no figure (pip install 'qpm_sklearn[plot]')." in captured.out
    assert "figure saved" not in captured.out
    assert not (tmp_path / "e.png").exists()


def test_explain_parts_writes_the_docs_figures(tmp_path):
    load_example("explain_parts").main(["--out", str(tmp_path)])
    written = sorted(p.name for p in tmp_path.glob("*.png"))
    assert written == sorted(p.name for p in (EXAMPLES.parent / "docs" / "figures").glob("*.png"))
    for path in tmp_path.glob("*.png"):
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as image:
            image.load()
            assert np.asarray(image.convert("L")).std() > 10


def test_watermark_example_measures_before_and_after(capsys):
    result = load_example("watermark").main(["--seeds", "1"])
    out = capsys.readouterr().out
    assert "watermark feature" in out and "reference: fitted without watermark" in out
    run = result["runs"][0]
    assert run["watermark_feature"] in run["dense_channels_firing"]
    assert run["watermark_feature"] not in run["edit"]["added"]
    accuracy = {key: run[key]["test_accuracy"] for key in ("before", "exclude_dense_channels_firing", "clean_fit")}
    # Removing what fires on the watermark must not make the model worse on clean test data.
    assert accuracy["exclude_dense_channels_firing"] >= accuracy["before"], accuracy
