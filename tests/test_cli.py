"""The qpm-sklearn command line: each subcommand end to end on a tiny random backbone."""

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from qpm_sklearn import Dinov2Embedder, QPMClassifier
from qpm_sklearn.cli import main



@pytest.fixture(scope="module")
def image_folder(make_image_folder):
    """``root/<class>/<image>.png``: 3 classes of 4 images, 28 x 28."""
    return make_image_folder(4)


def _embedder(tiny_backbone, **params):
    return Dinov2Embedder(model=tiny_backbone, image_size=56, device="cpu", local_files_only=True, **params)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, image_folder, embedder_options, tiny_fit_options):
    folder = tmp_path_factory.mktemp("fit")
    cache = folder / "cache"
    assert main(["fit", str(image_folder), "--out", str(folder / "model.npz"), "--embedding-cache", str(cache),
                 *embedder_options, *tiny_fit_options]) == 0  # fmt: skip
    return folder / "model.npz", cache


def test_help_reads_well(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in ("embed", "fit", "explain", "table"):
        assert command in text
    for command in ("embed", "fit", "explain"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "usage: qpm-sklearn " + command in capsys.readouterr().out


def test_embed_writes_the_cache_and_resumes(tmp_path, image_folder, embedder_options, tiny_backbone, capsys):
    cache, save = tmp_path / "cache", tmp_path / "X.npy"
    assert main(["embed", str(image_folder), "--embedding-cache", str(cache), "--save", str(save), *embedder_options]) == 0
    assert "12 images embedded" in capsys.readouterr().out
    files = (tmp_path / "X.paths.txt").read_text().split()
    assert [p.split("/")[-2:] for p in files] == [[f"class_{c}", f"{j}.png"] for c in range(3) for j in range(4)]
    X = np.load(save)
    np.testing.assert_allclose(X, _embedder(tiny_backbone).transform(files), atol=2e-3, rtol=1e-2)  # float16 cache
    assert any(cache.rglob("embeddings.npy"))
    # A second run reads the cache back: the same numbers, bit for bit (same stored float16 rows).
    assert main(["embed", str(image_folder), "--embedding-cache", str(cache), "--save", str(tmp_path / "Y.npy"), *embedder_options]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "Y.npy"), X)


def test_embed_needs_a_destination(image_folder, embedder_options, capsys):
    assert main(["embed", str(image_folder), *embedder_options]) == 2
    assert "--embedding-cache" in capsys.readouterr().err


def test_fit_from_an_image_folder_saves_a_loadable_model(fitted, image_folder, tiny_backbone):
    model, cache = fitted
    clf = QPMClassifier.load(model)
    assert clf.classes_.tolist() == ["class_0", "class_1", "class_2"]
    assert clf.n_selected == 4 and clf.assignment_.sum(axis=1).tolist() == [2, 2, 2]
    settings = json.loads(model.with_name("model.embedder.json").read_text())["embedder"]
    assert settings["model"] == tiny_backbone and settings["image_size"] == 56
    # The same fit through the Python API gives the same model (same seed, same cached embeddings).
    files = sorted(str(p) for p in image_folder.rglob("*.png"))
    X = _embedder(tiny_backbone, embedding_cache=str(cache)).transform(files)
    y = [p.split("/")[-2] for p in files]
    reference = QPMClassifier(n_features=8, n_selected=4, n_per_class=2, hidden_size=8, n_layers=1, dense_epochs=1,
                              sparse_epochs=1, random_state=0, device="cpu").fit(X, y)  # fmt: skip
    np.testing.assert_array_equal(clf.selected_features_, reference.selected_features_)
    np.testing.assert_allclose(clf.predict_proba(X), reference.predict_proba(X), atol=1e-5)


def test_fit_from_embeddings_and_labels(tmp_path, capsys, tiny_fit_options):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 2, 2, 6)).astype(np.float32)
    y = np.repeat([3, 5, 7], 10)
    X[y == 5, 0] += 2
    np.save(tmp_path / "X.npy", X)
    (tmp_path / "y.txt").write_text("\n".join(map(str, y)) + "\n")
    assert main(["fit", "--embeddings", str(tmp_path / "X.npy"), "--labels", str(tmp_path / "y.txt"),
                 "--out", str(tmp_path / "m"), "-q", *tiny_fit_options]) == 0  # fmt: skip
    clf = QPMClassifier.load(tmp_path / "m.npz")
    assert clf.classes_.tolist() == [3, 5, 7]  # numeric labels stay numbers
    assert json.loads((tmp_path / "m.embedder.json").read_text())["embedder"] is None  # no images were embedded
    capsys.readouterr()
    (tmp_path / "short.txt").write_text("1\n2\n")
    assert main(["fit", "--embeddings", str(tmp_path / "X.npy"), "--labels", str(tmp_path / "short.txt"), "--out", str(tmp_path / "m")]) == 1
    assert "expected 30 labels" in capsys.readouterr().err


def test_fit_refuses_an_unknown_parameter(tmp_path, image_folder, embedder_options, capsys):
    assert main(["fit", str(image_folder), "--out", str(tmp_path / "m.npz"), "-p", "n_selectd=3", *embedder_options]) == 2
    assert "n_selectd" in capsys.readouterr().err


def test_explain_writes_the_contributions_and_figures(fitted, image_folder, tiny_backbone, tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("pandas")
    model, cache = fitted
    out = tmp_path / "explained"
    images = [str(image_folder / "class_1"), str(image_folder / "class_0" / "2.png")]
    assert main(["explain", str(model), *images, "--out", str(out), "--figures", "2", "-q", "--embedding-cache", str(cache)]) == 0
    files = [str(image_folder / "class_1" / f"{j}.png") for j in range(4)] + [images[1]]
    with open(out / "contributions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # Reference: the Python API on the same images, embedded with the settings saved beside the model.
    clf = QPMClassifier.load(model)
    explanation = clf.explain(_embedder(tiny_backbone).transform(files))
    assert len(rows) == int((explanation.features >= 0).sum())
    for row in rows:
        i, rank = int(row["sample"]), int(row["rank"])
        assert row["input"] == files[i]
        assert row["prediction"] == str(explanation.prediction[i])
        assert int(row["feature"]) == explanation.features[i, rank]
        assert float(row["contribution"]) == pytest.approx(float(explanation.contributions[i, rank]), abs=1e-2)
    assert sorted(p.name for p in out.glob("*.png")) == ["0000_0.png", "0001_1.png"]


def test_explain_with_feature_names(fitted, tmp_path):
    pytest.importorskip("pandas")
    model, _ = fitted
    clf = QPMClassifier.load(model)
    if "feature_names" not in clf.get_params():
        pytest.skip("QPMClassifier has no feature_names parameter yet")
    names = {int(f): f"part {i}" for i, f in enumerate(clf.selected_features_)}
    (tmp_path / "names.json").write_text(json.dumps(names))  # JSON keys are strings: "12": "part 0"
    X = np.random.default_rng(0).normal(size=(3, 4, 4, clf.n_features_in_)).astype(np.float32)
    np.save(tmp_path / "X.npy", X)
    assert main(["explain", str(model), "--embeddings", str(tmp_path / "X.npy"), "--out", str(tmp_path / "e"),
                 "--feature-names", str(tmp_path / "names.json"), "-q"]) == 0  # fmt: skip
    with open(tmp_path / "e" / "contributions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(row["feature_name"] == names[int(row["feature"])] for row in rows)
    assert [row["input"] for row in rows][:1] == ["0"]  # rows of an array are named by position


def test_images_are_embedded_with_the_saved_settings_and_warn_without_any(fitted, tiny_backbone, tmp_path, capsys):
    """explain and report embed with the settings saved beside the model, the command line winning;
    with neither (a model without a sidecar, no options) they warn once that defaults are used."""
    from qpm_sklearn.cli import build_parser
    from qpm_sklearn.cli._inputs import embedder_params_for_model

    model, _ = fitted
    bare = tmp_path / "bare.npz"
    bare.write_bytes(b"")  # no MODEL.embedder.json beside it

    def settings(path, *options, **keywords):
        args = build_parser().parse_args(["explain", str(path), "x.png", "--out", str(tmp_path), *options])
        return embedder_params_for_model(path, args, "explain", **keywords)

    capsys.readouterr()
    assert settings(bare) == {}
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("qpm-sklearn explain: warning: no embedder settings are saved with")
    assert settings(bare, "--image-size", "84") == {"image_size": 84}
    assert settings(bare, warn_defaults=False) == {}
    saved = settings(model)
    assert saved["image_size"] == 56 and saved["device"] == "cpu" and saved["local_files_only"] is True
    assert settings(model, "--image-size", "84") == {**saved, "image_size": 84}
    assert capsys.readouterr().err == ""


def test_table_runs_the_paper_harness(tmp_path, tiny_backbone, capsys):
    from _fake_datasets import write_fake_cub

    with pytest.raises(SystemExit) as exit_info:
        main(["table", "--help"])
    assert exit_info.value.code == 0 and "usage: qpm-sklearn table" in capsys.readouterr().out
    write_fake_cub(tmp_path / "root", n_classes=3, n_per_class=4, size=28)
    out = tmp_path / "table.json"
    argv = ["table", "--dataset", "cub", "--root", str(tmp_path / "root"), "--model", tiny_backbone, "--rows", "qpm",
            "--out", str(out), "--quick", "--image-size", "56", "--batch-size", "8", "--device", "cpu",
            "--n-features", "8", "--hidden-size", "8", "--n-layers", "1", "--n-selected", "4", "--n-per-class", "2",
            "--random-state", "0"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert [row["name"] for row in report["rows"]] == ["qpm"] and report["rows"][0]["status"] == "ok"
    assert "DINO-QPM" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("qpm-sklearn") is None, reason="the package is not installed with its entry point")
def test_installed_entry_point():
    result = subprocess.run(["qpm-sklearn", "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("qpm_sklearn ")
    result = subprocess.run([sys.executable, "-m", "qpm_sklearn.cli", "fit", "--help"], capture_output=True, text=True, check=True)
    assert "-p NAME=VALUE" in result.stdout
