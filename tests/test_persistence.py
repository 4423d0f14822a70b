"""QPMClassifier.save / load: a checked, pickle-free, atomically written format.

Every crafted file starts from a real saved model and changes one thing, so each refusal
is pinned to that one defect (and the unchanged file loads: the tests can fail).
"""

import json
import zipfile

import numpy as np
import pytest

from qpm_sklearn import QPMClassifier
from qpm_sklearn.persistence import FORMAT_VERSION

SMALL = dict(
    n_features=12, n_selected=6, n_per_class=2, hidden_size=16, n_layers=2,
    dense_epochs=2, sparse_epochs=1, dense_batch_size=16, sparse_batch_size=16,
)  # fmt: skip


def _data(n_per_class=10, n_classes=3, seed=0):
    rng = np.random.RandomState(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = rng.normal(size=(len(y), 2, 2, 8)).astype(np.float32)
    X[np.arange(len(y)), 0, 0, y] += 3.0
    return X, y


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    X, y = _data()
    clf = QPMClassifier(**SMALL, random_state=np.int64(3)).fit(X, y)
    path = clf.save(tmp_path_factory.mktemp("model") / "model.npz")
    return clf, X, path


def _contents(path):
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def _meta(contents):
    return json.loads(str(contents["__meta__.json"]))


def _write(path, contents, meta=None):
    if meta is not None:
        contents = dict(contents, **{"__meta__.json": np.array(json.dumps(meta))})
    np.savez(path, **contents)
    return path


def test_round_trip_is_exact_and_pickle_free(saved):
    clf, X, path = saved
    contents = _contents(path)  # allow_pickle=False: no object array anywhere
    assert all(array.dtype != object for array in contents.values())
    loaded = QPMClassifier.load(path)
    params = loaded.get_params()
    assert params == dict(clf.get_params(), memory=None)
    assert type(params["random_state"]) is np.int64 and params["random_state"] == 3
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict_proba(X, stage="dense"), clf.predict_proba(X, stage="dense"))
    np.testing.assert_array_equal(loaded.assignment_, clf.assignment_)
    assert _meta(contents)["format_version"] == FORMAT_VERSION == 2


@pytest.mark.parametrize(
    "random_state, device",
    [(np.int32(7), "cpu"), (7, None), (None, "cpu"), (np.random.RandomState(5), "torch.device")],
    ids=["np.int32", "int", "None", "RandomState"],
)
def test_parameters_round_trip_exactly(tmp_path, random_state, device):
    if device == "torch.device":
        import torch

        device = torch.device("cpu")
    X, y = _data()
    clf = QPMClassifier(
        **SMALL, random_state=random_state, dropout=np.float64(0.25), solver_options={"time_limit": 5.0}, device=device
    ).fit(X, y)
    loaded = QPMClassifier.load(clf.save(tmp_path / "m"))
    for name, value in clf.get_params().items():
        got = loaded.get_params()[name]
        if isinstance(value, np.random.RandomState):
            state, got_state = value.get_state(), got.get_state()
            assert state[0] == got_state[0] and np.array_equal(state[1], got_state[1]) and state[2:] == got_state[2:]
        elif name != "memory":
            assert got == value and type(got) is type(value), name


def test_model_fitted_on_a_dataframe_keeps_feature_names_without_pickle(tmp_path):
    pd = pytest.importorskip("pandas")
    rng = np.random.RandomState(0)
    y = np.repeat(["ant", "bee", "cow"], 10)
    frame = pd.DataFrame(rng.normal(size=(30, 8)), columns=[f"f{i}" for i in range(8)])
    frame.iloc[:, 0] += (y == "bee") * 3.0
    clf = QPMClassifier(**SMALL, random_state=0).fit(frame, y)
    path = clf.save(tmp_path / "frame.npz")
    contents = _contents(path)  # would raise on a pickled object array
    assert "feature_names_in_" not in contents
    assert _meta(contents)["values"]["feature_names_in_"] == list(frame.columns)
    loaded = QPMClassifier.load(path)
    assert loaded.feature_names_in_.dtype == object and list(loaded.feature_names_in_) == list(frame.columns)
    np.testing.assert_array_equal(loaded.predict(frame), clf.predict(frame))
    assert loaded.classes_.dtype.kind == "U" and list(loaded.classes_) == ["ant", "bee", "cow"]


def test_memory_is_not_saved_and_a_stored_path_is_refused(tmp_path, saved):
    _, _, path = saved
    contents = _contents(path)
    meta = _meta(contents)
    assert meta["params"]["memory"] is None
    meta["params"]["memory"] = str(tmp_path / "somewhere")
    with pytest.raises(ValueError, match="'memory' must be null"):
        QPMClassifier.load(_write(tmp_path / "m.npz", contents, meta))


def _set(section, key, value):
    def edit(meta):
        meta[section][key] = value

    return edit


def _drop(section, key):
    def edit(meta):
        del meta[section][key]

    return edit


META_DEFECTS = [
    ("n_features-string", _set("params", "n_features", "8"), "invalid parameters.*n_features"),
    ("unknown-selection", _set("params", "selection", "magic"), "invalid parameters.*selection"),
    ("bool-as-int", _set("params", "n_layers", True), "invalid parameters.*n_layers"),
    ("unknown-param", _set("params", "colour", 1), r"unknown \['colour'\]"),
    ("missing-param", _drop("params", "dropout"), r"missing \['dropout'\]"),
    ("budget", _set("params", "n_per_class", 9), "n_per_class=9 must not exceed"),
    ("bad-solver-option", _set("params", "solver_options", {"__dict__": [["nope", 1]]}), "invalid parameters.*nope"),
    ("dict-not-pairs", _set("params", "solver_options", {"__dict__": [["a", 1, 2]]}), "not a stored dict"),
    ("dict-list-key", _set("params", "solver_options", {"__dict__": [[[1], 1]]}), "not hashable"),
    ("bad-tag", _set("params", "random_state", {"__numpy__": "O", "value": 1}), "not a valid numpy scalar"),
    ("n_features_in-string", _set("values", "n_features_in_", "8"), "n_features_in_ must be a positive int"),
    ("history-not-list", _set("values", "history_", {"__dict__": []}), "history_ must be a list"),
    ("missing-value", _drop("values", "selection_info_"), "'selection_info_' is missing"),
    ("extra-value", _set("values", "predict", 1), r"unexpected values \['predict'\]"),
    ("names-wrong-length", _set("values", "feature_names_in_", ["a"]), "list of 8 strings"),
    ("version", lambda meta: meta.update(format_version=99), "format version 99, newer than format version 2.*upgrade"),
    ("version-older", lambda meta: meta.update(format_version=1), "format version 1; .*reads format version 2 only"),
    ("version-string", lambda meta: meta.update(format_version="2"), "format version '2'"),
    ("estimator", lambda meta: meta.update(estimator="Pipeline"), "holds a 'Pipeline'"),
    ("extra-meta-key", lambda meta: meta.update(code="print()"), "must have the keys"),
    ("params-not-dict", lambda meta: meta.update(params=[1, 2]), r"\['params'\] must be a JSON object"),
    ("history-rows-not-dicts", _set("values", "history_", [[1], [2]]), "history_ must be a list of dicts"),
]


@pytest.mark.parametrize("edit, message", [case[1:] for case in META_DEFECTS], ids=[case[0] for case in META_DEFECTS])
def test_crafted_metadata_is_refused_with_one_value_error(tmp_path, saved, edit, message):
    _, _, path = saved
    contents = _contents(path)
    meta = _meta(contents)
    edit(meta)
    crafted = _write(tmp_path / "crafted.npz", contents, meta)
    with pytest.raises(ValueError, match=message) as error:
        QPMClassifier.load(crafted)
    assert "crafted.npz" in str(error.value)


def _replace(name, value):
    return lambda contents: contents.update({name: value})


def _remove(name):
    return lambda contents: contents.pop(name)


ARRAY_DEFECTS = [
    ("missing-array", _remove("sparse_bias_"), "'sparse_bias_' is missing"),
    ("missing-state-key", _remove("dense_mlp_state_::layers.0.weight"), "dense_mlp_state_ does not fit.*missing"),
    ("extra-state-key", _replace("sparse_mlp_state_::layers.0.bias", np.zeros(16, np.float32)), "unexpected"),
    ("wrong-state-shape", _replace("dense_head_state_::linear.weight", np.zeros((3, 5), np.float32)), "shape"),
    ("predict", _replace("predict", np.array("x")), r"unexpected entries \['predict'\]"),
    ("dunder", _replace("__class__", np.zeros(1)), r"unexpected entries \['__class__'\]"),
    ("weight-shape", _replace("sparse_weight_", np.ones((3, 5), np.float32)), "sparse_weight_ has shape"),
    ("weight-dtype", _replace("sparse_weight_", np.ones((3, 6), np.float64)), "sparse_weight_ has dtype float64"),
    ("mean-nan", _replace("feature_mean_", np.full(6, np.nan, np.float32)), "NaN"),
    ("selected-out-of-range", _replace("selected_features_", np.arange(7, 13)), r"channel ids in \[0, n_features=12\)"),
    ("one-class", _replace("classes_", np.array([0])), "at least 2 distinct"),
    ("assignment-mismatch", _replace("assignment_", np.zeros((3, 6), np.int8)), "assignment_ does not match"),
    ("object-array", _replace("classes_", np.array([0, "a", None], dtype=object)), "object array"),
    ("meta-not-unicode", _replace("__meta__.json", np.zeros(3)), "0-d unicode array"),
    ("meta-not-json", _replace("__meta__.json", np.array("{not json")), "not valid JSON"),
    ("meta-not-object", _replace("__meta__.json", np.array("[1, 2]")), "must hold a JSON object"),
    ("no-meta", _remove("__meta__.json"), r"no __meta__\.json"),
]


@pytest.mark.parametrize("edit, message", [case[1:] for case in ARRAY_DEFECTS], ids=[case[0] for case in ARRAY_DEFECTS])
def test_crafted_arrays_are_refused_with_one_value_error(tmp_path, saved, edit, message):
    _, _, path = saved
    contents = _contents(path)
    edit(contents)
    if "object-array" in message:
        crafted = tmp_path / "crafted.npz"
        np.savez(crafted, **contents)  # allow_pickle is on when writing: the file holds pickle bytes
    else:
        crafted = _write(tmp_path / "crafted.npz", contents)
    with pytest.raises(ValueError, match=message) as error:
        QPMClassifier.load(crafted)
    assert "crafted.npz" in str(error.value)


def test_json_nested_beyond_the_recursion_limit_is_a_value_error(tmp_path, saved):
    _, _, path = saved
    contents = _contents(path)
    text = str(contents["__meta__.json"])
    deep = text.replace('"history_": ', '"history_": ' + "[" * 100_000 + "]" * 100_000 + ", \"x\": ", 1)
    crafted = _write(tmp_path / "deep.npz", dict(contents, **{"__meta__.json": np.array(deep)}))
    with pytest.raises(ValueError, match="deep.npz.*nested too deeply"):
        QPMClassifier.load(crafted)


def test_damaged_files_are_refused_with_one_value_error(tmp_path, saved):
    _, _, path = saved
    good = path.read_bytes()
    QPMClassifier.load(path)  # the untouched file loads
    cases = {
        "empty.npz": (b"", "the file is empty"),
        "truncated.npz": (good[: len(good) // 2], "not a file written by"),
        "junk.npz": (b"not a zip at all", "neither an .npz archive nor an .npy array"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=message) as error:
            QPMClassifier.load(tmp_path / name)
        assert name in str(error.value)
    # bytes flipped inside a member (np.savez stores members uncompressed): the zip's CRC catches it
    flipped = bytearray(good)
    position = flipped.find(b"\x93NUMPY", flipped.find(b"sparse_weight_.npy")) + 140
    flipped[position : position + 4] = bytes(b ^ 0xFF for b in flipped[position : position + 4])
    (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="flipped.npz.*unreadable"):
        QPMClassifier.load(tmp_path / "flipped.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="a single .npy array"):
        QPMClassifier.load(tmp_path / "single.npy")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        QPMClassifier.load(tmp_path / "missing.npz")


def test_failed_save_leaves_the_previous_file_intact(tmp_path, saved, monkeypatch):
    clf, X, _ = saved
    path = clf.save(tmp_path / "model.npz")
    before = path.read_bytes()

    def disk_full(handle, **arrays):
        handle.write(b"PK\x03\x04 half an archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError, match="No space left"):
        clf.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]  # no temporary file left
    np.testing.assert_array_equal(QPMClassifier.load(path).predict_proba(X), clf.predict_proba(X))


def test_save_refuses_what_it_cannot_store_exactly(tmp_path, saved):
    clf, _, _ = saved
    odd = QPMClassifier.load(clf.save(tmp_path / "m")).set_params(solver_options={"time_limit": object()})
    with pytest.raises(TypeError, match="solver_options"):
        odd.save(tmp_path / "odd")
    extra = QPMClassifier.load(clf.save(tmp_path / "m"))
    extra.new_attribute_ = 1
    with pytest.raises(TypeError, match="new_attribute_"):
        extra.save(tmp_path / "extra")


def test_stored_values_round_trip_exactly_through_json():
    from qpm_sklearn.persistence import decode_value, encode_value

    value = {0: 1.0, np.int64(2): (1, "a", None), "x": {"y": [True, np.float32(2.5), float("inf")]}, 1.5: np.str_("s")}
    array = np.array(["a", "bc"])
    assert np.array_equal(decode_value(json.loads(json.dumps(encode_value(array, "a"))), "a"), array)
    assert decode_value(json.loads(json.dumps(encode_value(array, "a"))), "a").dtype == array.dtype
    back = decode_value(json.loads(json.dumps(encode_value(value, "value"))), "value")
    assert back == value
    assert [type(key) for key in back] == [type(key) for key in value]
    assert type(back["x"]["y"][1]) is np.float32 and type(back[np.int64(2)]) is tuple and type(back[1.5]) is np.str_


def test_load_finds_what_save_wrote_under_the_same_suffix_rule(tmp_path, saved):
    clf, X, _ = saved
    written = clf.save(tmp_path / "model")
    assert written == tmp_path / "model.npz" and written.exists() and not (tmp_path / "model").exists()
    for given in (tmp_path / "model", str(tmp_path / "model"), written):
        np.testing.assert_array_equal(QPMClassifier.load(given).predict_proba(X), clf.predict_proba(X))
    # another suffix is kept and .npz appended, both ways
    written = clf.save(tmp_path / "model.v1")
    assert written == tmp_path / "model.v1.npz"
    assert QPMClassifier.load(tmp_path / "model.v1").n_features_in_ == clf.n_features_in_
    # a file at the exact path wins over the appended suffix
    clf.save(tmp_path / "exact.npz").rename(tmp_path / "exact")
    assert QPMClassifier.load(tmp_path / "exact").n_features_in_ == clf.n_features_in_
    with pytest.raises(FileNotFoundError, match="neither .*nowhere' nor .*nowhere.npz' exists"):
        QPMClassifier.load(tmp_path / "nowhere")
