"""Behaviour preserved across refactors: outputs stored by benchmarks/refactor_reference.py.

The stored model file was written by the code before the refactor; it must load in the
current format and give the stored probabilities. The selection on a stored matrix must
pick the same features, and a fresh fit on the stored seed the same features and
(up to float noise across thread counts) the same predictions.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from qpm_sklearn import QPMClassifier
from qpm_sklearn.selection import solve_selection

ROOT = Path(__file__).resolve().parents[1]


def _reference_module():
    spec = importlib.util.spec_from_file_location("refactor_reference", ROOT / "benchmarks" / "refactor_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference():
    module = _reference_module()
    with np.load(module.REFERENCE, allow_pickle=False) as stored:
        return module, dict(stored)


def test_stored_inputs_are_regenerated_exactly(reference):
    module, stored = reference
    for name, array in module.make_inputs().items():
        np.testing.assert_array_equal(stored[name], array)


def test_stored_model_loads_with_the_same_probabilities(reference):
    module, stored = reference
    clf = QPMClassifier.load(module.MODEL)
    np.testing.assert_allclose(clf.predict_proba(stored["X"]), stored["model_proba"], atol=1e-5)
    np.testing.assert_array_equal(clf.selected_features_, stored["fit_selected_features"])
    np.testing.assert_array_equal(clf.assignment_, stored["fit_assignment"])
    assert clf.n_features_in_ == stored["X"].shape[-1]
    np.testing.assert_array_equal(clf.classes_, np.unique(stored["y"]))
    for name, value in module.PARAMS.items():
        assert clf.get_params()[name] == value


def test_selection_on_the_stored_matrix_is_unchanged(reference):
    _, stored = reference
    result = solve_selection(stored["A"], n_selected=8, n_per_class=3, random_state=0)
    np.testing.assert_array_equal(np.asarray(result.selected), stored["selection_selected"])
    np.testing.assert_array_equal(np.asarray(result.assignment), stored["selection_assignment"])


def test_fresh_fit_selects_and_predicts_as_stored(reference):
    module, stored = reference
    clf = QPMClassifier(**module.PARAMS).fit(stored["X"], stored["y"])
    np.testing.assert_array_equal(clf.selected_features_, stored["fit_selected_features"])
    np.testing.assert_array_equal(clf.assignment_, stored["fit_assignment"])
    agreement = np.mean(clf.predict(stored["X"]) == stored["fit_predict"])
    assert agreement >= 0.98
    np.testing.assert_allclose(clf.predict_proba(stored["X"]), stored["fit_proba"], atol=1e-3)
