"""Image reading, conversion, resizing and normalisation (qpm_sklearn.images)."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from qpm_sklearn import images as im

CUB_MEAN = (0.4853, 0.4964, 0.4295)
CUB_STD = (0.2300, 0.2258, 0.2625)


def _rgb(seed=0, shape=(9, 13, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ------------------------------------------------------------------------------------------------
# The container
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "X, error, words",
    [
        ("a.png", TypeError, "single str"),
        (Image.new("RGB", (4, 4)), TypeError, "Wrap it in a list"),
        ([], ValueError, "empty"),
        (np.zeros((0, 8, 8, 3), np.uint8), ValueError, "empty"),
        (np.zeros((8, 8), np.uint8), ValueError, "(n, H, W, 3)"),
        (np.zeros((2, 8, 8, 3, 1), np.uint8), ValueError, "shape (2, 8, 8, 3, 1)"),
        (np.zeros((2, 8, 8, 4), np.uint8), ValueError, "(n, H, W, 3)"),
        (np.zeros((2, 8, 0, 3), np.uint8), ValueError, "empty spatial"),
        (np.zeros((2, 8, 8, 3), np.float32), TypeError, "dtype float32"),
        (["a.png", 3], TypeError, "X[1]"),
        ([np.zeros((4, 4, 3), np.float64)], TypeError, "X[0]"),
        ([np.zeros((4, 4, 2), np.uint8)], ValueError, "X[0]"),
        (42, TypeError, "int"),
    ],
)
def test_check_images_rejects_bad_containers(X, error, words):
    with pytest.raises(error) as info:
        im.check_images(X)
    assert words in str(info.value)


def test_check_images_accepts_sequences_and_arrays(tmp_path):
    paths = np.array([str(tmp_path / "a.png"), str(tmp_path / "b.png")])  # 1-d array of str
    assert im.check_images(paths) == list(paths)
    array = np.zeros((2, 5, 5), np.uint8)
    assert im.check_images(array) is array
    mixed = (tmp_path / "a.png", Image.new("L", (3, 3)), np.zeros((3, 3, 3), np.uint8))
    assert len(im.check_images(mixed)) == 3
    assert len(im.check_images(iter(["x.png"]))) == 1  # any iterable is materialised


# ------------------------------------------------------------------------------------------------
# Reading and converting
# ------------------------------------------------------------------------------------------------


def test_missing_and_corrupt_files_are_named(tmp_path):
    missing = tmp_path / "missing.jpg"
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        im.read_image(missing, 3)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(ValueError, match=r"X\[5\].*corrupt.png"):
        im.read_image(str(corrupt), 5)
    truncated = tmp_path / "truncated.png"
    Image.fromarray(_rgb(shape=(64, 64, 3))).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.png"):
        im.read_image(truncated)


def test_check_files_exist_names_the_first_missing(tmp_path):
    Image.fromarray(_rgb()).save(tmp_path / "here.png")
    im.check_files_exist([tmp_path / "here.png", Image.new("RGB", (2, 2)), _rgb()])
    with pytest.raises(FileNotFoundError, match=r"X\[2\].*gone.png"):
        im.check_files_exist([tmp_path / "here.png", _rgb(), str(tmp_path / "gone.png"), tmp_path / "also.png"])


def test_file_round_trip_is_lossless(tmp_path):
    pixels = _rgb()
    Image.fromarray(pixels).save(tmp_path / "x.png")
    assert np.array_equal(np.asarray(im.read_image(tmp_path / "x.png")), pixels)


def test_gray_rgba_palette_cmyk_and_16bit_conversions(tmp_path):
    rgb = _rgb()
    gray = rgb[..., 0]
    assert np.array_equal(np.asarray(im.to_rgb(Image.fromarray(gray))), np.repeat(gray[..., None], 3, -1))
    # RGBA: alpha is dropped, colour kept.
    rgba = np.concatenate([rgb, _rgb(1)[..., :1]], -1)
    assert np.array_equal(np.asarray(im.to_rgb(Image.fromarray(rgba))), rgb)
    # Palette (with transparency, saved and reloaded): colours are the palette lookup, no warning.
    palette = _rgb(2, (256, 3))
    indices = _rgb(3, (9, 13))
    p_image = Image.fromarray(indices, mode="P")
    p_image.putpalette(palette.ravel().tolist())
    p_image.info["transparency"] = b"\x00" * 256
    p_image.save(tmp_path / "p.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        converted = np.asarray(im.read_image(tmp_path / "p.png"))
    assert np.array_equal(converted, palette[indices])
    # CMYK: PIL's own formula (naive inversion), independent of our code path.
    cmyk = Image.fromarray(rgb).convert("CMYK")
    c, m, y, k = (np.asarray(cmyk, dtype=np.int64)[..., i] for i in range(4))
    expected = np.stack([255 - np.minimum(255, v + k) for v in (c, m, y)], -1)
    assert np.array_equal(np.asarray(im.to_rgb(cmyk)), expected)
    # LA: luminance replicated.
    la = Image.fromarray(np.stack([gray, gray[::-1]], -1), mode="LA")
    assert np.array_equal(np.asarray(im.to_rgb(la))[..., 1], gray)
    # 16-bit gray through a PNG file: mapped linearly 0..65535 -> 0..255.
    deep = (np.arange(9 * 13, dtype=np.int64).reshape(9, 13) * 509) % 65536
    Image.fromarray(deep.astype(np.uint16)).save(tmp_path / "deep.png")
    out = np.asarray(im.read_image(tmp_path / "deep.png"))[..., 0].astype(np.int64)
    assert np.array_equal(out, np.round(deep.astype(np.float64) * 255 / 65535).astype(np.int64))
    assert out.max() > 200  # not clipped to 255 everywhere nor divided into black


def test_unconvertible_modes_are_refused_with_the_name():
    with pytest.raises(ValueError, match="mode 'F'"):
        im.to_rgb(Image.fromarray(np.ones((4, 4), np.float32)), "X[2]")
    too_wide = Image.fromarray(np.full((4, 4), 70000, np.int32), mode="I")
    with pytest.raises(ValueError, match=r"X\[7\].*0\.\.65535"):
        im.read_image(too_wide, 7)


def _jpegs(folder, n, shape=(30, 41, 3)):
    paths = []
    for i in range(n):
        paths.append(folder / f"{i}.jpg")
        Image.fromarray(_rgb(i, shape)).save(paths[-1], quality=85)
    return paths


def test_decode_batches_in_worker_processes_match_serial_decoding(tmp_path, monkeypatch):
    from joblib.externals import loky

    paths = _jpegs(tmp_path, 11)
    serial = np.stack([im.load_resized(p, i, 14, "bilinear") for i, p in enumerate(paths)])
    executors = []

    def recording(**kwargs):
        executors.append(kwargs)
        return real(**kwargs)

    real = loky.get_reusable_executor
    monkeypatch.setattr(loky, "get_reusable_executor", recording)
    batches = [np.arange(0, 4), np.arange(4, 5), np.arange(5, 11)]
    for n_jobs, uses_processes in ((2, True), (1, False)):
        executors.clear()
        decoded = list(im.decode_batches(paths, batches, 14, "bilinear", n_jobs=n_jobs, prefetch=1))
        assert [len(d) for d in decoded] == [4, 1, 6]
        assert np.array_equal(np.concatenate(decoded), serial)
        assert bool(executors) == uses_processes
    # A mix of files and in-memory images stays in this process (threads).
    executors.clear()
    mixed = [paths[0], Image.open(paths[1]), np.asarray(Image.open(paths[2]))]
    (decoded,) = im.decode_batches(mixed, [np.arange(3)], 14, "bilinear", n_jobs=2)
    assert np.array_equal(decoded, serial[:3]) and not executors


def _decode_all(paths):
    return np.concatenate(list(im.decode_batches(paths, [np.arange(0, 2), np.arange(2, len(paths))], 14, n_jobs=2)))


def test_decode_batches_works_inside_a_daemonic_worker(tmp_path):
    # multiprocessing pools' (and DataLoader's) workers are daemons, which may not have children.
    import multiprocessing

    paths = _jpegs(tmp_path, 5)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        decoded = pool.apply(_decode_all, (paths,))
    assert np.array_equal(decoded, np.stack([im.load_resized(p, 0, 14) for p in paths]))


def test_decode_batches_names_a_corrupt_file_from_a_worker_and_stops_cleanly(tmp_path):
    paths = _jpegs(tmp_path, 6)
    paths[4].write_bytes(b"not a jpeg")
    batches = [np.arange(0, 2), np.arange(2, 4), np.arange(4, 6)]
    with pytest.raises(ValueError, match=r"X\[4\].*4\.jpg"):
        list(im.decode_batches(paths, batches, 14, n_jobs=2))
    first = im.decode_batches(paths, batches, 14, n_jobs=2)
    assert next(first).shape == (2, 14, 14, 3)
    first.close()  # the consumer stops early: queued work is dropped, nothing hangs


def test_worker_processes_decode_under_this_process_pillow_settings(tmp_path, monkeypatch):
    from PIL import ImageFile

    paths = _jpegs(tmp_path, 3)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2])  # truncated
    batches = [np.arange(3)]
    for processes in (True, False):
        with pytest.raises(ValueError, match=r"X\[1\].*1\.jpg"):
            list(im.decode_batches(paths, batches, 14, n_jobs=2, processes=processes))
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    (in_workers,) = im.decode_batches(paths, batches, 14, n_jobs=2, processes=True)
    (in_threads,) = im.decode_batches(paths, batches, 14, n_jobs=2, processes=False)
    assert np.array_equal(in_workers, in_threads)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 30 x 41 px is a "decompression bomb" now
    for processes in (True, False):
        with pytest.raises(ValueError, match=r"X\[0\].*0\.jpg"):
            list(im.decode_batches(paths, batches, 14, n_jobs=2, processes=processes))


def test_worker_processes_resolve_relative_paths_in_the_current_directory(tmp_path, monkeypatch):
    # The reusable workers keep the directory they started in; the caller's must count.
    for name, seed in (("a", 0), ("b", 10)):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(_rgb(seed + i, (14, 14, 3))).save(tmp_path / name / f"{i}.png")
    for name in ("a", "b"):
        monkeypatch.chdir(tmp_path / name)
        (decoded,) = im.decode_batches(["0.png", "1.png"], [np.arange(2)], 14, n_jobs=2, processes=True)
        assert np.array_equal(decoded, np.stack([np.asarray(Image.open(f"{i}.png")) for i in range(2)]))


def test_decode_batches_slices_arrays_at_the_target_size_without_copying():
    X = _rgb(0, (5, 14, 14, 3))
    batches = [np.arange(0, 3), np.arange(3, 5)]
    decoded = list(im.decode_batches(X, batches, 14))
    assert all(np.shares_memory(d, X) for d in decoded)
    assert np.array_equal(np.concatenate(decoded), X)
    X.flags.writeable = False  # read-only arrays (memory maps) are sliced without a copy too
    assert all(np.shares_memory(d, X) for d in im.decode_batches(X, batches, 14))
    gray = X[..., 0]
    assert np.array_equal(np.concatenate(list(im.decode_batches(gray, batches, 14))), np.repeat(gray[..., None], 3, -1))
    resized = np.concatenate(list(im.decode_batches(X, batches, 7, n_jobs=2)))
    assert np.array_equal(resized, np.stack([im.load_resized(x, 0, 7) for x in X]))


def test_decoding_workers_import_neither_torch_nor_sklearn():
    import subprocess
    import sys

    code = "import sys, qpm_sklearn.images; print(sorted({'torch', 'sklearn'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------------
# Resizing and normalisation against numpy hand computations
# ------------------------------------------------------------------------------------------------


def test_squash_resize_uses_bicubic_or_bilinear_without_crop():
    pixels = _rgb(shape=(20, 50, 3))
    bicubic = im.load_resized(pixels, 0, 28)
    assert bicubic.shape == (28, 28, 3) and bicubic.dtype == np.uint8
    assert np.array_equal(bicubic, np.asarray(Image.fromarray(pixels).resize((28, 28), Image.BICUBIC)))
    bilinear = im.load_resized(pixels, 0, 28, "bilinear")
    assert np.array_equal(bilinear, np.asarray(Image.fromarray(pixels).resize((28, 28), Image.BILINEAR)))
    # A left/right split image stays split at the middle: the aspect ratio is squashed, not cropped.
    split = np.zeros((10, 40, 3), np.uint8)
    split[:, 20:] = 255
    out = im.load_resized(split, 0, 28)
    assert out[:, :13].max() == 0 and out[:, 15:].min() == 255
    # Smaller than a patch: simply upsampled.
    assert im.load_resized(_rgb(shape=(2, 3, 3)), 0, 14).shape == (14, 14, 3)
    # Already the right size: untouched.
    exact = _rgb(shape=(28, 28, 3))
    assert np.array_equal(im.load_resized(exact, 0, 28), exact)


@pytest.mark.parametrize("resample", ["paper", "imagenet", "BICUBIC", 3, None])
def test_resizing_refuses_what_is_not_a_pil_filter_name(resample):
    with pytest.raises(ValueError, match=r"resample must be one of the PIL filters .*bicubic.*; got"):
        im.load_resized(_rgb(shape=(20, 50, 3)), 0, 28, resample)
    with pytest.raises(ValueError, match="resample must be one of the PIL filters"):
        list(im.decode_batches([_rgb(shape=(20, 50, 3))], [np.arange(1)], 28, resample))


def test_embedder_preprocessing_refuses_a_filter_name(tiny_backbone):
    from qpm_sklearn import PatchEmbedder

    with pytest.raises(ValueError, match=r"'preprocessing' parameter .*'imagenet'.*Got 'bicubic'"):
        PatchEmbedder(str(tiny_backbone), preprocessing="bicubic").fit(None)


def _hand_imagenet(batch, mean=im.IMAGENET_MEAN, std=im.IMAGENET_STD):
    x = batch.astype(np.float64) / 255.0
    x = (x - np.array(mean)) / np.array(std)
    return x.transpose(0, 3, 1, 2)


def _hand_paper(batch, mean, std):
    x = _hand_imagenet(batch, mean, std)
    out = np.empty_like(x)
    for i, image in enumerate(x):
        out[i] = np.clip((image - image.min()) / (image.max() - image.min()), 0, 1)
    return out


def test_normalize_imagenet_matches_numpy():
    batch = _rgb(shape=(3, 7, 7, 3))
    got = im.normalize(torch.from_numpy(batch))
    assert got.dtype == torch.float32 and got.shape == (3, 3, 7, 7)
    np.testing.assert_allclose(got.numpy(), _hand_imagenet(batch), atol=1e-5)
    custom = im.normalize(torch.from_numpy(batch), mean=CUB_MEAN, std=CUB_STD)
    np.testing.assert_allclose(custom.numpy(), _hand_imagenet(batch, CUB_MEAN, CUB_STD), atol=1e-5)


def test_normalize_paper_matches_numpy_and_never_nans():
    batch = _rgb(shape=(3, 7, 7, 3))
    got = im.normalize(torch.from_numpy(batch), preprocessing="paper", mean=CUB_MEAN, std=CUB_STD).numpy()
    np.testing.assert_allclose(got, _hand_paper(batch, CUB_MEAN, CUB_STD), atol=1e-5)
    assert got.min() == 0.0 and got.max() == pytest.approx(1.0)
    flat = np.full((1, 5, 5, 3), 128, np.uint8)
    constant = im.normalize(torch.from_numpy(flat), preprocessing="paper", mean=(0.5,) * 3, std=(0.2,) * 3)
    assert torch.isfinite(constant).all() and constant.abs().max() == 0


def test_decode_and_normalize_end_to_end(tmp_path):
    arrays = [_rgb(0, (30, 20, 3)), _rgb(1, (28, 28, 3))]
    Image.fromarray(arrays[0]).save(tmp_path / "a.png")
    (pixels,) = im.decode_batches([tmp_path / "a.png", arrays[1]], [np.arange(2)], 28, "bilinear", n_jobs=2)
    got = im.normalize(torch.from_numpy(pixels), preprocessing="paper", mean=CUB_MEAN, std=CUB_STD)
    resized = np.stack([np.asarray(Image.fromarray(a).resize((28, 28), Image.BILINEAR)) for a in arrays])
    np.testing.assert_allclose(got.numpy(), _hand_paper(resized, CUB_MEAN, CUB_STD), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(preprocessing="paper"), "needs the dataset's mean and std"),
        (dict(preprocessing="paper", mean=CUB_MEAN), "needs the dataset's mean and std"),
        (dict(preprocessing="imagenet", mean=(0.5, 0.5)), "mean must be 3 finite"),
        (dict(preprocessing="imagenet", mean=[[0.5, 0.5, 0.5]]), "mean must be 3 finite"),
        (dict(preprocessing="imagenet", std=(0.2, 0.0, 0.2)), "std must be positive"),
        (dict(preprocessing="imagenet", std=(0.2, np.nan, 0.2)), "std must be 3 finite"),
        (dict(preprocessing="zca"), "preprocessing must be one of"),
    ],
)
def test_statistics_are_validated(kwargs, words):
    kwargs = {"mean": None, "std": None, **kwargs}
    with pytest.raises(ValueError, match=words):
        im.resolve_statistics(kwargs["preprocessing"], kwargs["mean"], kwargs["std"])


def test_image_key_follows_content(tmp_path):
    pixels = _rgb()
    changed = pixels.copy()
    changed[0, 0, 0] ^= 1
    assert im.image_key(pixels) == im.image_key(pixels.copy())
    assert im.image_key(pixels) != im.image_key(changed)
    assert im.image_key(Image.fromarray(pixels)) != im.image_key(Image.fromarray(changed))
    path = tmp_path / "x.png"
    Image.fromarray(pixels).save(path)
    before = im.image_key(path)
    assert im.image_key(str(path)) == before
    Image.fromarray(changed).save(path)
    assert im.image_key(path) != before
