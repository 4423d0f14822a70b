"""The command line under faults: one line on stderr, the documented exit status, no partial or stale file.

Most cases run the command as a user does (``python -m qpm_sklearn.cli`` in a subprocess) and check
the exit status, that stderr is one line naming the argument or file, that no traceback is shown,
and which files exist afterwards. A full disk is a file-size limit on the subprocess (writes past
it fail as on a full disk); an interrupt is a ``KeyboardInterrupt`` raised in-process.
"""

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qpm_sklearn import QPMClassifier
from qpm_sklearn.cli import main

ROOT = Path(__file__).resolve().parents[1]



def run_cli(*args, cwd=None, env=None, file_size_limit=None):
    """``python -m qpm_sklearn.cli ARGS`` with this checkout first on the path."""
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    environment.pop("QPM_SKLEARN_DEBUG", None)
    environment.update(OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1", **(env or {}))

    def limit_file_size():  # writes past the limit fail with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return subprocess.run(
        [sys.executable, "-m", "qpm_sklearn.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        preexec_fn=None if file_size_limit is None else limit_file_size,
    )


def assert_fails(result, status, *words):
    """Exit ``status``, stderr one line holding every word, no traceback."""
    stderr = result.stderr.strip()
    assert result.returncode == status, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and len(stderr.splitlines()) == 1, result.stderr
    for word in words:
        assert word in stderr, (word, stderr)
    return stderr


def run_main(argv):
    """``main(argv)`` in-process, an interrupt escaping it reported as a test failure rather than stopping pytest."""
    try:
        return main([str(a) for a in argv])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main()")


def leftovers(folder):
    """Hidden temporary files a command left behind."""
    return sorted(p.name for p in Path(folder).rglob(".*") if p.is_file())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """``X.npy`` (30, 2, 2, 6) of 3 classes and ``y.txt`` with its labels a, b, c."""
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 2, 2, 6)).astype(np.float32)
    y = np.repeat(["a", "b", "c"], 10)
    X[y == "b", 0] += 2
    np.save(folder / "X.npy", X)
    (folder / "y.txt").write_text("\n".join(y) + "\n")
    return folder


@pytest.fixture(scope="module")
def image_folder(make_image_folder):
    """``root/<class>/<image>.png``: 3 classes of 3 images, 28 x 28."""
    return make_image_folder(3)


@pytest.fixture(scope="module")
def image_model(tmp_path_factory, image_folder, embedder_options, tiny_fit_options):
    """A model fitted on the image folder (with its embedder sidecar)."""
    folder = tmp_path_factory.mktemp("image_model")
    assert main(["fit", str(image_folder), "--out", str(folder / "model.npz"), *embedder_options, *tiny_fit_options]) == 0
    return folder / "model.npz"


@pytest.fixture(scope="module")
def fit_args(data, tiny_fit_options):
    """``fit_args(out, *extra)``: the arguments of a quiet tiny ``fit`` on ``data`` writing ``out``."""
    return lambda out, *extra: [
        "fit", "--embeddings", data / "X.npy", "--labels", data / "y.txt", "--out", out, "-q", *tiny_fit_options, *extra
    ]


# ----------------------------------------------------------------------------------- bad inputs
def test_a_missing_input_file_is_named(data, tmp_path):
    result = run_cli("fit", "--embeddings", tmp_path / "nope.npy", "--labels", data / "y.txt", "--out", tmp_path / "m.npz")
    assert_fails(result, 1, "--embeddings", "nope.npy", "no such file")
    result = run_cli("fit", "--embeddings", data / "X.npy", "--labels", tmp_path / "nope.txt", "--out", tmp_path / "m.npz")
    assert_fails(result, 1, "--labels", "nope.txt")
    assert_fails(run_cli("explain", tmp_path / "nope.npz", "x.png", "--out", tmp_path / "e"), 1, "nope.npz")
    assert not (tmp_path / "m.npz").exists()


def test_embeddings_that_are_not_one_array(data, tmp_path):
    (tmp_path / "text.npy").write_text("1 2 3\n")
    result = run_cli("fit", "--embeddings", tmp_path / "text.npy", "--labels", data / "y.txt", "--out", tmp_path / "m.npz")
    assert_fails(result, 1, "--embeddings", "text.npy", "not a .npy array")
    np.savez(tmp_path / "X.npz", X=np.load(data / "X.npy"))
    stderr = assert_fails(
        run_cli("fit", "--embeddings", tmp_path / "X.npz", "--labels", data / "y.txt", "--out", tmp_path / "m.npz"),
        1, "--embeddings", "X.npz", ".npz",
    )  # fmt: skip
    assert "labels" not in stderr  # the archive is the fault, not the labels file
    assert not (tmp_path / "m.npz").exists()


def test_labels_in_another_encoding_are_refused(data, tmp_path):
    text = "\n".join(["é"] * 10 + ["b"] * 10 + ["c"] * 10) + "\n"
    for encoding, word in (("latin-1", "UTF-8"), ("utf-16", "UTF-16")):
        (tmp_path / "y.txt").write_bytes(text.encode(encoding))
        result = run_cli("fit", "--embeddings", data / "X.npy", "--labels", tmp_path / "y.txt", "--out", tmp_path / "m.npz")
        assert_fails(result, 1, "--labels", word)
    assert not (tmp_path / "m.npz").exists()


def test_labels_with_a_byte_order_mark_give_the_same_classes(data, tmp_path, tiny_fit_options):
    (tmp_path / "y.txt").write_bytes(b"\xef\xbb\xbf" + (data / "y.txt").read_bytes())
    assert main(["fit", "--embeddings", str(data / "X.npy"), "--labels", str(tmp_path / "y.txt"),
                 "--out", str(tmp_path / "m.npz"), "-q", *tiny_fit_options]) == 0  # fmt: skip
    assert QPMClassifier.load(tmp_path / "m.npz").classes_.tolist() == ["a", "b", "c"]


def test_nan_embeddings_and_a_single_class_are_refused(data, tmp_path):
    X = np.load(data / "X.npy")
    X[7, 1, 0, 3] = np.nan
    np.save(tmp_path / "nan.npy", X)
    result = run_cli("fit", "--embeddings", tmp_path / "nan.npy", "--labels", data / "y.txt", "--out", tmp_path / "m.npz")
    assert_fails(result, 1, "--embeddings", "row 7", "NaN")
    (tmp_path / "one.txt").write_text("a\n" * 30)
    result = run_cli("fit", "--embeddings", data / "X.npy", "--labels", tmp_path / "one.txt", "--out", tmp_path / "m.npz")
    assert_fails(result, 1, "--labels", "2 classes")
    assert not (tmp_path / "m.npz").exists()


def one_line_error(capsys, *words):
    """The stderr of an in-process ``main`` call: one line holding every word."""
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1 and "Traceback" not in stderr, stderr
    for word in words:
        assert word in stderr, (word, stderr)


def test_a_parameter_the_classifier_refuses(tmp_path, capsys, fit_args):
    assert run_main(fit_args(tmp_path / "m.npz", "-p", "n_selectd=3")) == 2
    one_line_error(capsys, "-p", "n_selectd")
    assert run_main(fit_args(tmp_path / "m.npz", "-p", "n_per_class=-1")) == 1
    one_line_error(capsys, "n_per_class")
    assert not (tmp_path / "m.npz").exists()


def test_debug_shows_the_traceback(data, tmp_path):
    args = ("fit", "--embeddings", tmp_path / "nope.npy", "--labels", data / "y.txt", "--out", tmp_path / "m.npz")
    for result in (run_cli(*args, "--debug"), run_cli(*args, env={"QPM_SKLEARN_DEBUG": "1"})):
        assert result.returncode == 1 and "Traceback" in result.stderr and "nope.npy" in result.stderr


# --------------------------------------------------------------------------- outputs: checked first
def test_an_unusable_out_is_found_before_training(tmp_path, monkeypatch, capsys, fit_args):
    def train(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(QPMClassifier, "fit", train)
    (tmp_path / "file").write_text("")
    for out, word in ((tmp_path / "missing" / "m.npz", "does not exist"), (tmp_path / "file" / "m.npz", "not a folder")):
        assert run_main(fit_args(out)) == 1
        stderr = capsys.readouterr().err.strip()
        assert "--out" in stderr and word in stderr and len(stderr.splitlines()) == 1
    (tmp_path / "m.npz").mkdir()
    assert run_main(fit_args(tmp_path / "m.npz")) == 1
    assert "is a folder" in capsys.readouterr().err


def test_unusable_outputs_of_table_and_explain_are_found_first(tmp_path, data):
    (tmp_path / "file").write_text("")
    # The root does not exist either; the output is checked before the dataset is read.
    result = run_cli("table", "--dataset", "cub", "--root", tmp_path / "no_root", "--out", tmp_path / "file" / "t.json")
    assert_fails(result, 1, "--out", "file")
    result = run_cli("explain", tmp_path, "--embeddings", data / "X.npy", "--out", tmp_path / "e")
    assert_fails(result, 1, "MODEL", "is a folder")
    (tmp_path / "model.npz").write_bytes(b"")
    result = run_cli("explain", tmp_path / "model.npz", "--embeddings", data / "X.npy", "--out", tmp_path / "file")
    assert_fails(result, 1, "--out", "is a file")


def test_feature_names_of_the_wrong_count_fail_before_anything_is_saved(tmp_path, capsys, fit_args):
    (tmp_path / "names.json").write_text(json.dumps(["wing", "beak", "crown"]))  # 4 features are selected
    assert run_main(fit_args(tmp_path / "m.npz", "--feature-names", tmp_path / "names.json")) == 1
    one_line_error(capsys, "--feature-names", "names.json")
    (tmp_path / "names.json").write_text("{not json")
    assert_fails(run_cli(*fit_args(tmp_path / "m.npz", "--feature-names", tmp_path / "names.json")), 1, "--feature-names")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["names.json"]


# ------------------------------------------------------------------------ outputs: written as one unit
@pytest.mark.parametrize("stage", ["fit", "save"])
def test_an_interrupted_fit_leaves_the_previous_model(tmp_path, monkeypatch, capsys, stage, fit_args):
    assert run_main(fit_args(tmp_path / "m.npz")) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    original = getattr(QPMClassifier, stage)

    def interrupted(self, *args, **kwargs):
        if stage == "save":
            original(self, *args, **kwargs)  # the model is complete on disk, its sidecar not yet
        raise KeyboardInterrupt

    monkeypatch.setattr(QPMClassifier, stage, interrupted)
    capsys.readouterr()
    assert run_main(fit_args(tmp_path / "m.npz", "-p", "random_state=1")) == 130
    stderr = capsys.readouterr().err.strip()
    assert "interrupted" in stderr and len(stderr.splitlines()) == 1
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing replaced, nothing left


def test_full_disk_during_fit_keeps_the_previous_model_and_sidecar(image_model, tmp_path, monkeypatch, capsys, fit_args):
    import errno

    model = tmp_path / "model.npz"
    model.write_bytes(image_model.read_bytes())
    (tmp_path / "model.embedder.json").write_bytes(image_model.with_name("model.embedder.json").read_bytes())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full_disk(source, destination):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full_disk)
    assert run_main(fit_args(model)) == 1
    one_line_error(capsys, "model.npz", os.strerror(errno.ENOSPC))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing replaced, nothing left


def test_refit_from_embeddings_leaves_no_stale_sidecar(image_model, tmp_path, fit_args):
    model = tmp_path / "model.npz"
    model.write_bytes(image_model.read_bytes())
    sidecar = tmp_path / "model.embedder.json"
    sidecar.write_bytes(image_model.with_name("model.embedder.json").read_bytes())
    assert run_main(fit_args(model)) == 0
    assert json.loads(sidecar.read_text()).get("embedder", "stale") is None  # the images' settings are gone


def test_a_sidecar_of_another_model_is_refused(image_model, data, tmp_path, image_folder, embedder_options):
    # A model replaced behind the command line's back (the Python API) keeps the old sidecar.
    model = tmp_path / "model.npz"
    sidecar = tmp_path / "model.embedder.json"
    sidecar.write_bytes(image_model.with_name("model.embedder.json").read_bytes())
    clf = QPMClassifier.load(image_model).set_params(random_state=1)
    X = np.random.default_rng(1).normal(size=(9, 4, 4, clf.n_features_in_)).astype(np.float32)
    clf.fit(X, np.repeat(["class_0", "class_1", "class_2"], 3)).save(model)
    result = run_cli("explain", model, image_folder / "class_0", "--out", tmp_path / "e", *embedder_options[:2], "-q")
    assert_fails(result, 1, "model.embedder.json", "another version")
    sidecar.write_text('{"format": 1, "model_sha')  # damaged
    assert_fails(run_cli("explain", model, image_folder / "class_0", "--out", tmp_path / "e", "-q"), 1, "model.embedder.json", "damaged")
    assert not (tmp_path / "e" / "contributions.csv").exists()


def test_explain_from_another_folder_finds_a_backbone_given_relative(
    image_folder, tiny_backbone, tmp_path, monkeypatch, tiny_fit_options
):
    backbone = Path(tiny_backbone)
    monkeypatch.chdir(backbone.parent)
    args = ["--model", backbone.name, "--image-size", "56", "--device", "cpu", "--local-files-only", "-q"]
    assert main(["fit", str(image_folder), "--out", str(tmp_path / "m.npz"), *args, *tiny_fit_options]) == 0
    monkeypatch.chdir(tmp_path)
    assert main(["explain", "m.npz", str(image_folder / "class_1"), "--out", "e", "--figures", "0", "-q"]) == 0
    assert (tmp_path / "e" / "contributions.csv").read_text().count("class_1") >= 3


def test_full_disk_during_embed_keeps_the_previous_npy(image_folder, embedder_options, tmp_path):
    previous = tmp_path / "X.npy"
    np.save(previous, np.zeros(3))
    content = previous.read_bytes()
    result = run_cli("embed", image_folder, "--save", previous, *embedder_options, file_size_limit=4096)
    assert_fails(result, 1, "X.npy")
    assert previous.read_bytes() == content and not (tmp_path / "X.paths.txt").exists()
    assert leftovers(tmp_path) == []


def test_full_disk_during_explain_leaves_no_partial_output(image_model, image_folder, tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("pandas")
    out = tmp_path / "explained"
    result = run_cli("explain", image_model, image_folder, "--out", out, "--figures", "3", "-q", file_size_limit=8192)
    assert_fails(result, 1, str(out))
    assert list(out.iterdir()) == []


def test_embed_reports_the_file_it_writes_and_lists_any_file_name(image_folder, embedder_options, tmp_path, capsys):
    folder = tmp_path / "images"
    (folder / "a").mkdir(parents=True)
    odd = os.fsdecode(b"\xff\xfe odd.png")  # not valid UTF-8, as file names from old archives can be
    for name in ("0.png", odd):
        Image.open(image_folder / "class_0" / "0.png").save(folder / "a" / name)
    assert run_main(["embed", folder, "--save", tmp_path / "nosuffix", *embedder_options]) == 0
    assert f"written to {tmp_path / 'nosuffix.npy'} " in capsys.readouterr().out
    assert np.load(tmp_path / "nosuffix.npy").shape[0] == 2
    listed = (tmp_path / "nosuffix.paths.txt").read_bytes().splitlines()
    assert listed == [os.fsencode(folder / "a" / "0.png"), os.fsencode(folder / "a" / odd)]


# --------------------------------------------------------------------------------- options and sizes
def test_table_options_share_the_other_commands_names():
    help_text = run_cli("table", "--help").stdout
    assert "--embedding-cache" in help_text and "-q, --quiet" in help_text
    assert_fails(run_cli("table", "--dataset", "cub", "--root", "r", "--cache-dir", "c"), 2, "--cache-dir")


def test_fit_on_a_cpu_with_the_paper_sizes_says_so(data, tmp_path, monkeypatch, capsys):
    seen = []

    def stop(self, X, y):  # the sizes are what matters; no paper-sized training here
        seen.append(self.get_params())
        raise RuntimeError("stopped before training")

    monkeypatch.setattr(QPMClassifier, "fit", stop)
    args = ["fit", "--embeddings", data / "X.npy", "--labels", data / "y.txt", "--out", tmp_path / "m.npz", "-q"]
    assert run_main([*args, "-p", 'device="cpu"']) == 1
    assert "--cpu-sized" in capsys.readouterr().err
    assert seen[-1]["hidden_size"] == QPMClassifier().hidden_size  # the paper's, as asked
    assert run_main([*args, "-p", 'device="cpu"', "--cpu-sized", "-p", "n_selected=12"]) == 1
    assert "--cpu-sized" not in capsys.readouterr().err
    assert seen[-1]["hidden_size"] == 256 and seen[-1]["n_features"] == 64 and seen[-1]["n_selected"] == 12
