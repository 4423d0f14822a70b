"""Store reference outputs of the current code, for tests/test_refactor_reference.py.

Run once on the code a refactor starts from (``python benchmarks/refactor_reference.py``):
it writes ``tests/data/refactor_reference.npz`` (inputs and outputs) and
``tests/data/refactor_reference_model.npz`` (a fitted model in the current file format).
The test then checks that the refactored code loads that model, reproduces its
probabilities, and selects and fits as the stored outputs say. Tiny CPU-sized settings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qpm_sklearn import QPMClassifier
from qpm_sklearn.selection import solve_selection

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
REFERENCE = DATA / "refactor_reference.npz"
MODEL = DATA / "refactor_reference_model.npz"

#: The estimator every stored output comes from: small enough to fit in about a second.
PARAMS = dict(n_features=12, n_selected=6, n_per_class=2, hidden_size=16, n_layers=2,
              dense_epochs=4, sparse_epochs=3, random_state=0, device="cpu")  # fmt: skip


def make_inputs() -> dict[str, np.ndarray]:
    """Seeded data: three separable classes on a 3 x 3 grid of 8-dim tokens, and a random A."""
    rng = np.random.RandomState(0)
    y = np.repeat(np.arange(3), 16)
    X = rng.normal(size=(len(y), 3, 3, 8)).astype(np.float32)
    X[y == 1, :, :, :3] += 1.5
    X[y == 2, :, :, 3:6] += 1.5
    A = rng.normal(size=(30, 5)).astype(np.float64)
    return {"X": X, "y": y, "A": A}


def main() -> None:
    inputs = make_inputs()
    result = solve_selection(inputs["A"], n_selected=8, n_per_class=3, random_state=0)
    clf = QPMClassifier(**PARAMS).fit(inputs["X"], inputs["y"])
    DATA.mkdir(parents=True, exist_ok=True)
    clf.save(MODEL)
    np.savez_compressed(
        REFERENCE,
        **inputs,
        selection_selected=np.asarray(result.selected, dtype=np.int64),
        selection_assignment=np.asarray(result.assignment),
        fit_selected_features=clf.selected_features_,
        fit_assignment=clf.assignment_,
        fit_predict=clf.predict(inputs["X"]),
        fit_proba=clf.predict_proba(inputs["X"]),
        model_proba=clf.predict_proba(inputs["X"]),
    )
    print(f"wrote {REFERENCE} and {MODEL}")


if __name__ == "__main__":
    main()
