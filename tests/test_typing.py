"""The public API is annotated (the package ships ``py.typed``).

``python -m mypy`` (a CI step, settings in setup.cfg) checks that the annotations agree with
the code and that every name in them resolves (optional and heavy modules are imported for
annotations under ``TYPE_CHECKING`` only); this test checks that they exist: every parameter
and every return of every public function, method and property.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import qpm_sklearn

# Dunder methods users call through syntax; the rest (repr, eq, ...) have fixed signatures.
_CALLED_DUNDERS = {"__init__", "__call__", "__getitem__", "__len__", "__iter__"}


def _public_modules():
    names = ["qpm_sklearn"] + [
        info.name
        for info in pkgutil.walk_packages(qpm_sklearn.__path__, "qpm_sklearn.")
        if not any(part.startswith("_") for part in info.name.split("."))
    ]
    return [importlib.import_module(name) for name in names]


def _public_callables():
    """``{qualified name: function}`` of everything a user can reach without an underscore."""
    found = {}
    for module in _public_modules():
        exported = getattr(module, "__all__", None)
        for name in exported or [n for n in vars(module) if not n.startswith("_")]:
            obj = getattr(module, name)
            home = getattr(obj, "__module__", "")
            if home.split(".")[0] != "qpm_sklearn" or exported is None and home != module.__name__:
                continue  # imported, not exported: numpy, typing, or a private helper module
            if inspect.isfunction(obj):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
            elif inspect.isclass(obj):
                for attribute, member in vars(obj).items():
                    if attribute.startswith("_") and attribute not in _CALLED_DUNDERS:
                        continue
                    function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                    if inspect.isfunction(function):
                        found[f"{obj.__module__}.{obj.__qualname__}.{attribute}"] = function
    return found


PUBLIC = _public_callables()


def test_the_public_api_is_found():
    # The walk must see the estimators' methods and the module-level functions, or the
    # checks below would pass vacuously.
    for name in ("qpm_sklearn.classifier.QPMClassifier.fit", "qpm_sklearn.selection.solve_selection",
                 "qpm_sklearn.explanation.Explanation.to_frame", "qpm_sklearn.cli.main"):  # fmt: skip
        assert name in PUBLIC
    assert len(PUBLIC) > 100


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_callable_is_fully_annotated(name):
    function = PUBLIC[name]
    signature = inspect.signature(function)
    missing = [
        parameter.name
        for parameter in signature.parameters.values()
        if parameter.name not in ("self", "cls") and parameter.annotation is inspect.Parameter.empty
    ]
    if signature.return_annotation is inspect.Signature.empty and function.__name__ != "__init__":
        missing.append("return")
    assert missing == [], f"{name}: no annotation for {missing}"
