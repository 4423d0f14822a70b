"""QPMClassifier's integrity guarantees: all-or-nothing fit, no global state touched, complete cache key,
thread-count independence, parameter and device checks, derived attributes."""

import pickle
import signal
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import InvalidParameterError

import qpm_sklearn._stages as _stages
from qpm_sklearn import QPMClassifier
from qpm_sklearn._device import resolve_device
from qpm_sklearn._head import qpm_head
from qpm_sklearn.cpu_cost import CPU_MACS_PER_SECOND, LONG_FIT_SECONDS, SlowCPUFitWarning, estimated_cpu_seconds
from qpm_sklearn.classifier import PARAMETER_GROUPS

TINY = dict(
    n_features=8, n_selected=4, n_per_class=2, hidden_size=16, n_layers=2,
    dense_epochs=2, sparse_epochs=2, dense_batch_size=8, sparse_batch_size=8, random_state=0,
)  # fmt: skip


def data(n=24, grid=(2, 2), dims=6, n_classes=3, seed=0):
    rng = np.random.RandomState(seed)
    y = np.arange(n) % n_classes
    X = rng.normal(size=(n, *grid, dims)).astype(np.float32)
    X[..., 0] += 3 * y[:, None, None]
    return X, y


def fitted_state(clf):
    """Everything fit writes, as plain comparable values."""
    state = {}
    for name, value in vars(clf).items():
        if name.endswith("_") and not name.startswith("_"):
            state[name] = pickle.dumps(value)
    return state


# ------------------------------------------------------------------------- global state
def _after(call):
    torch.manual_seed(0)
    call()
    return torch.randn(3)


def test_public_methods_leave_torch_global_rng_alone():
    X, y = data()
    torch.manual_seed(0)
    expected = torch.randn(3)
    clf = QPMClassifier(**dict(TINY, dense_epochs=1, sparse_epochs=1))
    assert torch.equal(_after(lambda: clf.fit(X, y)), expected)
    for method in ("predict", "predict_proba", "explain", "feature_maps"):
        assert torch.equal(_after(lambda: getattr(clf, method)(X)), expected), method
    assert torch.equal(_after(lambda: clf.predict(X, stage="dense")), expected)


def test_the_rng_check_can_fail():
    torch.manual_seed(0)
    expected = torch.randn(3)
    assert not torch.equal(_after(lambda: torch.nn.Linear(3, 3)), expected)  # default init draws


# ------------------------------------------------------------------------- all-or-nothing fit
def test_interrupted_refit_leaves_the_previous_model(monkeypatch):
    X, y = data()
    clf = QPMClassifier(**TINY).fit(X, y)
    before, proba = fitted_state(clf), clf.predict_proba(X)
    original = _stages.train_network

    def interrupted(*args, **kwargs):
        if kwargs.get("desc") == "sparse":  # late: the dense stage and the selection are done
            # A real SIGINT (Ctrl-C) through Python's handler: KeyboardInterrupt is raised in
            # this, the main, thread as soon as raise_signal returns.
            signal.raise_signal(signal.SIGINT)
            raise AssertionError("the interrupt did not arrive")
        return original(*args, **kwargs)

    monkeypatch.setattr(_stages, "train_network", interrupted)
    X4, y4 = data(n=32, n_classes=4, seed=1)  # another set of classes
    # Python's own handler, also where SIGINT is inherited as ignored (a shell's background job).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            clf.fit(X4, y4)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert fitted_state(clf) == before
    np.testing.assert_array_equal(clf.predict_proba(X), proba)


def test_fit_failing_late_leaves_an_unfitted_estimator_unfitted(count_stages):
    X, y = data()
    clf = QPMClassifier(**dict(TINY, sparse_lr=1e30, sparse_epochs=3))  # the sparse stage diverges
    with pytest.raises(FloatingPointError, match="diverged"):
        clf.fit(X, y)
    assert count_stages == ["dense", "sparse"], "the failure must come after the dense stage"
    assert fitted_state(clf) == {}
    with pytest.raises(NotFittedError):
        clf.predict(X)


def test_bad_options_fail_before_any_training(count_stages):
    X, y = data()
    with pytest.raises(ValueError, match="solver option .time_limt. is unknown"):
        QPMClassifier(**TINY, solver_options={"time_limt": 3}).fit(X, y)
    with pytest.raises(ValueError, match="distinct sets"):
        QPMClassifier(**dict(TINY, n_selected=3, n_per_class=1)).fit(*data(n=32, n_classes=4))
    with pytest.raises(ValueError, match="available"):
        QPMClassifier(**TINY, device="xpu").fit(X, y)
    assert count_stages == []


def test_solver_options_that_cannot_apply_warn():
    X, y = data()
    with pytest.warns(UserWarning, match="apply to selection='qpm' only"):
        QPMClassifier(**dict(TINY, n_per_class=1), selection="sldd", solver_options={"time_limit": 5}).fit(X, y)


# ------------------------------------------------------------------------- the memory= key
def test_every_parameter_is_in_exactly_one_group():
    names = [name for group in PARAMETER_GROUPS.values() for name in group]
    assert len(names) == len(set(names)), "a parameter is in two groups"
    assert set(names) == set(QPMClassifier().get_params(deep=False)), (
        "every QPMClassifier parameter must be classified in classifier.PARAMETER_GROUPS"
    )


DENSE_CHANGES = dict(n_features=10, hidden_size=12, n_layers=1, dense_epochs=3, dense_batch_size=6, dense_lr=2e-3,
                     dense_weight_decay=1e-3, dropout=0.1, dense_diversity=0.3, early_stopping=True,
                     validation_fraction=0.2, n_iter_no_change=3, class_weight="balanced")  # fmt: skip


def test_changing_any_dense_parameter_misses_the_cache(tmp_path, count_stages):
    assert set(DENSE_CHANGES) == set(PARAMETER_GROUPS["dense"])
    X, y = data()
    QPMClassifier(**TINY, memory=str(tmp_path)).fit(X, y)
    QPMClassifier(**dict(TINY, sparse_lr=1e-3, n_per_class=1), memory=str(tmp_path)).fit(X, y)
    assert count_stages.count("dense") == 1, "a sparse parameter must not retrain the dense stage"
    for name, value in DENSE_CHANGES.items():
        QPMClassifier(**dict(TINY, **{name: value}), memory=str(tmp_path)).fit(X, y)
        assert count_stages.count("dense") == 2, f"changing {name} reused a cached dense stage"
        count_stages.remove("dense")


def test_concurrent_fits_of_one_key_train_the_dense_stage_once(tmp_path, count_stages):
    X, y = data()
    errors = []

    def fit():
        try:
            QPMClassifier(**TINY, memory=str(tmp_path)).fit(X, y)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=fit) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert count_stages.count("dense") == 1 and count_stages.count("sparse") == 2


def test_memory_without_a_seed_warns(tmp_path):
    X, y = data()
    with pytest.warns(UserWarning, match="random_state=None"):
        QPMClassifier(**dict(TINY, random_state=None), memory=str(tmp_path)).fit(X, y)


def _alter_features_in_place(value):
    """Add 1 to every ``features`` array inside a cached object; whether anything was altered."""
    altered = False
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "features" and isinstance(item, np.ndarray):
                item += 1.0
                altered = True
            else:
                altered |= _alter_features_in_place(item)
    return altered


def test_an_altered_dense_stage_cache_entry_is_recomputed_with_a_warning(tmp_path, count_stages):
    import joblib

    X, y = data()
    fresh = QPMClassifier(**TINY).fit(X, y).predict_proba(X)
    QPMClassifier(**TINY, memory=str(tmp_path)).fit(X, y)
    outputs = list(tmp_path.rglob("output.pkl"))
    assert len(outputs) == 1
    entry = joblib.load(outputs[0])
    assert _alter_features_in_place(entry)
    joblib.dump(entry, outputs[0])  # the pickle stays valid, its numbers do not
    count_stages.clear()
    with pytest.warns(UserWarning, match="does not match the checksum"):
        refit = QPMClassifier(**TINY, memory=str(tmp_path)).fit(X, y)
    assert count_stages.count("dense") == 1, "the damaged entry must be recomputed, not served"
    np.testing.assert_allclose(refit.predict_proba(X), fresh, rtol=1e-5, atol=1e-6)
    # the entry was stored again and is served from now on
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = QPMClassifier(**TINY, memory=str(tmp_path)).fit(X, y)
    assert count_stages.count("dense") == 1
    np.testing.assert_allclose(again.predict_proba(X), fresh, rtol=1e-5, atol=1e-6)


def test_dense_stage_checksum_sees_every_array_and_the_history():
    from qpm_sklearn._stages import dense_stage_checksum

    result = {"mlp": {"w": np.ones((2, 2), np.float32)}, "head": {"b": np.zeros(2, np.float32)},
              "features": np.arange(6, dtype=np.float32).reshape(3, 2), "history": [{"loss": 1.0}]}  # fmt: skip
    reference = dense_stage_checksum(result)
    assert dense_stage_checksum({**result, "mlp": {"w": result["mlp"]["w"].copy()}}) == reference
    for altered in (
        {**result, "mlp": {"w": np.ones((2, 2), np.float32) * 2}},
        {**result, "head": {"b": np.zeros(2, np.float64)}},
        {**result, "features": result["features"].reshape(2, 3)},
        {**result, "history": [{"loss": 1.5}]},
    ):
        assert dense_stage_checksum(altered) != reference


# ------------------------------------------------------------------------- the CPU warning
class _StopBeforeTraining(Exception):
    pass


def _fit_until_training(monkeypatch, clf, X, y):
    """Run fit up to the dense stage and stop there; the warnings fit emitted on the way."""
    import qpm_sklearn.classifier as classifier

    def stop(*args, **kwargs):
        raise _StopBeforeTraining

    monkeypatch.setattr(classifier, "cached_dense_stage", stop)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(_StopBeforeTraining):
            clf.fit(X, y)
    return [w for w in caught if issubclass(w.category, SlowCPUFitWarning)]


def test_the_papers_defaults_on_a_cpu_warn_once_before_training(monkeypatch):
    # 60 samples of 16 x 16 tokens under the paper's adapter: about 9 minutes of one core.
    X = np.zeros((60, 16, 16, 64), np.float32)
    y = np.arange(60) % 3
    caught = _fit_until_training(monkeypatch, QPMClassifier(device="cpu", random_state=0), X, y)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "CPU" in message and "minutes" in message and "hidden_size=256" in message and "On a CPU" in message
    assert caught[0].filename == __file__  # points at the caller's fit


def test_a_small_fit_on_a_cpu_does_not_warn(monkeypatch):
    X, y = data()
    assert _fit_until_training(monkeypatch, QPMClassifier(**TINY, device="cpu"), X, y) == []
    # the CPU-sized configuration on 1,000 embeddings of 8 x 8 x 384 stays below the threshold too
    seconds = estimated_cpu_seconds(1000, 64, 384, hidden_size=256, n_features=64, n_layers=2, epochs=15)
    assert seconds < LONG_FIT_SECONDS


def test_estimated_cpu_seconds_counts_the_adapters_multiply_adds():
    # widths 3 -> 5 -> 2: 3*5 + 5*2 = 25 multiply-adds per token, x3 for forward and backward
    expected = 3 * 25 * 4 * 10 * 2 / CPU_MACS_PER_SECOND
    assert estimated_cpu_seconds(10, 4, 3, hidden_size=5, n_features=2, n_layers=2, epochs=2) == pytest.approx(expected)
    # 3 -> 7 -> 7 -> 2 with n_layers=3
    expected = 3 * (21 + 49 + 14) * 4 * 10 * 2 / CPU_MACS_PER_SECOND
    assert estimated_cpu_seconds(10, 4, 3, hidden_size=7, n_features=2, n_layers=3, epochs=2) == pytest.approx(expected)


# ------------------------------------------------------------------------- fitted state is plain
def _torch_objects(value, where):
    """Paths inside ``value`` that hold something other than numpy and plain Python."""
    if isinstance(value, dict):
        return [path for key, item in value.items() for path in _torch_objects(item, f"{where}[{key!r}]")]
    if isinstance(value, (list, tuple)):
        return [path for i, item in enumerate(value) for path in _torch_objects(item, f"{where}[{i}]")]
    plain = (np.ndarray, np.generic, int, float, str, bool, type(None))
    return [] if isinstance(value, plain) and not (isinstance(value, np.ndarray) and value.dtype == object
                                                   and not all(isinstance(v, str) for v in value.ravel())) \
        else [f"{where}: {type(value).__name__}"]  # fmt: skip


def _fitted_attributes(clf):
    return {name: value for name, value in vars(clf).items() if name.endswith("_") and not name.startswith("_")}


def test_every_fitted_attribute_is_numpy_or_plain_python():
    X, y = data()
    clf = QPMClassifier(**TINY).fit(X, y)
    assert _torch_objects(_fitted_attributes(clf), "clf") == []


def test_fitted_state_is_plain_whatever_the_stages_return(monkeypatch):
    # A device run hands back tensors (a CUDA fit's history rows, its network states): fake one.
    import qpm_sklearn.classifier as classifier

    original = classifier.cached_dense_stage

    def on_a_device(*args, **kwargs):
        dense, staged = original(*args, **kwargs)
        tensors = dict(dense, head={key: torch.from_numpy(value) for key, value in dense["head"].items()},
                       history=[{key: torch.tensor(value) for key, value in row.items()} for row in dense["history"]])  # fmt: skip
        return tensors, staged

    monkeypatch.setattr(classifier, "cached_dense_stage", on_a_device)
    X, y = data()
    clf = QPMClassifier(**TINY).fit(X, y)
    assert _torch_objects(_fitted_attributes(clf), "clf") == []
    assert isinstance(clf.history_[0]["loss"], float)
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(restored.predict_proba(X), clf.predict_proba(X))


def test_plain_fitted_value_converts_every_torch_object():
    from qpm_sklearn.classifier import plain_fitted_value

    weight = torch.arange(6, dtype=torch.float32).reshape(2, 3).requires_grad_()
    value = {"w": weight, "half": torch.ones(2, dtype=torch.bfloat16), "count": torch.tensor(7),
             "rows": [{"loss": torch.tensor(0.5)}], "pair": (torch.device("cpu"), 1), "name": "x"}  # fmt: skip
    plain = plain_fitted_value(value)
    assert _torch_objects(plain, "value") == []
    np.testing.assert_array_equal(plain["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert plain["half"].dtype == np.float32 and plain["count"] == 7 and type(plain["count"]) is int
    assert plain["rows"] == [{"loss": 0.5}] and plain["pair"] == ("cpu", 1) and plain["name"] == "x"


# ------------------------------------------------------------------------- determinism
_THREADS_SCRIPT = """
import sys, numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
from qpm_sklearn import QPMClassifier
rng = np.random.RandomState(0)
y = np.repeat(np.arange(3), 20)
X = rng.normal(size=(60, 4, 4, 16)).astype(np.float32)
X[..., 0] += y[:, None, None]
for _ in range(int(sys.argv[2])):
    clf = QPMClassifier(n_features=16, n_selected=8, n_per_class=2, hidden_size=64, n_layers=3, dense_epochs=6,
                        sparse_epochs=3, dense_batch_size=16, dense_lr=1e-2, random_state=0, device="cpu").fit(X, y)
    sys.stdout.write(clf.predict_proba(X).tobytes().hex() + "\\n")
"""


def _fits_in_a_subprocess(threads, n_fits=1):
    out = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT, str(threads), str(n_fits)], capture_output=True,
                         text=True, check=True, env={**__import__("os").environ, "OMP_NUM_THREADS": str(threads)})  # fmt: skip
    return [np.frombuffer(bytes.fromhex(line), dtype=np.float32) for line in out.stdout.split()]


def test_cpu_fit_is_reproducible_under_one_thread_count_and_close_under_another():
    (one,), (two, two_again) = _fits_in_a_subprocess(1), _fits_in_a_subprocess(2, n_fits=2)
    # Same machine, same thread count, same random_state: the same bits (docs/guide.md, determinism).
    np.testing.assert_array_equal(two, two_again)
    # Across thread counts only closeness is claimed, and only for small models like this one: some
    # matrix products sum in a thread-dependent order, and training can amplify their last bits.
    np.testing.assert_allclose(one, two, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------- parameters, devices
@pytest.mark.parametrize("name", ["n_features", "n_selected", "hidden_size", "dense_epochs", "sparse_batch_size"])
def test_bools_are_refused_for_integer_parameters(name):
    X, y = data()
    with pytest.raises(InvalidParameterError, match=f"'{name}' parameter .*not a bool"):
        QPMClassifier(**dict(TINY, **{name: True})).fit(X, y)


@pytest.mark.parametrize("device", ["xpu", "meta", f"cuda:{max(torch.cuda.device_count(), 1) + 6}"])
def test_devices_the_machine_lacks_are_refused(device):
    if device.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("without CUDA a cuda request falls back to the CPU (next test)")
    with pytest.raises(ValueError, match=r"not available on this machine; available: \['cpu'"):
        resolve_device(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only fallback")
def test_cuda_request_without_cuda_warns_once_per_fit():
    X, y = data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        QPMClassifier(**dict(TINY, dense_epochs=1, sparse_epochs=1), device="cuda").fit(X, y)
    messages = [str(w.message) for w in caught if "CUDA is not available" in str(w.message)]
    assert len(messages) == 1, messages


# ------------------------------------------------------------------------- derived attributes
def test_derived_attributes_and_network_cache():
    X, y = data()
    clf = QPMClassifier(**TINY).fit(X, y)
    np.testing.assert_array_equal(clf.assignment_, (clf.sparse_weight_ != 0).astype(np.int8))
    assert "assignment_" not in vars(clf), "assignment_ is derived, not stored"
    np.testing.assert_array_equal(clf.loss_curve_, [row["loss"] for row in clf.history_])
    assert clf.n_iter_ == TINY["dense_epochs"] + TINY["sparse_epochs"]
    np.testing.assert_allclose(clf.predict_log_proba(X), np.log(clf.predict_proba(X)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(clf.class_weights("dense"), clf.dense_head_state_["linear.weight"])
    first = clf._network("sparse", torch.device("cpu"))
    assert clf._network("sparse", torch.device("cpu")) is first, "the network is built once"
    restored = pickle.loads(pickle.dumps(clf))
    assert "_networks" not in vars(restored)
    np.testing.assert_array_equal(restored.predict_proba(X), clf.predict_proba(X))
    clf.fit(*data(seed=2))
    assert clf._network("sparse", torch.device("cpu")) is not first, "fit invalidates the cached network"


def test_qsenn_selection_info_describes_the_final_head():
    X, y = data(n=48)
    clf = QPMClassifier(**dict(TINY, n_per_class=1, sparse_epochs=1), selection="qsenn").fit(X, y)
    info = clf.selection_info_
    assert info["method"] == "qsenn" and info["round"] == info["rounds"] - 1 == 3
    assert info["n_nonzero"] == np.count_nonzero(clf.sparse_weight_)


def test_tokens_fingerprint_is_a_content_hash(monkeypatch):
    from qpm_sklearn._stages import tokens_fingerprint

    monkeypatch.setattr(_stages, "_FINGERPRINT_BLOCK", 1000)  # several blocks, hashed in parallel
    tokens = np.random.RandomState(0).normal(size=(50, 4, 6)).astype(np.float32)
    key = tokens_fingerprint(tokens)
    assert tokens_fingerprint(tokens.copy()) == key
    changed = tokens.copy()
    changed.reshape(-1)[-1] = np.nextafter(changed.reshape(-1)[-1], np.float32(np.inf))  # one ulp, last block
    assert tokens_fingerprint(changed) != key
    assert tokens_fingerprint(tokens.reshape(50, 6, 4)) != key, "the shape is part of the key"
    assert tokens_fingerprint(tokens.view(np.int32)) != key, "the dtype is part of the key"


# ------------------------------------------------------------------------- sample weights
def test_weight_two_equals_a_duplicated_row_in_the_selection_statistics():
    rng = np.random.RandomState(0)
    features = rng.gamma(2.0, size=(30, 12))
    y = np.arange(30) % 3
    features[np.arange(30), y] += 2.0
    weight = np.ones(30)
    weight[[1, 4, 7, 8]] = 2.0
    duplicated = np.r_[np.arange(30), [1, 4, 7, 8]]
    options = dict(n_selected=5, n_per_class=2, redundancy="paper", solver_options={}, seed=0, verbose=0)
    weighted = qpm_head(features, y, 3, sample_weight=weight, **options)
    reference = qpm_head(features[duplicated], y[duplicated], 3, **options)
    np.testing.assert_array_equal(weighted.selected, reference.selected)
    np.testing.assert_array_equal(weighted.weight, reference.weight)
    np.testing.assert_allclose(weighted.mean, reference.mean, rtol=1e-12)
    np.testing.assert_allclose(weighted.std, reference.std, rtol=1e-12)
    unweighted = qpm_head(features, y, 3, **options)
    assert not np.allclose(unweighted.mean, reference.mean), "the check must be able to fail"


def test_sample_weights_in_fit():
    X, y = data()
    weight = np.where(y == 0, 3.0, 1.0)
    clf = QPMClassifier(**TINY).fit(X, y, sample_weight=weight)
    assert clf.predict_proba(X).shape == (len(X), 3)
    unweighted = QPMClassifier(**TINY).fit(X, y)
    assert not np.array_equal(clf.dense_mlp_state_["layers.0.weight"], unweighted.dense_mlp_state_["layers.0.weight"])
    ones = QPMClassifier(**TINY).fit(X, y, sample_weight=np.ones(len(y)))
    np.testing.assert_allclose(ones.predict_proba(X), unweighted.predict_proba(X), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="(?i)negative"):
        QPMClassifier(**TINY).fit(X, y, sample_weight=-weight)
    with pytest.raises(ValueError, match="selection='qpm' only"):
        QPMClassifier(**dict(TINY, n_per_class=1), selection="sldd").fit(X, y, sample_weight=weight)


def test_class_weight_is_a_weight_per_class_multiplying_sample_weight():
    X, y = data()
    labels = np.array(["cat", "dog", "eel"])[y]
    weight = np.linspace(0.5, 2.0, len(y))
    by_class = QPMClassifier(**TINY, class_weight={"cat": 3.0, "eel": 0.5}).fit(X, labels, sample_weight=weight)
    by_hand = weight * np.select([labels == "cat", labels == "eel"], [3.0, 0.5], default=1.0)
    by_sample = QPMClassifier(**TINY).fit(X, labels, sample_weight=by_hand)
    np.testing.assert_allclose(by_class.predict_proba(X), by_sample.predict_proba(X), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(by_class.selected_features_, by_sample.selected_features_)
    unweighted = QPMClassifier(**TINY).fit(X, labels, sample_weight=weight)
    assert not np.allclose(unweighted.feature_mean_, by_class.feature_mean_), "the check must be able to fail"


def test_balanced_class_weight_is_n_samples_over_n_classes_times_class_counts():
    X, y = data(n=30)
    y = np.r_[np.zeros(15, int), np.ones(10, int), np.full(5, 2)]
    balanced = QPMClassifier(**TINY, class_weight="balanced").fit(X, y)
    counts = np.array([15, 10, 5])
    by_hand = QPMClassifier(**TINY).fit(X, y, sample_weight=(30 / (3 * counts))[y])
    np.testing.assert_allclose(balanced.predict_proba(X), by_hand.predict_proba(X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(balanced.feature_std_, by_hand.feature_std_, rtol=1e-6)


def test_class_weight_errors_name_the_argument():
    X, y = data()
    with pytest.raises(ValueError, match="class_weight=.*selection='qpm' only"):
        QPMClassifier(**dict(TINY, n_per_class=1), selection="sldd", class_weight="balanced").fit(X, y)
    with pytest.raises(ValueError, match="class_weight must hold finite non-negative"):
        QPMClassifier(**TINY, class_weight={0: -1.0}).fit(X, y)
    with pytest.raises(ValueError, match="zero for every sample"):
        QPMClassifier(**TINY, class_weight={0: 0.0, 1: 0.0, 2: 0.0}).fit(X, y)
    with pytest.raises(ValueError, match="not in class_weight"):  # scikit-learn's own check of the labels
        QPMClassifier(**TINY, class_weight={0: 2.0, 7: 1.0}).fit(X, y)
    with pytest.raises(InvalidParameterError, match="class_weight"):
        QPMClassifier(**TINY, class_weight="uniform").fit(X, y)


def test_class_weight_survives_save_and_load(tmp_path):
    X, y = data()
    clf = QPMClassifier(**TINY, class_weight={np.int64(0): 2.0, 1: 0.5}).fit(X, y)
    loaded = QPMClassifier.load(clf.save(tmp_path / "model"))
    assert loaded.class_weight == clf.class_weight
    assert [type(key) for key in loaded.class_weight] == [np.int64, int]
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))


# ------------------------------------------------------------------------- early stopping
def test_early_stopping_stops_the_dense_stage_and_keeps_its_best_epoch():
    X, y = data(n=48)
    y = np.random.RandomState(1).permutation(y)  # nothing to learn: validation accuracy stalls
    clf = QPMClassifier(**dict(TINY, dense_epochs=40), early_stopping=True, n_iter_no_change=2,
                        validation_fraction=0.25).fit(X, y)  # fmt: skip
    dense = [row for row in clf.history_ if row["stage"] == "dense"]
    assert len(dense) < 40, "the dense stage should have stopped early"
    scores = [row["validation_score"] for row in dense]
    best = int(np.argmax(scores))
    assert len(dense) == best + 1 + 2, "stops n_iter_no_change epochs after the best one"
    # the kept weights are the best epoch's: its validation accuracy is the best score
    rows = np.sort(__import__("sklearn.model_selection", fromlist=["x"]).train_test_split(
        np.arange(48), test_size=0.25, stratify=y, random_state=_dense_seed(0))[1])  # fmt: skip
    accuracy = np.mean(clf.predict(X[rows], stage="dense") == y[rows])
    assert accuracy == pytest.approx(max(scores))
    assert not any("validation_score" in row for row in QPMClassifier(**TINY).fit(X, y).history_)


def _dense_seed(random_state):
    from sklearn.utils import check_random_state

    from qpm_sklearn._device import torch_seed

    return torch_seed(check_random_state(random_state))


def test_fit_validates_the_tokens_once(monkeypatch):
    import qpm_sklearn.training as training

    X, y = data()
    checks = []
    original_check_array, original_counts = _stages.check_array, training._token_counts
    monkeypatch.setattr(_stages, "check_array", lambda *a, **k: checks.append("X") or original_check_array(*a, **k))
    monkeypatch.setattr(training, "_token_counts", lambda *a: checks.append("tokens") or original_counts(*a))
    QPMClassifier(**dict(TINY, dense_epochs=1, sparse_epochs=1)).fit(X, y)
    assert checks == ["X"], "the internals run with check_input=False"
