"""scikit-learn's conventions: ConvergenceWarning for solvers stopped early."""

import warnings

import numpy as np
import pytest
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
    # scikit-learn's category (its filters match), and a RuntimeWarning (filters on that match too)
    assert issubclass(ConvergenceWarning, sklearn.exceptions.ConvergenceWarning)
    assert issubclass(ConvergenceWarning, RuntimeWarning)


def test_global_pandas_output_is_ignored_for_the_patch_grid_with_one_warning(tiny_backbone):
    pd = pytest.importorskip("pandas")
    from sklearn import config_context

    from qpm_sklearn import Dinov2Embedder

    images = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 3), dtype=np.uint8)
    patch = Dinov2Embedder(tiny_backbone, image_size=28, device="cpu")
    expected = patch.transform(images)
    with config_context(transform_output="pandas"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            grid = patch.transform(images)
        cls = Dinov2Embedder(tiny_backbone, image_size=28, device="cpu", output="cls").transform(images)
    assert isinstance(grid, np.ndarray) and np.allclose(grid, expected)
    assert [w.category for w in caught] == [UserWarning] and "4-D grid" in str(caught[0].message)
    assert isinstance(cls, pd.DataFrame)  # the global setting still applies to tables
    with pytest.raises(ValueError, match="4-D grid"):  # asked of the embedder itself: refused
        patch.set_output(transform="pandas").transform(images)
