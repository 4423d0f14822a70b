"""scikit-learn's conventions: ConvergenceWarning for solvers stopped early."""

import warnings

import numpy as np
import sklearn.exceptions

from qpm_sklearn.exceptions import ConvergenceWarning
from qpm_sklearn.selection import solve_selection


def test_osqp_stopped_by_max_iter_warns_convergence():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(20, 6))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        solve_selection(A, n_selected=6, n_per_class=2, max_iter=1, random_state=0)
    categories = [w.category for w in caught]
    assert ConvergenceWarning in categories
    # scikit-learn's category (its filters match) and the RuntimeWarning it used to be
    assert issubclass(ConvergenceWarning, sklearn.exceptions.ConvergenceWarning)
    assert issubclass(ConvergenceWarning, RuntimeWarning)
