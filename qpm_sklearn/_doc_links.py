"""Links from the estimators' HTML representation (Jupyter) to their page of the API reference.

scikit-learn draws a "?" link in an estimator's HTML repr from ``_doc_link_module`` and
``_doc_link_template``. The reference is built from ``docs/`` (``python -m sphinx -b html docs
docs/_build/html``) and has no public address yet, so the link goes to, in this order:

1. ``$QPM_SKLEARN_DOCS_URL`` (the root of a hosted or locally served build, e.g.
   ``http://localhost:8000`` after ``python -m http.server -d docs/_build/html``);
2. the local build beside the package in a source checkout, as a ``file://`` address;
3. the ``Documentation`` address of the installed package's metadata (``project_urls`` in
   setup.cfg) when it is a built reference: an address into a source tree (GitHub's ``/tree/`` or
   ``/blob/``) holds the Markdown sources, where the generated pages do not exist, so it is not used;
4. nowhere (no link).

So publishing the reference means setting ``Documentation`` to its address; no code changes.
"""

from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path

DOCS_URL_VARIABLE = "QPM_SKLEARN_DOCS_URL"
_LOCAL_BUILD = Path(__file__).resolve().parents[1] / "docs" / "_build" / "html"
_SOURCE_TREE = re.compile(r"/(tree|blob)/")


def published_docs_url() -> str:
    """The ``Documentation`` address of the installed package's metadata when it is a built reference, else ``""``.

    Returns
    -------
    str
    """
    try:
        urls = metadata.metadata("qpm_sklearn").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        return ""
    for entry in urls:
        label, _, url = entry.partition(",")
        url = url.strip()
        if label.strip().lower() == "documentation" and url.startswith(("https://", "http://")):
            return "" if _SOURCE_TREE.search(url) else url.rstrip("/")
    return ""


def docs_root() -> str:
    """The root address of the API reference, or ``""`` when none is known (the order above).

    Returns
    -------
    str
    """
    configured = os.environ.get(DOCS_URL_VARIABLE, "").strip()
    if configured:
        return configured.rstrip("/")
    if (_LOCAL_BUILD / "index.html").is_file():
        return _LOCAL_BUILD.as_uri()
    return published_docs_url()


class DocLinkMixin:
    """Points scikit-learn's HTML repr at ``generated/qpm_sklearn.<ClassName>.html`` of the reference.

    Put it first among an estimator's bases; the page is the one ``docs/api.rst`` generates
    for a name exported by :mod:`qpm_sklearn`.
    """

    _doc_link_module = "qpm_sklearn"

    @property
    def _doc_link_template(self) -> str:
        root = docs_root()
        return f"{root}/generated/qpm_sklearn.{{estimator_name}}.html" if root else ""
