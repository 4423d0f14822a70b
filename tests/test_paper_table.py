"""The paper-table harness (``qpm-sklearn table``, benchmarks/paper_table.py), end to end on a tiny fake CUB tree."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from _fake_datasets import write_fake_cub

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_table.py"


@pytest.fixture(scope="module")
def paper_table():
    from qpm_sklearn.cli import _table

    return _table


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("paper_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def fake_cub_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cub_root")
    write_fake_cub(root, n_classes=3, n_per_class=4, size=28)
    return root


# Tiny estimator sizes: 3 classes, 5 of 8 features each (compact: 4, so no SID@5), a 4 x 4 grid.
TINY = [
    "--quick", "--image-size", "56", "--batch-size", "8", "--device", "cpu",
    "--n-features", "16", "--hidden-size", "16", "--n-layers", "1",
    "--n-selected", "8", "--n-per-class", "5", "--compact-n-per-class", "4",
    "--random-state", "0",
]  # fmt: skip


def _run(paper_table, root, model, out, *extra):
    argv = ["--dataset", "cub", "--root", str(root), "--model", model, "--out", str(out), *TINY, *extra]
    return paper_table.main(argv)


def test_paper_numbers_are_spec_section_11(paper_table):
    cub, cars = paper_table.paper_numbers("cub"), paper_table.paper_numbers("cars")
    assert cub["qpm"] == {"Accuracy": 88.3, "Plausibility": 95.0, "SID@5": 90.1, "Class-Independence": 93.7, "Contrastiveness": 100.0}
    assert cars["linear_probe"] == {"Accuracy": 91.7, "SID@5": 51.5, "Class-Independence": 99.1, "Contrastiveness": 60.9}
    assert "SID@5" not in cub["qpm_compact"] and cars["qsenn"]["Accuracy"] == 93.3
    assert cub["dense"]["Accuracy"] == 78.1 and set(cub) == set(paper_table.MAIN_ROWS)


def test_arguments(paper_table, script, tmp_path):
    args = paper_table.parse_args(["--dataset", "cars", "--root", "r", "--rows", "qpm, dense", "--ablations"])
    assert args.rows == ["qpm", "dense", *paper_table.ABLATION_ROWS]
    assert args.out == "paper_table-cars.json"  # the command writes to the current folder
    assert script.parse_args(["--dataset", "cars", "--root", "r"]).out.endswith("benchmarks/results/paper_table-cars.json")
    args = paper_table.parse_args(["--dataset", "cub", "--root", "r", "--embedding-cache", "c", "-q"])
    assert args.embedding_cache == "c" and args.quiet
    args = paper_table.parse_args(["--dataset", "cub", "--root", "r", "--ablation-model", "small=/models/s"])
    rows = paper_table.build_rows(args)
    assert rows["ablation_small"].model == "/models/s"
    assert rows["ablation_no_registers"].model == "facebook/dinov2-base"
    assert rows["qpm_compact"].params == {"n_per_class": 4}
    assert rows["sldd"].params["dense_epochs"] == 40 and rows["qsenn"].params["dense_diversity"] == 0.196
    for bad in (["--rows", "qpm,nope"], ["--ablation-model", "huge=x"], ["--dataset", "imagenet"]):
        with pytest.raises(SystemExit):
            paper_table.parse_args(["--dataset", "cub", "--root", "r", *bad])


def test_format_table_shows_ours_beside_the_paper(paper_table):
    results = [
        {"label": "DINO-QPM", "status": "ok", "paper": {"Accuracy": 88.3, "SID@5": 90.1}, "metrics": {"Accuracy": 0.5, "SID@5": 0.25}},
        {"label": "DINO-SLDD", "status": "failed", "paper": {}, "metrics": {}, "error": "Traceback\nValueError: boom"},
    ]
    text = paper_table.format_table(results, "cars")
    lines = text.splitlines()
    assert "Plausibility" not in lines[0] and "Accuracy (CARS)" in lines[0]
    assert "50.0 (88.3)" in lines[2] and "25.0 (90.1)" in lines[2] and "–" in lines[2]
    assert "failed: ValueError: boom" in lines[3]


def _check_row(row):
    assert row["status"] == "ok", row.get("error")
    assert row["seconds"] > 0
    for name, value in row["metrics"].items():
        assert math.isfinite(value) and 0.0 <= value <= 1.0, (row["name"], name, value)
    assert {"Accuracy", "Plausibility", "Class-Independence", "Contrastiveness", "Correlation"} <= set(row["metrics"])


def test_end_to_end_main_rows_on_a_fake_cub_tree(paper_table, fake_cub_root, tiny_backbone, tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from qpm_sklearn import Dinov2Embedder, QPMClassifier
    from qpm_sklearn.datasets import load_cub

    out = tmp_path / "table.json"
    rows = "linear_probe,dense,qpm,qpm_compact"
    with pytest.warns(UserWarning, match="SID@5 is left out"):  # the compact row: 4 features per class
        assert _run(paper_table, fake_cub_root, tiny_backbone, out, "--rows", rows, "--fail-fast") == 0
    report = json.loads(out.read_text())
    assert [r["name"] for r in report["rows"]] == rows.split(",")
    assert (report["n_train"], report["n_test"], report["n_classes"]) == (6, 6, 3)
    assert report["device"].startswith("cpu")
    by_name = {r["name"]: r for r in report["rows"]}
    for row in report["rows"]:
        _check_row(row)
        assert row["paper"] == paper_table.paper_numbers("cub")[row["name"]]
    assert by_name["qpm"]["features_per_class"] == [5, 5, 5]
    assert by_name["qpm_compact"]["features_per_class"] == [4, 4, 4]
    assert "SID@5" in by_name["qpm"]["metrics"] and "SID@5" not in by_name["qpm_compact"]["metrics"]
    # The dense row reads the qpm fit (one fit, not two).
    assert by_name["dense"]["fit_seconds"] == by_name["qpm"]["fit_seconds"]
    assert by_name["dense"]["stage"] == "dense" and by_name["qpm"]["stage"] == "sparse"

    # Independent recomputation of two rows from the public API: same split, labels and seeds.
    data = load_cub(fake_cub_root)
    train, test = data.is_train, ~data.is_train
    embed = dict(model=tiny_backbone, image_size=56, device="cpu", output_dtype="float16")
    cls = Dinov2Embedder(output="cls", **embed).transform(data.paths).astype(np.float32)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=50)).fit(cls[train], data.labels[train])
    assert by_name["linear_probe"]["metrics"]["Accuracy"] == pytest.approx(probe.score(cls[test], data.labels[test]))
    patches = Dinov2Embedder(output="patch", **embed).transform(data.paths)
    params = dict(by_name["qpm"]["params"])
    qpm = QPMClassifier(**params).fit(patches[train], data.labels[train])
    assert by_name["qpm"]["metrics"]["Accuracy"] == pytest.approx(qpm.score(patches[test], data.labels[test]))


def test_a_failing_row_is_reported_and_the_others_still_run(paper_table, fake_cub_root, tiny_backbone, tmp_path):
    out = tmp_path / "table.json"
    # 8 selected features out of 5 adapter channels: the classifier rejects the budget.
    argv = ["--rows", "linear_probe,qpm", "--n-features", "5"]
    assert _run(paper_table, fake_cub_root, tiny_backbone, out, *argv) == 1
    probe, qpm = json.loads(out.read_text())["rows"]
    _check_row(probe)
    assert qpm["status"] == "failed" and "n_features=5" in qpm["error"]
    with pytest.raises(ValueError, match="n_features=5"):
        _run(paper_table, fake_cub_root, tiny_backbone, out, *argv, "--fail-fast")


def test_wrong_root_names_the_missing_file(paper_table, tmp_path, tiny_backbone):
    with pytest.raises(FileNotFoundError, match=r"images\.txt"):
        _run(paper_table, tmp_path, tiny_backbone, tmp_path / "x.json")


def test_end_to_end_baselines_and_ablations(paper_table, fake_cub_root, tiny_backbone, tiny_backbone_noreg, tmp_path):
    out = tmp_path / "table.json"
    models = ["--ablation-model", f"no_registers={tiny_backbone_noreg}", "--ablation-model", f"small={tiny_backbone_noreg}"]
    models += ["--ablation-model", f"large={tiny_backbone}"]
    assert _run(paper_table, fake_cub_root, tiny_backbone, out, "--rows", "qpm,sldd,qsenn", "--ablations", *models, "--fail-fast") == 0
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["qpm", "sldd", "qsenn", *paper_table.ABLATION_ROWS]
    for name, row in rows.items():
        if name != "ablation_cls_tokens":  # checked below: it has no maps to score
            _check_row(row)
    for name, selection, sparse_epochs in (("sldd", "sldd", 50), ("qsenn", "qsenn", 25)):
        params = rows[name]["params"]
        assert params["selection"] == selection and params["dense_diversity"] == 0.196
        assert params["l1_maps"] == 0.0 and params["l1_features"] == 0.0
        assert params["dense_epochs"] == params["sparse_epochs"] == 1  # --quick shortens every stage
        assert paper_table.build_rows(paper_table.parse_args(["--dataset", "cub", "--root", "r"]))[name].params["sparse_epochs"] == sparse_epochs
    cls_row = rows["ablation_cls_tokens"]
    assert cls_row["status"] == "ok" and cls_row["tokens"] == "cls" and cls_row["paper"] == {}
    assert "Plausibility" not in cls_row["metrics"] and "SID@5" not in cls_row["metrics"]
    assert 0 <= cls_row["metrics"]["Accuracy"] <= 1
    assert rows["ablation_no_registers"]["model"] == tiny_backbone_noreg
    # The large ablation names the main backbone with the qpm row's settings: the same fit is reused.
    assert rows["ablation_large"]["metrics"] == rows["qpm"]["metrics"]
    assert rows["ablation_large"]["fit_seconds"] == rows["qpm"]["fit_seconds"]
