"""What-if questions to a sparse head: interventions on pooled features, exact single-feature counterfactuals.

The sparse head is linear in the standardised pooled features (docs/method.md#sparse-head)::

    logit_c = bias_c + sum_j W[c, j] (f_j - mean_j) / max(std_j, 1e-6)

so forcing a feature to a value (:func:`head_logits` on edited features) and the smallest change of
one feature that makes a target class win (:func:`single_feature_counterfactuals`) are closed-form.
numpy only; :class:`QPMClassifier.intervene <qpm_sklearn.QPMClassifier.intervene>` and
:class:`QPMClassifier.counterfactual <qpm_sklearn.QPMClassifier.counterfactual>` call these on the
model's pooled features.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from .explanation import feature_labels

if TYPE_CHECKING:
    import pandas

#: The floor of the standardisation (as :func:`qpm_sklearn.adapter.standardise`).
STD_FLOOR = 1e-6


def head_logits(pooled: ArrayLike, weight: ArrayLike, bias: ArrayLike, mean: ArrayLike, std: ArrayLike) -> np.ndarray:
    """Logits of the sparse head on raw pooled features, in float64.

    Parameters
    ----------
    pooled : array-like of shape (n, K)
        Raw pooled features of the selected channels.
    weight : array-like of shape (C, K)
    bias : array-like of shape (C,)
    mean, std : array-like of shape (K,)

    Returns
    -------
    logits : ndarray of shape (n, C)

    Examples
    --------
    >>> head_logits([[2.0, 0.0]], [[1, 0], [0, 1]], [0, 0], [1.0, 1.0], [0.5, 2.0]).tolist()
    [[2.0, -0.5]]
    """
    scale = np.maximum(np.asarray(std, dtype=np.float64), STD_FLOOR)
    standardised = (np.asarray(pooled, dtype=np.float64) - np.asarray(mean, dtype=np.float64)) / scale
    return standardised @ np.asarray(weight, dtype=np.float64).T + np.asarray(bias, dtype=np.float64)


@dataclass(frozen=True, repr=False)
class Counterfactual:
    """For every sample, how much one pooled feature of a target class would have to change for the target to win.

    ``delta[i, j]`` is the change of the raw pooled activation of channel ``features[i, j]`` (all
    other features as they are) at which the target's logit meets the largest other logit: moving
    a little further (``delta + sign(delta) * eps``) makes the target the prediction, stopping a
    little short (``delta - sign(delta) * eps``) does not. ``inf`` where no change of that feature
    can do it (the target loses to a class that uses the feature at least as strongly, or it would
    need a negative activation: pooled features are spatial means of non-negative maps). 0 where
    the target already is the prediction.

    Parameters
    ----------
    target : ndarray of shape (n,)
        The class each sample is asked about (labels).
    prediction : ndarray of shape (n,)
        The model's prediction before any change.
    features : ndarray of shape (n, k), int
        Channel ids of the target's features (-1 pads where targets use fewer).
    delta : ndarray of shape (n, k)
        Raw pooled-activation change each feature needs on its own (``inf``: impossible).
    delta_standardised : ndarray of shape (n, k)
        The same in units of the feature's training standard deviation (``delta / std``).
    best : ndarray of shape (n,), int
        Column of the smallest ``|delta_standardised|`` (-1 where none is finite).
    feature_names : dict of int to str, optional
        Names of channels (unnamed ones are ``"feature <id>"``).
    """

    target: np.ndarray
    prediction: np.ndarray
    features: np.ndarray
    delta: np.ndarray
    delta_standardised: np.ndarray
    best: np.ndarray
    feature_names: dict[int, str] | None = None

    def __len__(self) -> int:
        return len(self.target)

    def __repr__(self) -> str:
        n, k = np.shape(self.features)
        return f"Counterfactual({n} samples, {k} features each)"

    @property
    def possible(self) -> np.ndarray:
        """(n,) bool: some single feature of the target can make it the prediction."""
        return self.best >= 0

    def to_frame(self) -> pandas.DataFrame:
        """One row per sample and target feature (needs pandas).

        Columns: ``sample``, ``prediction``, ``target``, ``feature``, ``feature_name``, ``delta``,
        ``delta_standardised``, ``best`` (the sample's smallest change).

        Returns
        -------
        frame : pandas.DataFrame
        """
        try:
            pd = importlib.import_module("pandas")
        except ImportError:
            raise ImportError("Counterfactual.to_frame() needs pandas: pip install pandas") from None
        samples, columns = np.nonzero(self.features >= 0)
        features = self.features[samples, columns]
        return pd.DataFrame(
            {
                "sample": samples,
                "prediction": self.prediction[samples],
                "target": self.target[samples],
                "feature": features,
                "feature_name": feature_labels(features, self.feature_names),
                "delta": self.delta[samples, columns],
                "delta_standardised": self.delta_standardised[samples, columns],
                "best": self.best[samples] == columns,
            }
        )


def single_feature_counterfactuals(
    pooled: ArrayLike, target: ArrayLike, weight: ArrayLike, bias: ArrayLike, mean: ArrayLike, std: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """The smallest change of each target feature's raw pooled value that makes the target win.

    For sample i, target t and a feature j that t uses, the logits move linearly with the change
    delta of f_j: ``logit_c + a_c delta`` with ``a_c = W[c, j] / max(std_j, 1e-6)``. The target
    wins where ``(a_t - a_c) delta > logit_c - logit_t`` for every other class c: an interval,
    cut to ``delta >= -f_j`` (pooled activations are non-negative). Its end nearest 0 is returned.

    Parameters
    ----------
    pooled : array-like of shape (n, K)
    target : array-like of int, shape (n,)
        Class index per sample.
    weight, bias, mean, std : arrays of the sparse head (see :func:`head_logits`)

    Returns
    -------
    columns : ndarray of shape (n, k), int
        Head columns of the target's features (-1 pads).
    delta : ndarray of shape (n, k)
        ``inf`` where impossible, 0 where the target already wins.
    """
    pooled = np.asarray(pooled, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    target = np.asarray(target, dtype=np.intp)
    logits = head_logits(pooled, weight, bias, mean, std)
    scale = np.maximum(np.asarray(std, dtype=np.float64), STD_FLOOR)
    used = weight != 0
    width = int(used[np.unique(target)].sum(1).max()) if len(target) else 0
    n = len(pooled)
    columns = np.full((n, width), -1, dtype=np.intp)
    delta = np.full((n, width), np.inf)
    predicted = np.argmax(logits, axis=1)
    for i in range(n):
        t = target[i]
        own = np.flatnonzero(used[t])
        columns[i, : own.size] = own
        if predicted[i] == t:
            delta[i, : own.size] = 0.0
            continue
        others = np.arange(weight.shape[0]) != t
        gap = logits[i, others] - logits[i, t]  # the target must gain this much on each
        for position, j in enumerate(own):
            slope = (weight[t, j] - weight[others, j]) / scale[j]
            low, high = -pooled[i, j], np.inf  # activations stay non-negative
            rising, falling = slope > 0, slope < 0
            if np.any(~rising & ~falling & (gap >= 0)):
                continue  # a class with the same weight already ties or beats the target
            if rising.any():
                low = max(low, float(np.max(gap[rising] / slope[rising])))
            if falling.any():
                high = min(high, float(np.min(gap[falling] / slope[falling])))
            if low >= high:
                continue
            delta[i, position] = low if low >= 0 else (high if high <= 0 else 0.0)
    return columns, delta
