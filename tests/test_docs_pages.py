"""The Python blocks of "Using it from PyTorch" and "Deploying a model" run, in order, as written."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(page):
    return re.findall(r"^```python\n(.*?)^```", (DOCS / page).read_text(encoding="utf-8"), flags=re.S | re.M)


@pytest.mark.parametrize("page", ["pytorch.md", "deploying.md"])
def test_page_examples_run(page, monkeypatch, tmp_path):
    if page == "deploying.md":
        for module in ("onnxruntime", "mlflow", "skops"):
            pytest.importorskip(module)
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local file store: no tracking server in tests
        monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(page)
    assert blocks
    namespace = {}
    for block in blocks:
        exec(compile(block, f"{page}", "exec"), namespace)  # one namespace: a page reads as one script
