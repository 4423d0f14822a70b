"""Global importance of the selected features, where scikit-learn's inspection cannot take 4-D X.

:func:`contribution_importance` averages the additive contributions the sparse head is
made of (docs/explanations.md): ``W[c, f] * (pooled_f - mean_f) / std_f`` for class ``c``
and selected feature ``f``, over a set of samples. Unlike permutation importance it needs
no refit and no 2-D X, and it is exact for this model: the logit of class ``c`` is the sum
of these terms plus the class's constant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from sklearn.utils import Bunch
from sklearn.utils.validation import check_is_fitted

from .adapter import standardise

if TYPE_CHECKING:
    from .classifier import QPMClassifier

__all__ = ["contribution_importance"]


def contribution_importance(clf: QPMClassifier, X: npt.ArrayLike) -> Bunch:
    """Mean absolute contribution of each selected feature, per class and to the predicted class.

    Parameters
    ----------
    clf : QPMClassifier
        Fitted.
    X : array-like of shape (n, h, w, d), (n, p, d) or (n, d)
        Patch embeddings, e.g. held-out data.

    Returns
    -------
    result : sklearn.utils.Bunch
        ``per_class`` : ndarray (n_classes, n_selected), the mean over samples of
        ``|W[c, f] * z_f|`` (0 where class ``c`` does not use feature ``f``);
        ``importances_mean`` : ndarray (n_selected,), the mean over samples of the absolute
        contribution of ``f`` to each sample's predicted logit (the global ranking, in the
        spirit of ``feature_importances_``); ``importances_std`` : its standard deviation
        over samples; ``features`` : ``selected_features_`` (the column ids);
        ``classes`` : ``classes_`` (the row labels of ``per_class``).

    Examples
    --------
    >>> from qpm_sklearn.inspection import contribution_importance
    >>> from qpm_sklearn.testing import fitted_toy_classifier
    >>> clf, X, y = fitted_toy_classifier()
    >>> result = contribution_importance(clf, X)
    >>> result.per_class.shape, result.importances_mean.shape
    ((3, 6), (6,))
    """
    check_is_fitted(clf)
    standardised = standardise(clf.pooled_features(X), clf.feature_mean_, clf.feature_std_)  # (n, K)
    weight = np.asarray(clf.sparse_weight_, dtype=np.float64)  # (C, K)
    per_sample = np.abs(weight[None, :, :] * standardised[:, None, :])  # (n, C, K)
    predicted = per_sample[np.arange(len(per_sample)), np.argmax(clf.predict_proba(X), axis=1)]  # (n, K)
    return Bunch(
        per_class=per_sample.mean(axis=0),
        importances_mean=predicted.mean(axis=0),
        importances_std=predicted.std(axis=0),
        features=np.asarray(clf.selected_features_),
        classes=np.asarray(clf.classes_),
    )
