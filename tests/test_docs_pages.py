"""The Python blocks of "Using it from PyTorch" and "Deploying a model" run, in order, as written."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


# tests/test_artifacts.py and tests/test_mlflow.py run the blocks of these sections, with their own data.
_RUN_ELSEWHERE = ("## Self-contained artifacts", "## MLflow")


def python_blocks(page):
    text = (DOCS / page).read_text(encoding="utf-8")
    sections = re.split(r"^(?=## )", text, flags=re.M)
    kept = "".join(s for s in sections if not s.startswith(_RUN_ELSEWHERE))
    return re.findall(r"^```python\n(.*?)^```", kept, flags=re.S | re.M)


@pytest.mark.parametrize("page", ["pytorch.md", "deploying.md"])
def test_page_examples_run(page, monkeypatch, tmp_path):
    if page == "deploying.md":
        pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(page)
    assert blocks
    namespace = {}
    for block in blocks:
        exec(compile(block, f"{page}", "exec"), namespace)  # one namespace: a page reads as one script
