"""The package's runtime seams: which modules import torch, and the shared torch-free helpers."""

import subprocess
import sys
from numbers import Integral

import numpy as np
import pytest

from qpm_sklearn._utils import StrictInterval, check_class_codes, check_finite_array, check_int


NUMPY_ONLY = ["qpm_sklearn._utils", "qpm_sklearn.selection", "qpm_sklearn.glm", "qpm_sklearn.metrics",
              "qpm_sklearn.baselines"]

# One interpreter imports the modules in turn and reports, after each, whether torch is loaded: the
# first module after which it is names the culprit (imports only accumulate).
_TORCH_AFTER_EACH = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
    print(name, 'torch' in sys.modules)
"""


def _torch_after_each(modules):
    out = subprocess.run([sys.executable, "-c", _TORCH_AFTER_EACH, *modules], capture_output=True, text=True,
                         check=True)
    return dict(line.rsplit(" ", 1) for line in out.stdout.strip().splitlines())


def test_numpy_only_modules_do_not_import_torch():
    loaded = _torch_after_each(NUMPY_ONLY)
    assert list(loaded) == NUMPY_ONLY
    culprits = [name for name, value in loaded.items() if value == "True"]
    assert not culprits, f"importing {culprits[0]} imports torch"


def test_the_check_itself_sees_torch():
    # The test above must be able to fail: a module that does import torch is reported, and the
    # modules before it are not.
    loaded = _torch_after_each(["qpm_sklearn.selection", "qpm_sklearn.adapter", "qpm_sklearn.glm"])
    assert loaded == {"qpm_sklearn.selection": "False", "qpm_sklearn.adapter": "True", "qpm_sklearn.glm": "True"}


def test_check_int_refuses_bools_and_non_integers():
    assert check_int(np.int64(4), "n", 1, 5) == 4
    for value in (True, np.bool_(False), 2.0, "3"):
        with pytest.raises(TypeError, match="n must be an int"):
            check_int(value, "n")
    with pytest.raises(ValueError, match=r"n must be in \[1, 5\]; got 6"):
        check_int(6, "n", 1, 5)


def test_strict_interval_refuses_bools_only():
    constraint = StrictInterval(Integral, 1, None, closed="left")
    assert constraint.is_satisfied_by(1) and constraint.is_satisfied_by(np.int32(3))
    assert not constraint.is_satisfied_by(True) and not constraint.is_satisfied_by(0)
    assert "not a bool" in str(constraint)


def test_check_finite_array_and_class_codes():
    assert check_finite_array([[1, 2]], "F", ndim=2).dtype == np.float64
    with pytest.raises(ValueError, match="F must be a 2-D array"):
        check_finite_array([1.0], "F", ndim=2)
    with pytest.raises(ValueError, match="only finite"):
        check_finite_array([np.inf], "F")
    assert check_class_codes(np.array([0, 2, 1], np.int32), 3).dtype == np.int64
    with pytest.raises(ValueError, match=r"in \[0, 2\)"):
        check_class_codes([0, 2], 2, n_classes=2)
    with pytest.raises(TypeError, match="integer class codes"):
        check_class_codes([0.0, 1.0], 2)
