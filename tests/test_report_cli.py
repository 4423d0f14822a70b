"""``qpm-sklearn report``: a model saved by ``fit`` and its images -> one HTML file."""

import numpy as np
import pytest

from qpm_sklearn.cli import main



@pytest.fixture(scope="module")
def model(tmp_path_factory, make_image_folder, embedder_options, tiny_fit_options):
    """A model fitted by ``qpm-sklearn fit`` on 3 classes of 3 images (28 x 28 PNGs) with the tiny backbone."""
    root = make_image_folder(3)
    out = tmp_path_factory.mktemp("fit") / "model.npz"
    assert main(["fit", str(root), "--out", str(out), *embedder_options, *tiny_fit_options]) == 0
    return out, root


def test_report_embeds_with_the_saved_settings(model, tmp_path, capsys):
    path, root = model
    (tmp_path / "labels.txt").write_text("".join(f"class_{i // 3}\n" for i in range(9)))
    out = tmp_path / "report.html"
    assert main(["report", str(path), str(root), "--labels", str(tmp_path / "labels.txt"), "-k", "2", "-q",
                 "--out", str(out)]) == 0  # fmt: skip
    message = capsys.readouterr().out
    text = out.read_text()
    assert message.startswith("report of 3 classes and 4 features written to")
    assert text.startswith("<!DOCTYPE html>") and "accuracy on these rows" in text
    assert text.count("<img ") - text.count("<td><img ") == 4 * 2 * 2  # 4 features x 2 images x (overlay, crop)


def test_report_subcommand_with_embeddings(model, tmp_path, capsys, tiny_backbone):
    from qpm_sklearn import Dinov2Embedder

    path, root = model
    files = sorted(str(p) for p in root.rglob("*.png"))
    X = Dinov2Embedder(model=tiny_backbone, image_size=56, device="cpu", local_files_only=True).transform(files)
    np.save(tmp_path / "X.npy", X)
    (tmp_path / "labels.txt").write_text("".join(f"class_{i // 3}\n" for i in range(9)))
    out = tmp_path / "r.html"
    assert main(["report", str(path), str(root), "--embeddings", str(tmp_path / "X.npy"), "--labels",
                 str(tmp_path / "labels.txt"), "-k", "3", "--out", str(out)]) == 0  # fmt: skip
    assert "written to" in capsys.readouterr().out and out.stat().st_size > 0


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing folder", "--out"),
        ("k too large", "k=10 is larger than the number of samples"),
        ("rows differ", "expected one row per image"),
    ],
)
def test_report_failures_are_one_line_and_write_nothing(model, tmp_path, capsys, tiny_backbone, case, message):
    from qpm_sklearn import Dinov2Embedder

    path, root = model
    files = sorted(str(p) for p in root.rglob("*.png"))
    X = Dinov2Embedder(model=tiny_backbone, image_size=56, device="cpu", local_files_only=True).transform(files)
    np.save(tmp_path / "X.npy", X)
    out = tmp_path / ("missing/r.html" if case == "missing folder" else "r.html")
    images = str(root / "class_0") if case == "rows differ" else str(root)
    k = "10" if case == "k too large" else "2"
    status = main(["report", str(path), images, "--embeddings", str(tmp_path / "X.npy"), "-k", k, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1 and message in err[0] and err[0].startswith("qpm-sklearn report: error:")
    assert not out.exists() and not list(tmp_path.glob("*.html*"))
