"""Sphinx configuration: the API reference from the numpydoc docstrings, the user guide from Markdown.

Build (from the repository root, with ``pip install ".[docs]"``)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import re

import qpm_sklearn

project = "qpm_sklearn"
author = "qpm_sklearn developers"
copyright = f"2026, {author}"
release = version = qpm_sklearn.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "generated/*.examples"]

autosummary_generate = True
autodoc_typehints = "none"  # numpydoc's Parameters sections say the types; signatures stay short
autodoc_default_options = {"member-order": "bysource"}
numpydoc_show_class_members = False  # the class template documents members itself
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
# Every public function and method documents each of its parameters (PR01, PR02) and what it
# returns (RT01) or yields (YD01); with -W a missing section fails the build, and so CI.
numpydoc_validation_checks = {"PR01", "PR02", "RT01", "YD01"}
numpydoc_validation_exclude = {
    r"\._",  # private names
    r"\.__\w+__$",  # dunder methods (documented by Python)
    # Names a module imports: autodoc reads their docstrings while filtering members.
    r"\.(Any|Path|TypeVar|dataclass|field|replace|replace_atomically)$",
}

# The user guide is Markdown (GitHub-flavoured: $...$ maths, ``` fences, tables).
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

html_theme = "alabaster"
html_static_path = []
html_title = f"qpm_sklearn {release}"


# The Markdown pages mark anchors as GitHub renders them, ``<a id="name"></a>`` before a heading;
# MyST does not read raw HTML, so such an anchor becomes a MyST target ``(name)=`` at build time
# (the files stay as they are).
_HTML_ANCHOR = re.compile(r'^<a id="([^"]+)"></a>\s*$', re.MULTILINE)


def _html_anchors_to_targets(app, docname, source):
    if app.env.doc2path(docname).suffix == ".md":
        source[0] = _HTML_ANCHOR.sub(r"(\1)=", source[0])


def _skip_metadata_request_methods(app, what, name, obj, skip, options):
    """scikit-learn's generated ``set_*_request`` methods: documented by scikit-learn, not here."""
    return True if re.fullmatch(r"set_\w+_request", name) else None


def setup(app):
    app.connect("source-read", _html_anchors_to_targets)
    app.connect("autodoc-skip-member", _skip_metadata_request_methods)
