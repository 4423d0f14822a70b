"""feature_atlas against brute-force references; the report's HTML parsed and checked."""

import numpy as np
import pytest
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from qpm_sklearn import QPMClassifier
from qpm_sklearn.datasets import make_parts
from qpm_sklearn.report import HISTOGRAM_BINS, FeatureAtlas, feature_atlas, peak_pixels

TINY = dict(n_features=10, n_selected=5, n_per_class=2, hidden_size=12, n_layers=1, dense_epochs=3,
            sparse_epochs=2, random_state=0)  # fmt: skip


@pytest.fixture(scope="module")
def data():
    X, y, _ = make_parts(n_samples=60, n_classes=4, grid=(4, 4), n_dims=8, n_distractors=1, random_state=0)
    return X, y


@pytest.fixture(scope="module")
def fitted(data):
    X, y = data
    return QPMClassifier(**TINY).fit(X, y)


class StubClassifier(BaseEstimator):
    """The public interface feature_atlas reads, with maps given outright (exact ties on demand)."""

    def __init__(self, maps, n_classes=3, seed=0):
        rng = np.random.RandomState(seed)
        self.n_classes, self.seed = n_classes, seed
        self.maps = np.asarray(maps, dtype=np.float64)  # (n, K, h, w)
        n_selected = self.maps.shape[1]
        self.classes_ = np.arange(n_classes) * 10
        self.selected_features_ = np.arange(n_selected) * 3 + 1
        self.sparse_weight_ = (rng.rand(n_classes, n_selected) < 0.5).astype(np.float64)
        self.sparse_bias_ = np.zeros(n_classes)
        self.feature_mean_ = rng.rand(n_selected)
        self.feature_std_ = rng.rand(n_selected) + 0.5
        self.calls = []

    def fit(self):  # check_is_fitted wants an estimator
        return self

    @property
    def assignment_(self):
        return (self.sparse_weight_ != 0).astype(np.int8)

    def class_weights(self, stage="sparse"):
        return self.sparse_weight_

    def feature_maps(self, X, stage="sparse"):
        rows = np.asarray(X)[:, 0, 0, 0].astype(int)  # X carries its row ids
        self.calls.append(len(rows))
        return self.maps[rows]


def _ids(n):
    return np.arange(n, dtype=np.float64).reshape(n, 1, 1, 1) * np.ones((1, 2, 2, 1))


def _reference(maps, k, codes=None, logits=None):
    """Full sort of every feature's pooled activations (sorted(), not lexsort) and the class examples."""
    n, n_selected, h, w = maps.shape
    pooled = maps.reshape(n, n_selected, -1).mean(axis=2)
    top = np.zeros((n_selected, k), dtype=np.int64)
    peaks = np.zeros((n_selected, k, 2), dtype=np.int64)
    for f in range(n_selected):
        order = sorted(range(n), key=lambda r: (-pooled[r, f], r))[:k]
        top[f] = order
        for rank, r in enumerate(order):
            peaks[f, rank] = np.unravel_index(np.argmax(maps[r, f]), (h, w))
    examples = None
    if codes is not None:
        examples = np.full((logits.shape[1], k), -1)
        for c in range(logits.shape[1]):
            margin = {}
            for r in range(n):
                if codes[r] == c and np.argmax(logits[r]) == c:
                    margin[r] = logits[r, c] - np.max(np.delete(logits[r], c))
            best = sorted(margin, key=lambda r: (-margin[r], r))[:k]
            examples[c, : len(best)] = best
    return pooled, top, peaks, examples


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_atlas_equals_brute_force_with_ties(batch_size):
    rng = np.random.RandomState(1)
    n, n_selected = 40, 4
    maps = rng.randint(0, 3, size=(n, n_selected, 2, 3)).astype(np.float64)  # many equal means and equal peaks
    maps[5] = maps[17]  # duplicated rows: identical scores and peaks
    stub = StubClassifier(maps)
    y = stub.classes_[rng.randint(0, 3, size=n)]
    codes = y // 10
    standard = (maps.reshape(n, n_selected, -1).mean(2) - stub.feature_mean_) / stub.feature_std_
    logits = standard @ stub.sparse_weight_.T
    pooled, top, peaks, examples = _reference(maps, 6, codes, logits)
    atlas = feature_atlas(stub, _ids(n), y=y, k=6, batch_size=batch_size)
    assert isinstance(atlas, FeatureAtlas)
    np.testing.assert_array_equal(atlas.top_samples, top)
    np.testing.assert_array_equal(atlas.peaks, peaks)
    np.testing.assert_array_equal(atlas.top_scores, np.take_along_axis(pooled.T, top, axis=1))
    np.testing.assert_array_equal(atlas.class_examples, examples)
    np.testing.assert_array_equal(atlas.top_maps, maps[top, np.arange(n_selected)[:, None]])
    for c in range(3):  # each class's features (largest weight first; all weights are 1 here) on its examples
        used = np.flatnonzero(stub.sparse_weight_[c])
        np.testing.assert_array_equal(atlas.class_features[c, : len(used)], used)
        assert (atlas.class_features[c, len(used):] == -1).all()
        for e, row in enumerate(examples[c]):
            expected = maps[row, used] if row >= 0 else np.zeros_like(maps[0, used])
            np.testing.assert_array_equal(atlas.class_maps[c, e, : len(used)], expected)
    np.testing.assert_array_equal(atlas.features, stub.selected_features_)
    np.testing.assert_array_equal(atlas.classes_of, stub.assignment_.T.astype(bool))
    assert atlas.accuracy == pytest.approx(np.mean(np.argmax(logits, axis=1) == codes))
    np.testing.assert_allclose(atlas.mean, pooled.mean(axis=0))
    np.testing.assert_allclose(atlas.std, pooled.std(axis=0), atol=1e-12)
    # the histogram: every row in the bin whose edges hold its activation
    assert atlas.hist_counts.shape == (n_selected, HISTOGRAM_BINS)
    for f in range(n_selected):
        edges = atlas.hist_edges[f]
        expected = np.bincount(np.searchsorted(edges, pooled[:, f], side="right") - 1, minlength=HISTOGRAM_BINS)
        np.testing.assert_array_equal(atlas.hist_counts[f], expected)
        assert edges[-1] > pooled[:, f].max() >= edges[-1] / 2  # the smallest power-of-two range
    # streamed: no call saw more than one batch
    assert max(stub.calls) == min(batch_size, n)


def test_histogram_edges_do_not_depend_on_batches():
    rng = np.random.RandomState(2)
    maps = rng.exponential(size=(30, 3, 2, 2)) * np.array([1e-3, 1.0, 50.0])[None, :, None, None]
    maps[:3] *= 0.01  # a first batch of small values: the range grows later
    atlases = [feature_atlas(StubClassifier(maps), _ids(30), k=2, batch_size=b) for b in (1, 4, 30)]
    for atlas in atlases[1:]:
        np.testing.assert_array_equal(atlas.hist_edges, atlases[0].hist_edges)
        np.testing.assert_array_equal(atlas.hist_counts, atlases[0].hist_counts)


def test_padding_of_classes_without_correct_rows():
    maps = np.zeros((6, 2, 1, 1))
    maps[:, 0] = np.arange(6)[:, None, None]
    stub = StubClassifier(maps, n_classes=2)
    stub.sparse_weight_ = np.array([[1.0, 0.0], [-1.0, 0.0]])
    stub.feature_mean_, stub.feature_std_ = np.zeros(2), np.ones(2)
    y = np.array([0, 0, 0, 0, 10, 10])  # class 10 rows have large activations: predicted 0
    atlas = feature_atlas(stub, _ids(6), y=y, k=3)
    np.testing.assert_array_equal(atlas.class_examples, [[3, 2, 1], [-1, -1, -1]])
    assert np.isnan(atlas.class_margins[1]).all()
    np.testing.assert_allclose(atlas.class_margins[0], [6, 4, 2])


def test_atlas_of_a_fitted_classifier_matches_its_maps(data, fitted):
    X, y = data
    maps = fitted.feature_maps(X)
    logits = fitted.decision_function(X)
    pooled, top, peaks, examples = _reference(maps.astype(np.float64), 5, np.searchsorted(fitted.classes_, y), logits)
    atlases = [feature_atlas(fitted, X, y=y, k=5, batch_size=b) for b in (1, 7, len(X))]
    for atlas in atlases:
        np.testing.assert_array_equal(atlas.top_samples, top)
        np.testing.assert_array_equal(atlas.peaks, peaks)
        np.testing.assert_allclose(atlas.top_scores, np.take_along_axis(pooled.T, top, axis=1), rtol=1e-5)
        np.testing.assert_array_equal(atlas.class_examples, examples)
        assert atlas.accuracy == pytest.approx(fitted.score(X, y))
    np.testing.assert_allclose(atlases[0].top_scores, np.take_along_axis(fitted.pooled_features(X).T, top, 1), rtol=1e-5)


def test_atlas_reads_a_float16_memmap(data, fitted, tmp_path):
    X, y = data
    stored = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.float16, shape=X.shape)
    stored[:] = X
    stored.flush()
    memmap = np.load(tmp_path / "X.npy", mmap_mode="r")
    atlas = feature_atlas(fitted, memmap, y=y, k=4, batch_size=16)
    in_memory = feature_atlas(fitted, np.asarray(memmap, dtype=np.float32), y=y, k=4, batch_size=60)
    np.testing.assert_array_equal(atlas.top_samples, in_memory.top_samples)
    np.testing.assert_array_equal(atlas.class_examples, in_memory.class_examples)


def test_dense_stage_uses_the_selected_channels(data, fitted):
    X, y = data
    atlas = feature_atlas(fitted, X, y=y, k=3, stage="dense")
    maps = fitted.feature_maps(X, stage="dense")[:, fitted.selected_features_]
    _, top, peaks, examples = _reference(
        maps.astype(np.float64), 3, np.searchsorted(fitted.classes_, y), fitted.decision_function(X, stage="dense")
    )
    np.testing.assert_array_equal(atlas.top_samples, top)
    np.testing.assert_array_equal(atlas.peaks, peaks)
    np.testing.assert_array_equal(atlas.class_examples, examples)
    assert atlas.class_weights.shape == (len(fitted.classes_), len(fitted.selected_features_))
    assert atlas.accuracy == pytest.approx(np.mean(fitted.predict(X, stage="dense") == y))


@pytest.mark.filterwarnings("ignore:sldd_sparsify")
@pytest.mark.parametrize("selection", ["sldd", "qsenn"])
def test_comparison_systems(data, selection):
    X, y = data
    clf = QPMClassifier(**{**TINY, "sparse_epochs": 1}, selection=selection).fit(X, y)
    atlas = feature_atlas(clf, X, y=y, k=3, batch_size=25)
    np.testing.assert_array_equal(atlas.classes_of, clf.sparse_weight_.T != 0)
    np.testing.assert_allclose(atlas.class_weights, clf.sparse_weight_)
    _, _, _, examples = _reference(clf.feature_maps(X).astype(np.float64), 3, np.searchsorted(clf.classes_, y),
                                   clf.decision_function(X))  # fmt: skip
    np.testing.assert_array_equal(atlas.class_examples, examples)


def test_to_frame(data, fitted):
    X, _ = data
    atlas = feature_atlas(fitted.set_params(feature_names={int(fitted.selected_features_[0]): "crown"}), X, k=2)
    fitted.set_params(feature_names=None)
    frame = atlas.to_frame()
    assert list(frame.columns) == ["feature", "name", "rank", "sample", "score", "peak_row", "peak_col", "classes"]
    assert len(frame) == 2 * len(atlas.features)
    first = frame.iloc[0]
    assert first["name"] == "crown" and first["sample"] == atlas.top_samples[0, 0]
    assert first["classes"] == tuple(fitted.classes_[fitted.assignment_[:, 0] != 0].tolist())


def test_atlas_errors(data, fitted):
    X, y = data
    with pytest.raises(ValueError, match="k=61 is larger than the number of samples"):
        feature_atlas(fitted, X, k=61)
    with pytest.raises(NotFittedError, match="clf must be a fitted"):
        feature_atlas(QPMClassifier(), X)
    with pytest.raises(ValueError, match="y must be 1-D with one label per row"):
        feature_atlas(fitted, X, y=y[:-1])
    with pytest.raises(ValueError, match="not in classes_"):
        feature_atlas(fitted, X, y=np.full(len(X), 99))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        feature_atlas(fitted, X, batch_size=0)
    with pytest.raises(ValueError, match="stage must be"):
        feature_atlas(fitted, X, stage="both")
    with pytest.raises(ValueError, match="X must be an array of patch embeddings"):
        feature_atlas(fitted, X.tolist())


def test_peak_pixels_through_the_squash_resize():
    # a 4 x 4 grid on a 400 x 200 (width x height) photo: cells are 100 x 50 pixels
    xy = peak_pixels(np.array([[0, 0], [3, 1]]), (4, 4), np.array([400, 200]))
    np.testing.assert_allclose(xy, [[50, 25], [150, 175]])


@pytest.fixture(scope="module")
def pictures(data):
    """One non-square uint8 photo per row (squash-resized to 56 x 56 for the 4 x 4 grid)."""
    rng = np.random.RandomState(3)
    return rng.randint(0, 256, size=(len(data[0]), 30, 50, 3), dtype=np.uint8)


def test_plot_feature_shows_the_resized_images_and_peak_crops(data, fitted, pictures):
    pytest.importorskip("matplotlib")
    from qpm_sklearn.images import load_resized
    from qpm_sklearn.plotting import plot_feature
    from qpm_sklearn.report import crop_box

    X, y = data
    atlas = feature_atlas(fitted, X, y=y, k=3)
    feature = int(atlas.features[1])
    fig = plot_feature(atlas, feature, pictures)
    axes = np.array(fig.axes).reshape(2, 3)
    for rank in range(3):
        row = atlas.top_samples[1, rank]
        seen = load_resized(pictures[row], row, 56)  # 14 pixels per cell of the 4 x 4 grid
        np.testing.assert_array_equal(axes[0, rank].images[0].get_array(), seen)
        top, left, bottom, right = crop_box(atlas.peaks[1, rank], atlas.grid, 56)
        np.testing.assert_array_equal(axes[1, rank].images[0].get_array(), seen[top:bottom, left:right])
    assert f"channel {feature}" in fig._suptitle.get_text()
    # PIL images and files are read and resized the same way
    from PIL import Image

    as_pil = plot_feature(atlas, feature, [Image.fromarray(p) for p in pictures])
    np.testing.assert_array_equal(as_pil.axes[0].images[0].get_array(), axes[0, 0].images[0].get_array())
    # from the classifier directly, with X
    assert len(plot_feature(fitted, feature, pictures, X=X, k=2).axes) == 4


def test_plot_class_panel(data, fitted, pictures):
    pytest.importorskip("matplotlib")
    from qpm_sklearn.plotting import plot_class

    X, y = data
    atlas = feature_atlas(fitted, X, y=y, k=3)
    label = fitted.classes_[0]
    fig = plot_class(fitted, label, atlas, pictures, n_images=2)
    assert len(fig.axes) == fitted.n_per_class * 2
    names = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert [n.split("\n")[0] for n in names] == [f"feature {f}" for f in fitted.class_features(label)]
    with pytest.raises(ValueError, match="atlas has no class examples"):
        plot_class(fitted, label, feature_atlas(fitted, X, k=2), pictures)
    with pytest.raises(ValueError, match="label must be one of classes_"):
        plot_class(fitted, "nope", atlas, pictures)


def test_figure_errors(data, fitted, pictures):
    pytest.importorskip("matplotlib")
    from qpm_sklearn.plotting import plot_feature

    X, y = data
    atlas = feature_atlas(fitted, X, k=2)
    with pytest.raises(ValueError, match="one image per row"):
        plot_feature(atlas, int(atlas.features[0]), pictures[:-1])
    with pytest.raises(ValueError, match="image_size=50 is not a multiple of the grid side 4"):
        plot_feature(atlas, int(atlas.features[0]), pictures, image_size=50)
    with pytest.raises(ValueError, match="feature must be one of"):
        plot_feature(atlas, 10_000, pictures)
    with pytest.raises(ValueError, match="needs X"):
        plot_feature(fitted, int(atlas.features[0]), pictures)
    with pytest.raises(ValueError, match="preprocessing must be"):
        plot_feature(atlas, int(atlas.features[0]), pictures, preprocessing="auto")


# --------------------------------------------------------------------------- the HTML report
def _parse_report(path):
    """The page parsed by a strict HTML5 parser: (tree, ids, internal links, image sources)."""
    html5lib = pytest.importorskip("html5lib")
    text = path.read_text(encoding="utf-8")
    tree = html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(text)  # raises on any parse error
    ids = [el.get("id") for el in tree.iter() if el.get("id")]
    links = [el.get("href") for el in tree.iter("a") if el.get("href") is not None]
    sources = [el.get("src") for el in tree.iter("img")]
    return text, tree, ids, links, sources


def test_report_is_self_contained_and_consistent(data, fitted, pictures, tmp_path):
    import base64
    import io
    import re

    from PIL import Image

    from qpm_sklearn.report import write_report

    X, y = data
    atlas = feature_atlas(fitted, X, y=y, k=3)
    path = write_report(fitted, X, pictures, tmp_path / "report.html", y=y, k=3, class_images=2, atlas=atlas,
                        feature_names={int(fitted.selected_features_[0]): "blue <dot> & co"})  # fmt: skip
    text, tree, ids, links, sources = _parse_report(path)
    assert len(ids) == len(set(ids))
    assert links and all(link.startswith("#") and link[1:] in ids for link in links)
    assert not re.search(r"(?i)(https?:|ftp:|//[a-z0-9])", re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", "", text))
    n_classes, n_selected = fitted.assignment_.shape
    examples = (atlas.class_examples[:, :2] >= 0).sum(axis=1)
    assert len(sources) == 2 * 3 * n_selected + int((examples * fitted.assignment_.sum(axis=1)).sum())
    for src in sources:
        header, payload = src.split(",", 1)
        assert header == "data:image/jpeg;base64"
        with Image.open(io.BytesIO(base64.b64decode(payload))) as image:
            image.load()
            assert image.size == (96, 96)
    # every feature section shows its top rows, strongest first; every class its features and links
    for i, feature in enumerate(fitted.selected_features_):
        section = tree.find(f".//section[@id='feature-{feature}']")
        alts = [img.get("alt") for img in section.iter("img")]
        assert alts == [f"row {r}" for r in atlas.top_samples[i] for _ in range(2)]
    for c in range(n_classes):
        for feature in fitted.class_features(fitted.classes_[c]):
            assert f"#class-{c}-feature-{feature}" in links  # the assignment matrix's cell
    assert "blue &lt;dot&gt; &amp; co" in text and "<dot>" not in text
    assert f"sparse {fitted.score(X, y):.3f}" in text


def test_report_is_written_atomically_with_the_umask(data, fitted, pictures, tmp_path, monkeypatch):
    import os

    import qpm_sklearn.report as report

    X, y = data
    path = tmp_path / "report.html"
    path.write_text("old report")
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    original = report._data_uri
    monkeypatch.setattr(report, "_data_uri", interrupted)
    with pytest.raises(KeyboardInterrupt):
        report.write_report(fitted, X, pictures, path, k=2)
    monkeypatch.setattr(report, "_data_uri", original)
    assert path.read_text() == "old report" and sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]

    def failing_write(handle):
        handle.write(b"<!DOCTYPE html>")
        raise KeyboardInterrupt  # Ctrl-C while the bytes go to disk

    monkeypatch.setattr(report, "replace_atomically", lambda p, write: original_replace(p, failing_write))
    original_replace = __import__("qpm_sklearn._atomic", fromlist=["x"]).replace_atomically
    with pytest.raises(KeyboardInterrupt):
        report.write_report(fitted, X, pictures, path, k=2)
    assert path.read_text() == "old report" and sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    monkeypatch.undo()

    previous = os.umask(0o027)
    try:
        report.write_report(fitted, X, pictures, path, k=2)
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o640


def test_report_errors(data, fitted, pictures, tmp_path):
    from qpm_sklearn.report import write_report

    X, y = data
    with pytest.raises(ValueError, match=r"images must hold one image per row of X \(60\); got 59"):
        write_report(fitted, X, pictures[:-1], tmp_path / "r.html")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(fitted, X, pictures, tmp_path / "missing" / "r.html")
    with pytest.raises(ValueError, match="k=61 is larger"):
        write_report(fitted, X, pictures, tmp_path / "r.html", k=61)
    with pytest.raises(NotFittedError):
        write_report(QPMClassifier(), X, pictures, tmp_path / "r.html")
    with pytest.raises(ValueError, match="alignment must have shape"):
        write_report(fitted, X, pictures, tmp_path / "r.html", k=2, alignment=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="image_size=30 is not a multiple"):
        write_report(fitted, X, pictures, tmp_path / "r.html", k=2, image_size=30)
    wide = StubClassifier(np.ones((4, 2, 2, 3)))  # a 2 x 3 grid: no square image matches it
    with pytest.raises(ValueError, match=r"grid \(2, 3\) is not square"):
        write_report(wide, _ids(4), pictures[:4], tmp_path / "r.html", k=2)
    assert not any(tmp_path.iterdir())
