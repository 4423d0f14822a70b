"""The package's __all__ is a literal list naming exactly the lazily imported public names."""

import ast
from pathlib import Path

import qpm_sklearn


def test_all_is_a_literal_list_of_the_public_names():
    tree = ast.parse(Path(qpm_sklearn.__file__).read_text())
    (assignment,) = [node for node in tree.body if isinstance(node, ast.Assign) and node.targets[0].id == "__all__"]
    names = ast.literal_eval(assignment.value)  # fails for [*_PUBLIC, ...], which type checkers cannot read
    assert sorted(names) == sorted([*qpm_sklearn._PUBLIC, "__version__"])
    for name in names:
        assert getattr(qpm_sklearn, name) is not None


def test_fitted_attributes_are_declared_on_the_class_but_absent_before_fit():
    from qpm_sklearn import QPMClassifier
    from qpm_sklearn.classifier import FITTED_ARRAYS, FITTED_STATES, FITTED_VALUES, OPTIONAL_FITTED_VALUES

    declared = QPMClassifier.__annotations__
    for name in (*FITTED_ARRAYS, *FITTED_STATES, *FITTED_VALUES, *OPTIONAL_FITTED_VALUES):
        assert name in declared, name
        assert not hasattr(QPMClassifier(), name)
