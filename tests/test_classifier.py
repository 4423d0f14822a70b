"""QPMClassifier: scikit-learn citizenship, fitted-state invariants, explanations, caching."""

import pickle

import joblib
import numpy as np
import pytest
from PIL import Image
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.utils import get_tags
from sklearn.utils.estimator_checks import check_class_weight_classifiers, check_estimator

from qpm_sklearn import Dinov2Embedder, QPMClassifier

SMALL = dict(
    n_features=16, n_selected=8, n_per_class=2, hidden_size=32, n_layers=2,
    dense_epochs=8, sparse_epochs=4, dense_batch_size=16, sparse_batch_size=16, dense_lr=1e-2,
)  # fmt: skip


def make_grid_data(n_per_class=20, n_classes=3, grid=(4, 4), dims=8, seed=0):
    """Patch grids where class c lights up a class-specific direction in one quadrant."""
    rng = np.random.RandomState(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = rng.normal(scale=0.5, size=(len(y), *grid, dims)).astype(np.float32)
    directions = rng.normal(size=(n_classes, dims)).astype(np.float32) * 2.0
    for i, c in enumerate(y):
        r, q = rng.randint(0, grid[0] - 1), rng.randint(0, grid[1] - 1)
        X[i, r : r + 2, q : q + 2] += directions[c]
    return X, y


@pytest.fixture(scope="module")
def fitted():
    X, y = make_grid_data()
    return QPMClassifier(**SMALL, random_state=0).fit(X, y), X, y


def test_tags_describe_the_inputs_fit_takes():
    X, y = make_grid_data(n_per_class=4)
    tags = get_tags(QPMClassifier())
    assert tags.input_tags.two_d_array and tags.input_tags.three_d_array and not tags.input_tags.allow_nan
    assert tags.estimator_type == "classifier" and tags.classifier_tags.multi_class
    for shape in (X.shape, (len(X), 16, X.shape[-1]), (len(X), X.shape[-1])):  # 4-D, 3-D and 2-D all fit
        QPMClassifier(**dict(SMALL, dense_epochs=1, sparse_epochs=1), random_state=0).fit(
            X.reshape(shape) if len(shape) > 2 else X.mean(axis=(1, 2)), y
        )


def test_sklearn_estimator_checks():
    # Minibatch training draws its batches from the rows: weighting a row cannot reproduce
    # repeating it exactly (as for scikit-learn's own stochastic solvers).
    expected = {
        "check_sample_weight_equivalence_on_dense_data": "stochastic minibatch training",
        "check_class_weight_classifiers": "the paper's L1 terms outweigh the cross-entropy on 2-D noise; "
        "run without them in test_class_weight_passes_scikit_learns_check_without_the_l1_terms",
    }
    results = check_estimator(
        QPMClassifier(**SMALL, random_state=0), on_fail=None, on_skip=None, expected_failed_checks=expected
    )
    failures = [f"{r['check_name']}: {r['exception']!r}" for r in results if r["status"] == "failed"]
    assert failures == [], "scikit-learn estimator checks failed:\n" + "\n".join(failures)
    passed = [r for r in results if r["status"] == "passed"]
    assert len(passed) > 40, f"only {len(passed)} checks ran"


def test_class_weight_passes_scikit_learns_check_without_the_l1_terms():
    # scikit-learn's check: class 0 weighs 1000, the others 1e-4, on very noisy 2-D blobs, and
    # >87 % of the test points must be predicted 0. The bias-free head reaches that only by
    # moving the features of class 0 above the frozen standardisation, which the paper's L1
    # penalties on the selected maps and features (l1_maps=5, l1_features=1) resist here.
    settings = dict(SMALL, sparse_epochs=30, sparse_lr=3e-2, l1_maps=0.0, l1_features=0.0)
    check_class_weight_classifiers("QPMClassifier", QPMClassifier(**settings, random_state=0))


def test_assignment_constraints(fitted):
    clf, X, y = fitted
    A = clf.assignment_
    assert A.shape == (3, clf.n_selected)
    assert set(np.unique(A)) <= {0, 1}
    np.testing.assert_array_equal(A.sum(axis=1), clf.n_per_class)
    assert len({tuple(row) for row in A}) == len(A), "two classes share the same feature set"
    assert len(np.unique(clf.selected_features_)) == clf.n_selected
    assert np.all(np.diff(clf.selected_features_) > 0)
    assert np.all((clf.selected_features_ >= 0) & (clf.selected_features_ < clf.n_features))
    np.testing.assert_array_equal(clf.sparse_weight_, A)
    np.testing.assert_array_equal(clf.sparse_bias_, 0)
    assert {row["stage"] for row in clf.history_} == {"dense", "sparse"}
    assert sum(row["stage"] == "dense" for row in clf.history_) == clf.dense_epochs
    info = clf.selection_info_
    assert info["upper_bound"] >= info["objective"] - 1e-9


def test_sparse_logits_are_assignment_times_standardised_features(fitted):
    clf, X, _ = fitted
    pooled = clf.pooled_features(X).astype(np.float64)
    maps = clf.feature_maps(X).astype(np.float64)
    np.testing.assert_allclose(maps.mean(axis=(2, 3)), pooled, rtol=1e-5, atol=1e-6)
    z = (pooled - clf.feature_mean_) / np.maximum(clf.feature_std_.astype(np.float64), 1e-6)
    expected = z @ clf.assignment_.T.astype(np.float64)
    np.testing.assert_allclose(clf.decision_function(X), expected, rtol=1e-4, atol=1e-4)
    assert np.all(maps >= 0), "feature maps end in a ReLU"


def test_dense_and_sparse_stages_both_predict(fitted):
    clf, X, y = fitted
    dense = clf.predict_proba(X, stage="dense")
    np.testing.assert_allclose(dense.sum(axis=1), 1, rtol=1e-5)
    assert clf.feature_maps(X[:3], stage="dense").shape == (3, clf.n_features, 4, 4)
    assert clf.class_weights("dense").shape == (3, clf.n_features)
    assert np.mean(clf.predict(X, stage="dense") == y) > 0.9
    assert np.mean(clf.predict(X) == y) > 0.9
    with pytest.raises(ValueError, match="stage"):
        clf.predict(X, stage="final")


def test_explanation_adds_up_to_the_logit(fitted):
    clf, X, _ = fitted
    expl = clf.explain(X[:10])
    logits = clf.decision_function(X[:10]) if len(clf.classes_) > 2 else None
    predicted = clf.predict(X[:10])
    np.testing.assert_array_equal(expl.prediction, predicted)
    np.testing.assert_allclose(expl.intercept + expl.contributions.sum(axis=1), expl.logit, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(expl.logit, logits.max(axis=1), rtol=1e-5, atol=1e-5)
    maps = clf.feature_maps(X[:10])
    for i, label in enumerate(predicted):
        np.testing.assert_array_equal(np.sort(expl.features[i]), clf.class_features(label))
        assert np.all(np.diff(expl.contributions[i]) <= 1e-6), "largest contribution first"
        columns = np.searchsorted(clf.selected_features_, expl.features[i])
        np.testing.assert_allclose(expl.maps[i], maps[i, columns], rtol=1e-6)
    assert expl.saliency(16).shape == (10, clf.n_per_class, 16, 16)
    np.testing.assert_allclose(expl.evidence_map(), expl.maps.sum(axis=1), rtol=1e-6)


def test_compare_classes(fitted):
    clf, _, _ = fitted
    cmp = clf.compare_classes(0, 1)
    a, b = set(clf.class_features(0)), set(clf.class_features(1))
    assert set(cmp["shared"]) == a & b and set(cmp["only_a"]) == a - b and set(cmp["only_b"]) == b - a
    with pytest.raises(ValueError, match="label"):
        clf.class_features(7)


def test_input_layouts_agree(fitted):
    clf, X, _ = fitted
    grid_scores = clf.decision_function(X)
    tokens = X.reshape(len(X), 16, X.shape[-1])
    np.testing.assert_allclose(clf.decision_function(tokens), grid_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(clf.decision_function(X.astype(np.float64)), grid_scores, rtol=1e-5, atol=1e-5)
    assert clf.feature_maps(X[:, :2, :3]).shape == (len(X), clf.n_selected, 2, 3)  # another grid works
    with pytest.raises(ValueError, match="perfect square"):
        clf.predict(tokens[:, :15])
    with pytest.raises(ValueError, match="expecting 8 features"):
        clf.predict(X[..., :5])


def test_same_random_state_same_model():
    X, y = make_grid_data(seed=1)
    a = QPMClassifier(**SMALL, random_state=3).fit(X, y)
    b = QPMClassifier(**SMALL, random_state=3).fit(X, y)
    np.testing.assert_array_equal(a.assignment_, b.assignment_)
    np.testing.assert_array_equal(a.selected_features_, b.selected_features_)
    np.testing.assert_array_equal(a.decision_function(X), b.decision_function(X))


def test_pickle_and_joblib_round_trip(fitted, tmp_path):
    clf, X, _ = fitted
    expected = clf.predict_proba(X)
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(restored.predict_proba(X), expected)
    joblib.dump(clf, tmp_path / "clf.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "clf.joblib").predict_proba(X), expected)
    state = vars(restored)
    assert not any(type(v).__module__.startswith("torch") for v in state.values()), "fitted state is numpy"


def test_budget_errors():
    X, y = make_grid_data()
    with pytest.raises(ValueError, match="n_per_class=9 must not exceed n_selected=8"):
        QPMClassifier(**dict(SMALL, n_per_class=9)).fit(X, y)
    with pytest.raises(ValueError, match="n_selected=20 must not exceed n_features=16"):
        QPMClassifier(**dict(SMALL, n_selected=20)).fit(X, y)
    X4, y4 = make_grid_data(n_per_class=4, n_classes=4)
    with pytest.raises(ValueError, match="distinct sets"):
        QPMClassifier(**dict(SMALL, n_selected=3, n_per_class=1)).fit(X4, y4)
    with pytest.raises(ValueError, match="at least 2 classes"):
        QPMClassifier(**SMALL).fit(X, np.zeros(len(X)))
    with pytest.raises(ValueError, match="same number of samples"):
        QPMClassifier(**SMALL).fit(X, y[:-1])


def test_grid_search_and_cross_val_over_budgets():
    X, y = make_grid_data(n_per_class=12)
    search = GridSearchCV(
        QPMClassifier(**SMALL, random_state=0), {"n_selected": [6, 8], "n_per_class": [1, 2]}, cv=2
    ).fit(X, y)
    # the refit model carries the winning budget: set_params reached the selection
    best = search.best_params_
    assert search.best_estimator_.get_params()["n_selected"] == best["n_selected"]
    assert len(search.best_estimator_.selected_features_) == best["n_selected"]
    np.testing.assert_array_equal(search.best_estimator_.assignment_.sum(axis=1), best["n_per_class"])
    # cross_val_score over the same folds gives the grid's scores for SMALL's own budget
    scores = cross_val_score(QPMClassifier(**SMALL, random_state=0), X, y, cv=2)
    own_budget = {"n_per_class": SMALL["n_per_class"], "n_selected": SMALL["n_selected"]}
    candidate = search.cv_results_["params"].index(own_budget)
    np.testing.assert_allclose(scores, [search.cv_results_[f"split{k}_test_score"][candidate] for k in (0, 1)])
    # three separable classes: every budget scores well above chance (1/3) on held-out folds
    assert np.all(search.cv_results_["mean_test_score"] > 0.6), search.cv_results_["mean_test_score"]


def test_memory_runs_dense_stage_once_per_training_set(tmp_path, count_stages):
    calls = count_stages
    X, y = make_grid_data(n_per_class=12)
    budgets = {"n_selected": [6, 8], "n_per_class": [1, 2]}
    search = GridSearchCV(
        QPMClassifier(**SMALL, random_state=0, memory=str(tmp_path)), budgets, cv=2, refit=True
    ).fit(X, y)
    n_fits = 4 * 2 + 1
    assert calls.count("sparse") == n_fits
    # two CV folds + the full-data refit: three distinct training sets
    assert calls.count("dense") == 3
    # a cache hit gives exactly the model an uncached fit gives
    fresh = QPMClassifier(**dict(SMALL, **search.best_params_), random_state=0).fit(X, y)
    np.testing.assert_array_equal(search.best_estimator_.decision_function(X), fresh.decision_function(X))


def test_pipeline_from_pil_images_and_paths(tiny_backbone, tmp_path):
    rng = np.random.RandomState(0)
    y = np.repeat(["cat", "dog"], 6)
    arrays = [np.full((30, 30, 3), 40 if label == "cat" else 200, np.uint8) + rng.randint(0, 30, (30, 30, 3)).astype(np.uint8) for label in y]
    images = [Image.fromarray(a) for a in arrays]
    pipeline = make_pipeline(
        Dinov2Embedder(model=tiny_backbone, image_size=28, device="cpu"),
        QPMClassifier(**dict(SMALL, n_selected=4, n_per_class=2), random_state=0),
    )
    pipeline.fit(images, y)
    np.testing.assert_array_equal(pipeline.classes_, ["cat", "dog"])
    # the labels predicted are those of the most probable class
    most_probable = pipeline.classes_[pipeline.predict_proba(images).argmax(axis=1)]
    np.testing.assert_array_equal(pipeline.predict(images), most_probable)
    paths = []
    for i, image in enumerate(images):
        path = tmp_path / f"{i}.png"
        image.save(path)
        paths.append(str(path))
    np.testing.assert_array_equal(pipeline.predict(paths), pipeline.predict(images))
    assert pipeline.score(images, y) > 0.8


def test_save_load_without_pickle(fitted, tmp_path):
    clf, X, _ = fitted
    path = clf.save(tmp_path / "model")
    assert path.suffix == ".npz"
    with np.load(path, allow_pickle=False) as archive:  # loads with pickle disabled
        assert "assignment_" in archive.files
    loaded = QPMClassifier.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict_proba(X, stage="dense"), clf.predict_proba(X, stage="dense"))
    assert loaded.get_params() == dict(clf.get_params(), memory=None)
    assert loaded.selection_info_ == clf.selection_info_


def test_save_load_string_labels_and_version_check(tmp_path):
    import json

    X, y = make_grid_data(n_per_class=8)
    labels = np.array(["ant", "bee", "cow"], dtype=object)[y]
    clf = QPMClassifier(**dict(SMALL, dense_epochs=2, sparse_epochs=1), random_state=0).fit(X, labels)
    loaded = QPMClassifier.load(clf.save(tmp_path / "m.npz"))
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))
    # a file of another format version is refused with a message naming both versions
    with np.load(tmp_path / "m.npz", allow_pickle=False) as archive:
        contents = {name: archive[name] for name in archive.files}
    meta = json.loads(str(contents["__meta__.json"]))
    meta["format_version"] = 99
    contents["__meta__.json"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "future.npz", **contents)
    with pytest.raises(ValueError, match="format version 99"):
        QPMClassifier.load(tmp_path / "future.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a file written by"):
        QPMClassifier.load(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        QPMClassifier.load(tmp_path / "missing.npz")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU-only fallback")
def test_model_for_cuda_predicts_on_a_cpu_only_machine_with_a_warning(fitted):
    clf, X, _ = fitted
    expected = clf.predict_proba(X)
    on_gpu = pickle.loads(pickle.dumps(clf.set_params(device="cuda")))
    clf.set_params(device=None)
    with pytest.warns(RuntimeWarning, match="CUDA is not available"):
        proba = on_gpu.predict_proba(X)
    np.testing.assert_array_equal(proba, expected)
