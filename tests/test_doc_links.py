"""The estimators' HTML repr links to their page of the API reference."""

from pathlib import Path

import pytest
from sklearn.base import BaseEstimator
from sklearn.utils import estimator_html_repr

import qpm_sklearn
from qpm_sklearn._doc_links import DOCS_URL_VARIABLE, DocLinkMixin, docs_root

API_PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.rst"


class _Estimator(DocLinkMixin, BaseEstimator):
    pass


_Estimator.__module__ = "qpm_sklearn.somewhere"  # scikit-learn links only estimators of _doc_link_module


def test_link_follows_the_configured_address(monkeypatch):
    monkeypatch.setenv(DOCS_URL_VARIABLE, "https://docs.example.org/qpm/ ")
    assert _Estimator()._get_doc_link() == "https://docs.example.org/qpm/generated/qpm_sklearn._Estimator.html"
    assert 'href="https://docs.example.org/qpm/generated/qpm_sklearn._Estimator.html"' in estimator_html_repr(_Estimator())


def test_without_an_address_the_link_is_the_local_build_or_none(monkeypatch, tmp_path):
    import qpm_sklearn._doc_links as doc_links

    monkeypatch.delenv(DOCS_URL_VARIABLE, raising=False)
    monkeypatch.setattr(doc_links, "_LOCAL_BUILD", tmp_path)
    assert docs_root() == "" and _Estimator()._get_doc_link() == ""
    (tmp_path / "index.html").write_text("<html></html>")
    assert _Estimator()._get_doc_link() == f"{tmp_path.as_uri()}/generated/qpm_sklearn._Estimator.html"


@pytest.mark.parametrize("name", ["Dinov2Embedder", "PatchEmbedder", "QPMClassifier"])
def test_public_estimators_link_to_a_page_the_reference_generates(monkeypatch, name):
    monkeypatch.setenv(DOCS_URL_VARIABLE, "https://docs.example.org")
    estimator = getattr(qpm_sklearn, name)()
    if not isinstance(estimator, DocLinkMixin):
        pytest.skip(f"{name} does not use DocLinkMixin yet")
    assert estimator._get_doc_link() == f"https://docs.example.org/generated/qpm_sklearn.{name}.html"
    assert f"   {name}\n" in API_PAGE.read_text()  # docs/api.rst generates generated/qpm_sklearn.<name>.html
