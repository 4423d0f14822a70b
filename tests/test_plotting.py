"""Figures render headless (Agg), save as valid PNGs and hold the expected panels and titles."""

import struct

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from qpm_sklearn import Explanation  # noqa: E402
from qpm_sklearn.plotting import plot_assignment, plot_class_comparison, plot_explanation  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    """(width, height) from the IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def figure_texts(fig):
    """The figure-level texts, top to bottom: the suptitle first, the supxlabel last.

    ``fig.texts`` is public on every supported matplotlib (``Figure.get_suptitle``
    arrived only in 3.8).
    """
    return [text.get_text() for text in sorted(fig.texts, key=lambda text: -text.get_position()[1])]


def save(fig, tmp_path, name):
    path = tmp_path / name
    fig.savefig(path, dpi=60)
    width, height = png_size(path)
    assert path.stat().st_size > 2000 and width > 150 and height > 100
    return width, height


def make_explanation():
    rng = np.random.default_rng(0)
    maps = rng.gamma(1.0, 1.0, size=(2, 3, 4, 4)).astype(np.float32)
    maps[1, 2] = 0.0  # padding of a class with two features
    contributions = np.array([[1.5, 0.5, -0.25], [2.0, 1.0, 0.0]])
    return Explanation(
        prediction=np.array(["owl", "cat"]),
        proba=np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]]),
        classes=np.array(["cat", "dog", "owl"]),
        logit=contributions.sum(1) + 0.5,
        intercept=np.array([0.5, 0.5]),
        features=np.array([[12, 3, 40], [7, 3, -1]]),
        contributions=contributions,
        weights=np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]),
        maps=maps,
    )


class StubEstimator:
    classes_ = np.array(["cat", "dog", "owl"])
    selected_features_ = np.array([3, 7, 12, 40])
    assignment_ = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 1]], dtype=np.int8)

    def compare_classes(self, a, b):
        fa = set(self.selected_features_[self.assignment_[list(self.classes_).index(a)] != 0])
        fb = set(self.selected_features_[self.assignment_[list(self.classes_).index(b)] != 0])
        return {
            "shared": np.array(sorted(fa & fb)),
            "only_a": np.array(sorted(fa - fb)),
            "only_b": np.array(sorted(fb - fa)),
        }

    def feature_maps(self, X):
        return np.random.default_rng(1).random((len(X), 4, 4, 4))


def image_axes(fig):
    return [ax for ax in fig.axes if ax.images]


def test_plot_explanation_panels_titles_and_png(tmp_path):
    expl = make_explanation()
    fig = plot_explanation(expl, index=0, feature_names={12: "beak"}, class_names={"owl": "Great owl"})
    axes = image_axes(fig)
    assert len(axes) == 2 + 3  # image, evidence, three features
    titles = [ax.get_title() for ax in axes]
    assert titles[0] == "(no image)" and titles[1].startswith("class evidence")
    assert titles[2] == "beak\ncontribution +1.50" and titles[4] == "feature 40\ncontribution -0.25"
    suptitle = figure_texts(fig)[0]
    assert "Great owl" in suptitle and "p = 0.70" in suptitle and "2.25" in suptitle
    # Without an image the canvas has the size of the grid's image (14 px per cell); overlays match it.
    assert axes[2].images[1].get_array().shape == (56, 56)
    save(fig, tmp_path, "explanation.png")


def test_plot_explanation_skips_padding_and_uses_image(tmp_path):
    expl = make_explanation()
    image = np.random.default_rng(2).integers(0, 255, size=(30, 40, 3), dtype=np.uint8)
    fig = plot_explanation(expl, index=1, image=image, class_names=["Cat", "Dog", "Owl"])
    axes = image_axes(fig)
    assert len(axes) == 2 + 2  # the -1 padded feature is not drawn
    assert axes[0].get_title() == "image" and axes[3].images[1].get_array().shape == (30, 40)
    texts = figure_texts(fig)
    assert len(texts) == 2
    assert texts[0].startswith("predicted Cat")
    assert "average training image" in texts[-1]  # contributions are relative
    wrong = plot_explanation(expl, index=1, class_names=["Cat", "Dog", "Owl"], true_label="dog")
    assert figure_texts(wrong)[0].startswith("predicted Cat (p = 0.60); true Dog (misclassified)")
    right = plot_explanation(expl, index=1, class_names=["Cat", "Dog", "Owl"], true_label="cat")
    title = figure_texts(right)[0]
    assert "true Cat\n" in title and "misclassified" not in title
    save(fig, tmp_path, "explanation_image.png")
    with pytest.raises(ValueError, match="index"):
        plot_explanation(expl, index=2)
    with pytest.raises(ValueError, match="image must"):
        plot_explanation(expl, image=np.zeros((4, 4, 2)))


def test_plot_class_comparison(tmp_path):
    est = StubEstimator()
    fig = plot_class_comparison(est, "cat", "dog")
    assert len(fig.axes) == 1
    title = fig.axes[0].get_title()
    assert title == "cat vs dog: 1 shared, 1 only cat, 1 only dog"
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["feature 7", "feature 3", "feature 12"]
    save(fig, tmp_path, "comparison.png")
    fig = plot_class_comparison(est, "cat", "owl", X=np.zeros((2, 5)), feature_names={3: "crest"})
    panels = image_axes(fig)[1:]
    # cat uses {3, 7}, owl {3, 12, 40}: shared 3 in both rows, 7 for cat, 12 and 40 for owl.
    assert len(panels) == 2 + 1 + 2
    titles = {ax.get_title() for ax in panels}
    assert titles == {"cat: crest", "owl: crest", "cat: feature 7", "owl: feature 12", "owl: feature 40"}
    save(fig, tmp_path, "comparison_maps.png")
    with pytest.raises(ValueError, match="exactly 2"):
        plot_class_comparison(est, "cat", "owl", X=np.zeros((3, 5)))


def test_plot_assignment(tmp_path):
    est = StubEstimator()
    fig = plot_assignment(est, class_names=["Cat", "Dog", "Owl"])
    (ax,) = fig.axes
    np.testing.assert_array_equal(ax.images[0].get_array(), est.assignment_ != 0)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Cat", "Dog", "Owl"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["feature 3", "feature 7", "feature 12", "feature 40"]
    assert ax.get_title() == "assignment: 3 classes x 4 features\n2-3 per class"
    save(fig, tmp_path, "assignment.png")
    # A small model's figure is still wide enough for its whole title.
    fig.canvas.draw()
    title = ax.title.get_window_extent()
    assert 0 <= title.x0 and title.x1 <= fig.bbox.x1


def test_figures_of_a_fitted_classifier(tmp_path):
    from qpm_sklearn import QPMClassifier
    from qpm_sklearn.datasets import make_parts

    X, y, _ = make_parts(n_samples=60, random_state=0)
    clf = QPMClassifier(
        n_features=16, hidden_size=32, n_layers=1, n_selected=4, n_per_class=2, dense_epochs=2, sparse_epochs=1,
        device="cpu", random_state=0,
    ).fit(X, y)
    expl = clf.explain(X[:2])
    fig = plot_explanation(expl, index=1)
    assert len(image_axes(fig)) == 2 + int((expl.features[1] >= 0).sum())
    save(fig, tmp_path, "fitted_explanation.png")
    a, b = clf.classes_[:2]
    fig = plot_class_comparison(clf, a, b, X=X[[np.flatnonzero(y == a)[0], np.flatnonzero(y == b)[0]]])
    comparison = clf.compare_classes(a, b)
    n_panels = 2 * len(comparison["shared"]) + len(comparison["only_a"]) + len(comparison["only_b"])
    assert len(image_axes(fig)) == 1 + n_panels
    save(fig, tmp_path, "fitted_comparison.png")
    fig = plot_assignment(clf)
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), clf.assignment_ != 0)
    save(fig, tmp_path, "fitted_assignment.png")


def test_missing_matplotlib_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install qpm_sklearn\[plot\]"):
        plot_assignment(StubEstimator())
