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


def _metadata_with(monkeypatch, documentation):
    import qpm_sklearn._doc_links as doc_links

    class _Metadata:
        def get_all(self, name):
            assert name == "Project-URL"
            return ["Source, https://example.org/src", f"Documentation, {documentation}"]

    monkeypatch.setattr(doc_links.metadata, "metadata", lambda name: _Metadata())


def test_without_an_address_the_link_is_the_local_build_or_none(monkeypatch, tmp_path):
    import qpm_sklearn._doc_links as doc_links

    monkeypatch.delenv(DOCS_URL_VARIABLE, raising=False)
    monkeypatch.setattr(doc_links, "_LOCAL_BUILD", tmp_path)
    _metadata_with(monkeypatch, "https://github.com/qpm-sklearn/qpm_sklearn/tree/main/docs")
    assert docs_root() == "" and _Estimator()._get_doc_link() == ""
    (tmp_path / "index.html").write_text("<html></html>")
    assert _Estimator()._get_doc_link() == f"{tmp_path.as_uri()}/generated/qpm_sklearn._Estimator.html"


def test_a_published_documentation_address_in_the_metadata_is_the_default(monkeypatch, tmp_path):
    import qpm_sklearn._doc_links as doc_links

    monkeypatch.delenv(DOCS_URL_VARIABLE, raising=False)
    monkeypatch.setattr(doc_links, "_LOCAL_BUILD", tmp_path)  # no local build
    _metadata_with(monkeypatch, "https://qpm-sklearn.example.org/en/stable/")
    assert _Estimator()._get_doc_link() == "https://qpm-sklearn.example.org/en/stable/generated/qpm_sklearn._Estimator.html"
    monkeypatch.setenv(DOCS_URL_VARIABLE, "http://localhost:8000")  # the variable still wins
    assert _Estimator()._get_doc_link() == "http://localhost:8000/generated/qpm_sklearn._Estimator.html"


def test_the_installed_metadata_is_read(monkeypatch, tmp_path):
    import qpm_sklearn._doc_links as doc_links

    monkeypatch.delenv(DOCS_URL_VARIABLE, raising=False)
    monkeypatch.setattr(doc_links, "_LOCAL_BUILD", tmp_path)
    # Whatever setup.cfg declares: an address into the sources gives no link, a built reference is used.
    url = metadata_documentation().strip()
    assert docs_root() == ("" if "/tree/" in url or "/blob/" in url else url.rstrip("/"))


def metadata_documentation():
    from importlib import metadata

    urls = metadata.metadata("qpm_sklearn").get_all("Project-URL") or []
    return next(url for label, _, url in (u.partition(",") for u in urls) if label.strip() == "Documentation")


@pytest.mark.parametrize("name", ["Dinov2Embedder", "PatchEmbedder", "QPMClassifier"])
def test_public_estimators_link_to_a_page_the_reference_generates(monkeypatch, name):
    monkeypatch.setenv(DOCS_URL_VARIABLE, "https://docs.example.org")
    estimator = getattr(qpm_sklearn, name)()
    if not isinstance(estimator, DocLinkMixin):
        pytest.skip(f"{name} does not use DocLinkMixin yet")
    assert estimator._get_doc_link() == f"https://docs.example.org/generated/qpm_sklearn.{name}.html"
    assert f"   {name}\n" in API_PAGE.read_text()  # docs/api.rst generates generated/qpm_sklearn.<name>.html
