"""The README's usage, as a user writes it: CI checks it with ``mypy --strict`` (not run by pytest).

Type checkers must accept the public imports, the fitted attributes and the metrics
protocol exactly as the README and docs use them.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from qpm_sklearn import Dinov2Embedder, Explanation, PatchEmbedder, QPMClassifier
from qpm_sklearn.export import to_onnx
from qpm_sklearn.metrics import evaluate


def readme_usage(paths: list[str], paths_test: list[str], y: np.ndarray, y_test: np.ndarray) -> None:
    embedder = Dinov2Embedder("facebook/dinov2-with-registers-base", embedding_cache="embeddings")
    X = embedder.transform(paths)
    X_test = embedder.transform(paths_test)

    search = GridSearchCV(QPMClassifier(memory="cache", random_state=0), {"n_selected": [30, 50], "n_per_class": [4, 5]})
    search.fit(X, y)
    clf: QPMClassifier = search.best_estimator_

    expl: Explanation = clf.explain(X_test[:4])
    print(expl.prediction, expl.features, expl.contributions, expl.saliency(224).shape)
    print(clf.compare_classes("Brewer_Blackbird", "Rusty_Blackbird")["shared"])

    # fitted attributes are known to type checkers
    classes: np.ndarray = clf.classes_
    selected: np.ndarray = clf.selected_features_
    info = clf.selection_info_["status"]
    epochs = [row["loss"] for row in clf.history_]
    print(classes, selected, info, epochs, clf.n_features_in_)

    # the estimator satisfies the protocol metrics.evaluate is typed with
    print(evaluate(clf, X_test, y_test))
    to_onnx(clf, "model.onnx")

    small = PatchEmbedder("facebook/dinov2-with-registers-small", image_size=112, output="cls")
    pipe = make_pipeline(Dinov2Embedder(), QPMClassifier()).fit(paths, y)
    print(pipe.predict(paths_test), small.get_feature_names_out())
