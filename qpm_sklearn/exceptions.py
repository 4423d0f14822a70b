"""The warnings the package defines.

Examples
--------
>>> import sklearn.exceptions
>>> from qpm_sklearn.exceptions import ConvergenceWarning
>>> issubclass(ConvergenceWarning, sklearn.exceptions.ConvergenceWarning)
True
"""

from __future__ import annotations

import sklearn.exceptions

__all__ = ["ConvergenceWarning"]


class ConvergenceWarning(sklearn.exceptions.ConvergenceWarning, RuntimeWarning):
    """A solver stopped before it converged (an iteration or time limit, the end of a path).

    scikit-learn's :class:`~sklearn.exceptions.ConvergenceWarning`, so its filters and
    ``pytest.warns`` match it; also a ``RuntimeWarning``, the category these warnings had
    before, so filters written for that keep working.
    """
