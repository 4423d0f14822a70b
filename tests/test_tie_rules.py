"""Top-k over tied values: the documented rule (lower feature id first) in explain (docs/explanations.md)."""

import numpy as np

from qpm_sklearn import QPMClassifier


def test_explain_orders_tied_contributions_by_feature_id():
    rng = np.random.RandomState(0)
    y = np.repeat(np.arange(3), 12)
    X = rng.normal(size=(36, 2, 2, 6)).astype(np.float32)
    X[:, 0, 0, :3] += 2.0 * np.eye(3)[y]
    clf = QPMClassifier(n_features=10, n_selected=6, n_per_class=3, hidden_size=16, n_layers=2, dense_epochs=2,
                        sparse_epochs=1, random_state=0).fit(X, y)  # fmt: skip
    # Standardising by the sample's own pooled values makes every contribution 0: a 3-way tie.
    clf.feature_mean_ = clf.pooled_features(X[:1])[0].astype(np.float32)
    explanation = clf.explain(X[:1])
    np.testing.assert_array_equal(explanation.contributions, 0.0)
    # Hand answer: the predicted class's features in ascending channel id.
    expected = np.sort(clf.class_features(explanation.prediction[0]))
    np.testing.assert_array_equal(explanation.features[0], expected)
