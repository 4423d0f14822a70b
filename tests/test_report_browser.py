"""The report opened in a real headless Chromium: no console errors, the search filters, not blank.

Needs the Debian package ``chromium`` (or ``$QPM_CHROMIUM``, a Chromium binary) and, for the
interactive checks, Playwright's Python package driving that browser (``pip install
qpm_sklearn[browser]``; Playwright's own browser download is never used). .ci/run installs both.
"""

import io
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from qpm_sklearn import QPMClassifier
from qpm_sklearn.datasets import make_parts
from qpm_sklearn.report import write_report


def _chromium() -> str | None:
    candidates = [os.environ.get("QPM_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium found (install the Debian package 'chromium', or set QPM_CHROMIUM to a Chromium binary)",
)
CLASS_NAMES = ["albatross", "blackbird", "cardinal", "dove"]
# No sandbox: CI containers run as root, where Chromium refuses to start with one.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    X, y, _ = make_parts(n_samples=48, n_classes=4, grid=(4, 4), n_dims=8, n_distractors=1, random_state=0)
    clf = QPMClassifier(n_features=10, n_selected=5, n_per_class=2, hidden_size=12, n_layers=1, dense_epochs=3,
                        sparse_epochs=2, random_state=0).fit(X, y)  # fmt: skip
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, size=(len(X), 40, 30, 3), dtype=np.uint8)
    names = {int(f): f"part {chr(ord('p') + i)}" for i, f in enumerate(clf.selected_features_)}
    path = write_report(clf, X, images, tmp_path_factory.mktemp("report") / "report.html", y=y, k=3,
                        class_names=CLASS_NAMES, feature_names=names)  # fmt: skip
    return path, clf, names


def _not_blank(png: bytes) -> None:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)
    assert pixels.std() > 10, "the screenshot is one flat colour"
    assert (pixels.min(axis=2) < 200).mean() > 0.01, "the screenshot is almost all white"


def test_chromium_renders_the_page_from_file(report, tmp_path):
    """Chromium's own headless mode: the DOM after scripts ran, and a screenshot."""
    path, clf, _ = report
    command = [CHROMIUM, "--headless", *FLAGS, "--window-size=1200,900"]
    dom = subprocess.run([*command, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    n_sections = len(CLASS_NAMES) + len(clf.selected_features_)
    assert f"{n_sections} of {n_sections} sections" in dom.stdout  # the search script ran
    shot = tmp_path / "shot.png"
    done = subprocess.run([*command, f"--screenshot={shot}", path.as_uri()], capture_output=True, timeout=120)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    _not_blank(shot.read_bytes())


def test_search_filters_without_console_errors(report):
    playwright = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed")
    path, clf, names = report
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            problems = []
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("request", lambda request: problems.append(request.url) if not request.url.startswith(("file:", "data:")) else None)
            page.goto(path.as_uri(), wait_until="load")
            _not_blank(page.screenshot())

            def visible():
                return set(page.eval_on_selector_all("[data-search]", "els => els.filter(e => !e.hidden).map(e => e.id)"))

            everything = visible()
            assert len(everything) == len(CLASS_NAMES) + len(clf.selected_features_)
            page.fill("#search", "Cardinal")  # case does not matter
            users = np.flatnonzero(clf.assignment_[2])
            expected = {"class-2"} | {f"feature-{clf.selected_features_[i]}" for i in users}
            assert visible() == expected
            assert page.inner_text("#count") == f"{len(expected)} of {len(everything)} sections"
            feature = int(clf.selected_features_[0])
            page.fill("#search", names[feature])
            classes = {f"class-{c}" for c in np.flatnonzero(clf.assignment_[:, 0])}
            assert visible() == {f"feature-{feature}"} | classes
            page.fill("#search", "")
            assert visible() == everything
            page.click(f"a[href='#feature-{feature}']")  # an internal link scrolls to its section
            assert page.evaluate(f"document.getElementById('feature-{feature}').getBoundingClientRect().top") < 900
            assert not problems, problems
        finally:
            browser.close()
