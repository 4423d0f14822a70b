"""Input containers as scikit-learn users hand them over, and EXIF orientation."""

import numpy as np
import pytest
from PIL import Image, ImageOps

from qpm_sklearn import images as im

SIZE = 28


def _paths(folder, n=3):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        paths.append(folder / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)).save(paths[-1])
    return [str(path) for path in paths]


def test_one_column_dataframe_and_series_of_paths(tmp_path):
    pd = pytest.importorskip("pandas")
    paths = _paths(tmp_path)
    frame = pd.DataFrame({"path": paths}, index=[10, 20, 30])  # not a 0..n-1 index
    assert im.check_images(frame) == paths  # the column's values, not the column label
    assert im.check_images(frame["path"]) == paths
    with pytest.raises(ValueError, match=r"DataFrame with 2 columns \['path', 'label'\].*X\['path'\]"):
        im.check_images(frame.assign(label=[0, 1, 0]))


def test_arrays_of_paths_of_shape_n_and_n_by_1(tmp_path):
    paths = _paths(tmp_path)
    for array in (np.array(paths), np.array(paths, dtype=object), np.array(paths, dtype=object)[:, None]):
        checked = im.check_images(array)
        assert checked == paths and all(type(item) is str for item in checked)
    with pytest.raises(ValueError, match=r"shape \(n,\) or \(n, 1\); got shape \(1, 3\)"):
        im.check_images(np.array(paths, dtype=object)[None, :])


def test_embedder_takes_a_dataframe_column_of_paths(tiny_backbone, tmp_path):
    pd = pytest.importorskip("pandas")
    from qpm_sklearn import Dinov2Embedder

    paths = _paths(tmp_path)
    embedder = Dinov2Embedder(tiny_backbone, device="cpu", image_size=SIZE, output="cls", n_jobs=1)
    expected = embedder.transform(paths)
    np.testing.assert_array_equal(embedder.transform(pd.DataFrame({"file": paths})), expected)
    np.testing.assert_array_equal(embedder.transform(np.array(paths, dtype=object)[:, None]), expected)


def _exif_jpeg(path, pixels, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation  # the Orientation tag
    Image.fromarray(pixels).save(path, quality=95, exif=exif)
    return path


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_unless_turned_off(tmp_path, orientation):
    pixels = np.random.default_rng(orientation).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    path = _exif_jpeg(tmp_path / "photo.jpg", pixels, orientation)
    with Image.open(path) as stored:
        stored_pixels = np.asarray(stored.convert("RGB"))  # what a pipeline ignoring EXIF reads
    # the expected image, by hand: 3 = rotated 180°, 6 = 90° clockwise, 8 = 90° counter-clockwise
    rotations = {3: 2, 6: -1, 8: 1}
    expected = np.rot90(stored_pixels, k=rotations[orientation])
    np.testing.assert_array_equal(np.asarray(im.read_image(path)), expected)
    np.testing.assert_array_equal(np.asarray(im.read_image(path, exif_transpose=False)), stored_pixels)
    with Image.open(path) as stored:
        np.testing.assert_array_equal(np.asarray(ImageOps.exif_transpose(stored)), expected)
    # through the batch decoder, in threads and in worker processes alike
    for processes in (False, True):
        (upright,) = im.decode_batches([path], [np.arange(1)], SIZE, n_jobs=2, processes=processes)
        (as_stored,) = im.decode_batches([path], [np.arange(1)], SIZE, exif_transpose=False, n_jobs=2, processes=processes)
        np.testing.assert_array_equal(upright[0], im.load_resized(Image.fromarray(expected), 0, SIZE))
        np.testing.assert_array_equal(as_stored[0], im.load_resized(Image.fromarray(stored_pixels), 0, SIZE))


def test_exif_transpose_is_an_embedder_parameter_and_part_of_the_cache_key(tiny_backbone, tmp_path):
    from qpm_sklearn import Dinov2Embedder

    pixels = np.random.default_rng(0).integers(0, 256, (14, 28, 3), dtype=np.uint8)
    path = str(_exif_jpeg(tmp_path / "photo.jpg", pixels, 6))
    with Image.open(path) as stored:
        stored_pixels = np.asarray(stored.convert("RGB"))
    params = dict(device="cpu", image_size=SIZE, output="cls", n_jobs=1)
    upright = Dinov2Embedder(tiny_backbone, **params).transform([np.rot90(stored_pixels, k=-1).copy()])
    as_stored = Dinov2Embedder(tiny_backbone, **params).transform([stored_pixels])
    cache = tmp_path / "cache"
    on = Dinov2Embedder(tiny_backbone, embedding_cache=cache, **params).transform([path])
    off = Dinov2Embedder(tiny_backbone, embedding_cache=cache, exif_transpose=False, **params).transform([path])
    np.testing.assert_allclose(on, upright, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(off, as_stored, rtol=2e-3, atol=2e-3)
    assert not np.allclose(on, off, atol=1e-2)
    with pytest.raises(ValueError, match="exif_transpose"):
        Dinov2Embedder(tiny_backbone, exif_transpose="yes", **params).transform([path])


def test_decode_batches_takes_non_consecutive_rows_of_an_array():
    X = np.random.default_rng(0).integers(0, 256, (6, SIZE, SIZE, 3), dtype=np.uint8)
    batches = [np.array([0, 1]), np.array([3, 5])]  # e.g. the rows of two damaged cache blocks
    decoded = list(im.decode_batches(X, batches, SIZE))
    np.testing.assert_array_equal(decoded[0], X[[0, 1]])
    np.testing.assert_array_equal(decoded[1], X[[3, 5]])
