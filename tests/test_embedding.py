"""Dinov2Embedder against the backbone's own last_hidden_state, plus inputs, errors, cache, OOM."""

import json
import pickle
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from qpm_sklearn import Dinov2Embedder
from qpm_sklearn import images as im

SIZE = 28  # tiny backbones use patch 14: a 2x2 grid
CUB_MEAN = (0.4853, 0.4964, 0.4295)
CUB_STD = (0.2300, 0.2258, 0.2625)


def _cpu(model, **params):
    """The embedder on the CPU in float32, so that comparisons hold on a GPU machine too."""
    return Dinov2Embedder(model, **{"device": "cpu", **params})


def _images(n=5, seed=0, shape=(30, 41, 3)):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def _hand_pixel_values(images, size, preprocessing="imagenet", mean=None, std=None):
    """Independent preprocessing: PIL resize + numpy normalisation (docs/method.md#preprocessing)."""
    resample = Image.BILINEAR if preprocessing == "paper" else Image.BICUBIC
    mean = np.array(mean or (0.485, 0.456, 0.406))
    std = np.array(std or (0.229, 0.224, 0.225))
    out = []
    for image in images:
        pil = Image.fromarray(image).convert("RGB").resize((size, size), resample)
        x = (np.asarray(pil, dtype=np.float64) / 255.0 - mean) / std
        if preprocessing == "paper":
            x = np.clip((x - x.min()) / (x.max() - x.min()), 0, 1)
        out.append(x.transpose(2, 0, 1))
    return torch.tensor(np.stack(out), dtype=torch.float32)


def _hidden_states(folder, pixel_values):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(pixel_values=pixel_values).last_hidden_state.numpy()


_ORIGINAL_FORWARD = Dinov2Embedder._forward


class ForwardCounter:
    """Replaces Dinov2Embedder._forward (the original, even when patched twice): counts images, may fail."""

    def __init__(self, monkeypatch, fail=None):
        self.images, self.calls, self.fail = 0, 0, fail
        def counting(embedder, backbone, pixel_values, kwargs):
            if self.fail is not None:
                self.fail(self, len(pixel_values))
            self.calls += 1
            self.images += len(pixel_values)
            return _ORIGINAL_FORWARD(embedder, backbone, pixel_values, kwargs)

        monkeypatch.setattr(Dinov2Embedder, "_forward", counting)


# ------------------------------------------------------------------------------------------------
# Token layout and preprocessing against an independent computation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("registers", [4, 0])
def test_outputs_match_last_hidden_state(tiny_backbone, tiny_backbone_noreg, registers):
    folder = tiny_backbone if registers else tiny_backbone_noreg
    X = _images(3)
    hidden = _hidden_states(folder, _hand_pixel_values(X, 56))  # (3, 1 + R + 16, 32)
    assert hidden.shape == (3, 1 + registers + 16, 32)
    patch = _cpu(folder, image_size=56).transform(X)
    assert patch.shape == (3, 4, 4, 32) and patch.dtype == np.float32
    for row in range(4):
        for col in range(4):  # row-major grid after [CLS, registers]
            np.testing.assert_allclose(patch[:, row, col], hidden[:, 1 + registers + row * 4 + col], atol=1e-4)
    cls = _cpu(folder, image_size=56, output="cls").transform(X)
    np.testing.assert_allclose(cls, hidden[:, 0], atol=1e-4)
    mean = _cpu(folder, image_size=56, output="mean").transform(X)
    np.testing.assert_allclose(mean, hidden[:, 1 + registers :].mean(1), atol=1e-4)
    if registers:  # the registers really are dropped, not averaged into the patches
        assert not np.allclose(mean, hidden[:, 1:].mean(1), atol=1e-3)


def test_paper_preprocessing_matches_hand_computation(tiny_backbone):
    X = _images(2, seed=1)
    hidden = _hidden_states(tiny_backbone, _hand_pixel_values(X, SIZE, "paper", CUB_MEAN, CUB_STD))
    got = _cpu(tiny_backbone, image_size=SIZE, preprocessing="paper", mean=CUB_MEAN, std=CUB_STD).transform(X)
    np.testing.assert_allclose(got.reshape(2, 4, 32), hidden[:, 5:], atol=1e-4)
    imagenet = _cpu(tiny_backbone, image_size=SIZE).transform(X)
    assert not np.allclose(got, imagenet, atol=1e-2)


# ------------------------------------------------------------------------------------------------
# Input kinds
# ------------------------------------------------------------------------------------------------


def test_every_input_kind_gives_the_same_embeddings(tiny_backbone, tmp_path):
    X = _images(4)
    paths = []
    for i, image in enumerate(X):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    embedder = _cpu(tiny_backbone, image_size=SIZE, batch_size=3, n_jobs=2)
    reference = embedder.transform(X)
    assert reference.shape == (4, 2, 2, 32)
    assert np.array_equal(embedder.transform(paths), reference)
    assert np.array_equal(embedder.transform([str(p) for p in paths]), reference)
    assert np.array_equal(embedder.transform([Image.fromarray(x) for x in X]), reference)
    mixed = [paths[0], Image.fromarray(X[1]), X[2], str(paths[3])]
    assert np.array_equal(embedder.transform(mixed), reference)
    # Gray arrays (n, H, W) equal the same images given as RGB with equal channels.
    gray = X[..., 0]
    assert np.array_equal(embedder.transform(gray), embedder.transform(np.repeat(gray[..., None], 3, -1)))
    # RGBA / palette / 16-bit files are converted, not refused.
    Image.fromarray(np.concatenate([X[0], X[1][..., :1]], -1)).save(tmp_path / "rgba.png")
    Image.fromarray(X[0]).convert("P").save(tmp_path / "p.png")
    Image.fromarray(X[0][..., 0].astype(np.uint16) * 257).save(tmp_path / "deep.png")
    converted = embedder.transform([tmp_path / "rgba.png", tmp_path / "p.png", tmp_path / "deep.png"])
    # Other batches (other images beside it, another batch size): float32 kernels may block the sums
    # differently per batch shape, so the last bits differ (2.4e-7 seen on an AMD EPYC; float32 eps is
    # 1.2e-7, values are O(1)); 1e-5 is ~100 ulps, far below what a wrong conversion changes (>1e-2).
    np.testing.assert_allclose(converted[0], reference[0], rtol=1e-5, atol=1e-5)
    assert np.isfinite(converted).all()
    np.testing.assert_allclose(converted[2], embedder.transform(gray[:1])[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("output, shape", [("patch", (3, 2, 2, 32)), ("cls", (3, 32)), ("mean", (3, 32))])
def test_float16_output(tiny_backbone, output, shape):
    X = _images(3)
    full = _cpu(tiny_backbone, image_size=SIZE, output=output).transform(X)
    half = _cpu(tiny_backbone, image_size=SIZE, output=output, output_dtype="float16").transform(X)
    assert half.dtype == np.float16 and half.shape == full.shape == shape
    np.testing.assert_allclose(half.astype(np.float32), full, rtol=2e-3, atol=2e-3)


def test_small_images_and_batches_of_one(tiny_backbone):
    X = _images(3, shape=(5, 3, 3))  # smaller than one patch
    embedder = _cpu(tiny_backbone, image_size=SIZE, batch_size=1, output="cls")
    batched = clone(embedder).set_params(batch_size=64).transform(X)
    np.testing.assert_allclose(embedder.transform(X), batched, atol=1e-5)


def test_many_batches_of_files_and_arrays_keep_their_rows(tiny_backbone, tmp_path):
    # 11 images in batches of 2: several batches decoded ahead (in worker processes for the
    # files) and written behind; every row must land where its image is.
    X = np.stack([im.load_resized(x, 0, SIZE) for x in _images(11, seed=3)])
    paths = []
    for i, image in enumerate(X):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    one_batch = _cpu(tiny_backbone, image_size=SIZE, batch_size=11).transform(X)
    read_only = X.copy()
    read_only.flags.writeable = False
    for inputs in (X, paths, read_only):
        batched = _cpu(tiny_backbone, image_size=SIZE, batch_size=2, n_jobs=2).transform(inputs)
        np.testing.assert_allclose(batched, one_batch, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


def test_input_errors_name_the_culprit(tiny_backbone, tmp_path):
    embedder = _cpu(tiny_backbone, image_size=SIZE)
    good = tmp_path / "good.png"
    Image.fromarray(_images(1)[0]).save(good)
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        embedder.transform([good, tmp_path / "nope.jpg"])
    (tmp_path / "bad.jpg").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=r"X\[1\].*bad.jpg"):
        embedder.transform([good, tmp_path / "bad.jpg"])
    with pytest.raises(ValueError, match="empty"):
        embedder.transform([])
    with pytest.raises(ValueError, match=r"\(n, H, W, 3\)"):
        embedder.transform(np.zeros((2, 3, 28, 28, 3), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        embedder.transform(np.zeros((2, 28, 28, 3), np.float32))


def test_parameter_errors(tiny_backbone, tmp_path):
    X = _images(1)
    with pytest.raises(ValueError, match="output"):
        _cpu(tiny_backbone, output="tokens").transform(X)
    with pytest.raises(ValueError, match=r"image_size.*patch size 14"):
        _cpu(tiny_backbone, image_size=30).transform(X)
    with pytest.raises(ValueError, match="image_size"):
        _cpu(tiny_backbone, image_size=0).transform(X)
    with pytest.raises(ValueError, match="mean and std"):
        _cpu(tiny_backbone, image_size=SIZE, preprocessing="paper").transform(X)
    with pytest.raises(ValueError, match="batch_size"):
        _cpu(tiny_backbone, batch_size=0).fit(None)
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        _cpu(str(missing), image_size=SIZE).transform(X)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        _cpu(str(tmp_path / "empty"), image_size=SIZE).transform(X)
    # conftest sets HF_HUB_OFFLINE: an uncached hub id fails like a network failure would.
    with pytest.raises(OSError, match="local_files_only=True") as info:
        _cpu("qpm-sklearn-tests/no-such-model", image_size=SIZE).transform(X)
    assert "qpm-sklearn-tests/no-such-model" in str(info.value)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.lists(st.integers(0, 30), min_size=0, max_size=5),
    dtype=st.sampled_from([np.uint8, np.float32, np.int64, np.bool_, np.uint16]),
    seed=st.integers(0, 2**16),
)
def test_random_arrays_give_a_result_or_a_clean_error(tiny_backbone, shape, dtype, seed):
    X = (np.random.default_rng(seed).random(shape) * 255).astype(dtype)
    embedder = _cpu(tiny_backbone, image_size=SIZE, output="mean", batch_size=4)
    try:
        result = embedder.transform(X)
    except (ValueError, TypeError):
        valid = dtype == np.uint8 and len(shape) in (3, 4) and 0 not in shape and (len(shape) == 3 or shape[3] == 3)
        assert not valid
        return
    assert dtype == np.uint8 and result.shape == (shape[0], 32) and np.isfinite(result).all()


# ------------------------------------------------------------------------------------------------
# scikit-learn behaviour, pickling, quietness
# ------------------------------------------------------------------------------------------------


def test_pipeline_clone_and_stateless_fit(tiny_backbone):
    X, y = _images(6), np.array([0, 1] * 3)
    embedder = _cpu(tiny_backbone, image_size=SIZE, output="cls")
    assert embedder.fit(X, y) is embedder
    assert clone(embedder).get_params() == embedder.get_params()
    pipe = make_pipeline(embedder, LogisticRegression(max_iter=200)).fit(X, y)
    assert pipe.predict(X).shape == (6,)
    patch_pipe = make_pipeline(
        _cpu(tiny_backbone, image_size=SIZE), FunctionTransformer(lambda Z: Z.reshape(len(Z), -1))
    )
    assert patch_pipe.fit_transform(X, y).shape == (6, 4 * 32)


def test_pickle_drops_the_weights(tiny_backbone):
    X = _images(3)
    embedder = _cpu(tiny_backbone, image_size=SIZE)
    before = embedder.transform(X)
    blob = pickle.dumps(embedder)
    assert len(blob) < 5_000  # the tiny model alone is ~100 kB
    restored = pickle.loads(blob)
    assert not hasattr(restored, "_backbone")
    assert np.array_equal(restored.transform(X), before)


def test_quiet_unless_verbose(tiny_backbone, capfd):
    X = _images(4)
    _cpu(tiny_backbone, image_size=SIZE, batch_size=2).transform(X)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    _cpu(tiny_backbone, image_size=SIZE, batch_size=2, verbose=True).transform(X)
    assert "Embedding" in capfd.readouterr().err


# ------------------------------------------------------------------------------------------------
# Out-of-memory halving
# ------------------------------------------------------------------------------------------------


def test_out_of_memory_halves_the_batch(tiny_backbone, monkeypatch):
    X = _images(7)
    reference = _cpu(tiny_backbone, image_size=SIZE).transform(X)

    def fail_above_two(counter, batch):
        if batch > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    counter = ForwardCounter(monkeypatch, fail_above_two)
    with pytest.warns(RuntimeWarning, match="did not fit in GPU memory") as caught:
        got = _cpu(tiny_backbone, image_size=SIZE, batch_size=8).transform(X)
    assert [str(w.message)[-13:] for w in caught] == ["batch_size=4.", "batch_size=2."]
    np.testing.assert_allclose(got, reference, atol=1e-5)
    assert counter.images == 7

    def always_fail(counter, batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    ForwardCounter(monkeypatch, always_fail)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(torch.cuda.OutOfMemoryError):
            _cpu(tiny_backbone, image_size=SIZE, batch_size=4).transform(X)


# ------------------------------------------------------------------------------------------------
# The embedding cache
# ------------------------------------------------------------------------------------------------


def test_cache_reuses_and_returns_a_memory_map(tiny_backbone, tmp_path, monkeypatch):
    X = _images(5)
    uncached = _cpu(tiny_backbone, image_size=SIZE).transform(X)
    counter = ForwardCounter(monkeypatch)
    embedder = _cpu(tiny_backbone, image_size=SIZE, embedding_cache=tmp_path, output_dtype="float16")
    first = embedder.transform(X)
    assert counter.images == 5
    assert isinstance(first, np.memmap) and first.dtype == np.float16 and not first.flags.writeable
    np.testing.assert_allclose(first.astype(np.float32), uncached, rtol=2e-3, atol=2e-3)
    again = _cpu(tiny_backbone, image_size=SIZE, embedding_cache=tmp_path).transform(X)
    assert counter.images == 5  # nothing recomputed
    assert again.dtype == np.float32 and np.array_equal(again, first.astype(np.float32))
    # A subset in another order is copied from the first collection, not recomputed.
    subset = embedder.transform(X[[3, 1]])
    assert counter.images == 5 and np.array_equal(subset, first[[3, 1]])


def test_cache_resumes_after_an_interruption(tiny_backbone, tmp_path, monkeypatch):
    X = _images(6)
    reference = _cpu(tiny_backbone, image_size=SIZE).transform(X)

    class Interrupted(Exception):
        pass

    def crash_on_third_batch(counter, batch):
        if counter.calls == 2:
            raise Interrupted

    counter = ForwardCounter(monkeypatch, crash_on_third_batch)
    embedder = _cpu(tiny_backbone, image_size=SIZE, batch_size=2, embedding_cache=tmp_path)
    with pytest.raises(Interrupted):
        embedder.transform(X)
    assert counter.images == 4
    logs = list(tmp_path.glob("*/*/commits.log"))  # one committed block per finished batch
    assert len(logs) == 1 and [json.loads(line)["stop"] for line in logs[0].read_text().splitlines()] == [2, 4]
    counter = ForwardCounter(monkeypatch)
    resumed = embedder.transform(X)
    assert counter.images == 2  # only the last batch
    np.testing.assert_allclose(resumed, reference, rtol=2e-3, atol=2e-3)


def test_cache_invalidates_changed_images_and_settings(tiny_backbone, tmp_path, monkeypatch):
    X = _images(4)
    paths = [tmp_path / f"{i}.png" for i in range(4)]
    for path, image in zip(paths, X):
        Image.fromarray(image).save(path)
    cache = tmp_path / "cache"
    embedder = _cpu(tiny_backbone, image_size=SIZE, embedding_cache=cache, output="cls")
    first = embedder.transform(paths)
    counter = ForwardCounter(monkeypatch)
    # One file is overwritten with a different image: only it is recomputed, with new values.
    Image.fromarray(X[0][::-1].copy()).save(paths[2])
    changed = embedder.transform(paths)
    assert counter.images == 1
    assert np.array_equal(changed[[0, 1, 3]], first[[0, 1, 3]])
    fresh = _cpu(tiny_backbone, image_size=SIZE, output="cls").transform([X[0][::-1].copy()])
    np.testing.assert_allclose(changed[2], fresh[0], rtol=2e-3, atol=2e-3)
    assert not np.allclose(changed[2], first[2], atol=1e-2)
    # Every setting that changes the numbers gets its own entry.
    for params in (dict(image_size=56), dict(output="mean"), dict(preprocessing="paper", mean=CUB_MEAN, std=CUB_STD)):
        before = counter.images
        clone(embedder).set_params(**params).transform(paths)
        assert counter.images == before + 4, params
    # Touching the model folder changes its revision key.
    before = counter.images
    config = tmp_path / "model"
    from qpm_sklearn.testing import save_random_backbone

    save_random_backbone(config, "tiny", seed=1)
    other = clone(embedder).set_params(model=str(config))
    seed1 = other.transform(paths)
    save_random_backbone(config, "tiny", seed=2)
    seed2 = other.transform(paths)  # same instance: the re-saved weights are reloaded too
    assert counter.images == before + 8
    np.testing.assert_array_equal(seed2, clone(other).set_params(embedding_cache=None).transform(paths).astype(np.float16))
    assert not np.allclose(seed1, seed2, atol=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bfloat16_agrees_with_cpu_float32(tiny_backbone):
    X = _images(6)
    cpu = _cpu(tiny_backbone, image_size=56).transform(X)
    gpu = Dinov2Embedder(tiny_backbone, image_size=56, batch_size=4).transform(X)  # auto: cuda, bf16
    gpu32 = Dinov2Embedder(tiny_backbone, image_size=56, device="cuda", dtype="float32").transform(X)
    assert gpu.dtype == np.float32 and gpu.shape == cpu.shape
    np.testing.assert_allclose(gpu32, cpu, atol=1e-3)
    a, b = gpu.reshape(-1, 32), cpu.reshape(-1, 32)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.98


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("output", ["patch", "cls", "mean"])
def test_cuda_outputs_are_converted_on_the_host_exactly(tiny_backbone, output):
    # The device hands bfloat16 tokens to the host, which converts them to output_dtype;
    # a float64 recomputation from the same bfloat16 tokens must give the same numbers.
    X = _images(7)
    embedder = Dinov2Embedder(tiny_backbone, image_size=56, batch_size=3, device="cuda", output=output)
    backbone = embedder._load_model(torch.device("cuda"), torch.bfloat16)
    pixels = torch.from_numpy(np.stack([im.load_resized(x, 0, 56) for x in X])).cuda()
    with torch.inference_mode():  # the embedder's batches, so that the kernels are the same
        tokens = torch.cat([
            backbone(pixel_values=im.normalize(pixels[i : i + 3]).to(torch.bfloat16)).last_hidden_state
            for i in range(0, 7, 3)
        ])  # fmt: skip
    patches = tokens[:, 1 + backbone.config.num_register_tokens :].double().cpu().numpy()
    expected = {"patch": patches.reshape(7, 4, 4, -1), "cls": tokens[:, 0].double().cpu().numpy(), "mean": patches.mean(1)}[output]
    for dtype, tolerance in (("float32", 1e-6), ("float16", 1e-3)):
        result = embedder.set_params(output_dtype=dtype).transform(X)
        assert result.dtype == np.dtype(dtype) and result.shape == expected.shape
        np.testing.assert_allclose(result.astype(np.float64), expected, rtol=tolerance, atol=tolerance)
