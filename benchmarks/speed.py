"""Speed benchmark of qpm_sklearn (see docs/performance.md): one run, one JSON file.

Measures, on synthetic data of CUB-200-2011 size (5,994 training images, 200
classes, 16 x 16 patch tokens of a ViT-B/14, i.e. 768-d) and random-weight
backbones built locally (no download):

* ``backbone_forward``  raw backbone forward, img/s (bf16 on CUDA, SDPA attention,
  batch 256, 224 px), per size in ``--sizes``;
* ``embedder_arrays``   ``Dinov2Embedder.transform`` of a uint8 (5994, 224, 224, 3) array, float32
  (the default) and float16 output;
* ``embedder_jpeg``     ``Dinov2Embedder.transform`` of 5,994 JPEG files (500 x 375, as CUB) in a temp
  dir, and the decoding stage alone;
* ``dinov3``            DINOv3 ViT-B/16 (4 registers, RoPE; the hub configuration below): its raw
  forward, as ``backbone_forward``, and ``PatchEmbedder.transform`` of the uint8 array, as
  ``embedder_arrays`` (224 px: a 14 x 14 grid, against DINOv2's 16 x 16);
* ``dense_epoch``       one dense-stage epoch (4 x 2048 MLP, 512 features) at batch 32 and 256,
  the CUDA-graph path and the plain eager loop;
* ``selection``         ``solve_selection`` on a CUB-size instance (512 features, 200 classes, 50 / 5);
* ``selection_imagenet`` 4096 features x 2000 classes -> 400 x 5 (CPU work): both redundancy rules'
  penalty build, the default solver and the exact path's wall time against its 60 s limit;
* ``sparse_epoch``      one sparse-stage epoch at batch 16;
* ``full_fit``          ``QPMClassifier().fit`` on CUB-size embeddings (25 + 25 epochs + selection);

with the peak GPU memory (``torch.cuda.max_memory_allocated``) of each section.
Every section is time-boxed and independent: one that fails records its error
and the run goes on. Results go to ``speed-<device>.json`` in the current
directory (``--out`` names another path) and a table is printed.

Usage::

    python benchmarks/speed.py --device cuda            # the real run (a few minutes on an H100)
    python benchmarks/speed.py --device cpu --quick     # tiny sizes: a smoke test of the script
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import re
import signal
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZE_NAMES = {"S": "small", "B": "base", "L": "large", "T": "tiny"}

# The architecture of facebook/dinov3-vitb16-pretrain-lvd1689m, as in its config.json (there is
# no network here: the weights are random; speed does not depend on their values).
DINOV3_VITB16 = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16,
    num_register_tokens=4, image_size=224, hidden_act="gelu", layer_norm_eps=1e-5, layerscale_value=1.0,
    rope_theta=100.0, query_bias=True, key_bias=False, value_bias=True, proj_bias=True, mlp_bias=True,
    use_gated_mlp=False, pos_embed_rescale=2.0,
)  # fmt: skip

# The run on a GPU: CUB-size problem; images per backbone size bounded so the run stays short.
FULL = dict(
    n_train=5994,
    n_classes=200,
    grid=(16, 16),
    dim=768,
    hidden_size=2048,
    n_features=512,
    n_layers=4,
    n_selected=50,
    n_per_class=5,
    forward_images={"small": 4096, "base": 3072, "large": 1024, "tiny": 4096},
    forward_batch=256,
    image_size=224,
    embedder_size="base",
    embedder_images=5994,  # CUB's training set: pipeline fill and drain weigh as in real use
    dinov3=DINOV3_VITB16,
    dinov3_image_size=224,
    jpeg_images=5994,
    jpeg_shape=(375, 500),
    dense_batches=(32, 256),
    dense_epochs=3,
    sparse_batch=16,
    sparse_epochs=2,
    classifier={},  # the paper defaults
)
# --quick: the same code on tiny sizes, for a CPU smoke run of the script.
QUICK = dict(
    FULL,
    n_train=96,
    n_classes=6,
    grid=(4, 4),
    dim=32,
    hidden_size=32,
    n_features=24,
    n_layers=2,
    n_selected=8,
    n_per_class=2,
    forward_images={"tiny": 32},
    forward_batch=16,
    image_size=56,
    embedder_size="tiny",
    embedder_images=32,
    dinov3={},  # the tiny test model of qpm_sklearn.testing
    dinov3_image_size=64,
    jpeg_images=24,
    jpeg_shape=(75, 100),
    dense_batches=(8, 32),
    dense_epochs=2,
    sparse_epochs=2,
    classifier=dict(
        n_features=24, hidden_size=32, n_layers=2, n_selected=8, n_per_class=2, dense_epochs=2, sparse_epochs=2
    ),
)
# Seconds each section may take at most (the whole run must stay well under 8 minutes on an H100).
TIME_BOX = dict(
    backbone_forward=100,
    embedder_arrays=60,
    embedder_jpeg=90,
    dinov3=90,
    dense_epoch=200,  # with the torch.compile experiment
    selection=90,
    selection_imagenet=420,  # CPU work (about 280 s on the 2-core VM): both penalty rules, default and exact solves
    sparse_epoch=40,
    full_fit=150,
)
# The project's speed targets on one H100 (docs/performance.md, "Targets").
TARGETS = dict(
    embedder_arrays_vs_forward=0.85,
    embedder_jpeg_img_per_s=2000.0,
    dense_epoch_s_batch32=0.5,
    dense_epoch_s_batch256=0.3,
    full_fit_s=40.0,
    full_fit_peak_gb=12.0,
)


class SectionTimeout(Exception):
    pass


@contextmanager
def time_box(seconds):
    """Raise SectionTimeout in the main thread after ``seconds`` (SIGALRM; Unix)."""

    def expire(signum, frame):
        raise SectionTimeout(f"timed out after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gb(device):
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


class Context:
    """Shared lazily built inputs: backbone folders, synthetic tokens, the selection result."""

    def __init__(self, device, config, workdir):
        self.device, self.config, self.workdir = device, config, Path(workdir)
        self._backbones = {}
        self._tokens = None
        self.selection = None
        self.results = {}

    def backbone(self, size):
        if size not in self._backbones:
            from qpm_sklearn.testing import save_random_backbone

            self._backbones[size] = save_random_backbone(self.workdir / f"dinov2-{size}", size=size)
        return self._backbones[size]

    def dinov3(self):
        if "dinov3" not in self._backbones:
            from qpm_sklearn.testing import save_random_model

            self._backbones["dinov3"] = save_random_model(self.workdir / "dinov3", "dinov3_vit", **self.config["dinov3"])
        return self._backbones["dinov3"]

    def tokens(self):
        """CUB-size synthetic embeddings (n, h, w, d) float32 with class structure, and labels."""
        if self._tokens is None:
            cfg = self.config
            n, (h, w), d, c = cfg["n_train"], cfg["grid"], cfg["dim"], cfg["n_classes"]
            generator = torch.Generator(device=self.device).manual_seed(0)
            y = np.arange(n) % c
            centers = torch.randn(c, d, generator=generator, device=self.device)
            labels = torch.as_tensor(y, device=self.device)
            X = np.empty((n, h, w, d), dtype=np.float32)
            for start in range(0, n, 512):
                stop = min(start + 512, n)
                noise = torch.randn(stop - start, h, w, d, generator=generator, device=self.device)
                X[start:stop] = (noise + 0.5 * centers[labels[start:stop]][:, None, None, :]).cpu().numpy()
            self._tokens = (X, y)
        return self._tokens


# --------------------------------------------------------------------------- sections
def section_backbone_forward(ctx):
    cfg = ctx.config
    out = {}
    for size in ctx.sizes:
        out[size] = _forward_rate(ctx, ctx.backbone(size), cfg["image_size"], cfg["forward_images"][size])
        print(f"    {size}: {out[size]['img_per_s']:.0f} img/s", flush=True)
    return out


def _forward_rate(ctx, folder, side, n_images):
    """Raw forward img/s of the model in ``folder`` (bf16 on CUDA, SDPA) on random pixels."""
    from transformers import AutoModel

    device = ctx.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModel.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa").to(device).eval()
    batch = ctx.config["forward_batch"]
    pixels = torch.randn(batch, 3, side, side, device=device, dtype=dtype)
    n_batches = max(1, n_images // batch)
    with torch.inference_mode():
        for _ in range(2):
            model(pixel_values=pixels)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(n_batches):
            model(pixel_values=pixels).last_hidden_state
        synchronize(device)
        seconds = time.perf_counter() - start
    result = dict(
        img_per_s=n_batches * batch / seconds,
        n_images=n_batches * batch,
        batch_size=batch,
        attention=getattr(model.config, "_attn_implementation", None),
        dtype=str(dtype).replace("torch.", ""),
    )
    del model, pixels
    free_memory(device)
    return result


def _embedder(ctx, **extra):
    from qpm_sklearn import Dinov2Embedder

    cfg = ctx.config
    return Dinov2Embedder(
        model=str(ctx.backbone(cfg["embedder_size"])),
        batch_size=cfg["forward_batch"],
        image_size=cfg["image_size"],
        device=str(ctx.device),
        dtype="bfloat16" if ctx.device.type == "cuda" else "float32",
        **extra,
    )


def _timed_transform(embedder, inputs, warmup_inputs, device):
    embedder.transform(warmup_inputs)  # loads the model
    synchronize(device)
    start = time.perf_counter()
    result = embedder.transform(inputs)  # numpy on the host: nothing left in flight
    return result, time.perf_counter() - start


def section_embedder_arrays(ctx):
    cfg = ctx.config
    n, side = cfg["embedder_images"], cfg["image_size"]
    images = np.random.default_rng(0).integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)
    forward = ctx.results.get("backbone_forward", {}).get("result", {}).get(cfg["embedder_size"])
    out = dict(n_images=n, image_shape=list(images.shape[1:]))
    # float32 is the default (and the target); float16 shows what halving the output bytes buys.
    for output_dtype in ("float32", "float16"):
        embedder = _embedder(ctx, output_dtype=output_dtype)
        result, seconds = _timed_transform(embedder, images, images[: cfg["forward_batch"]], ctx.device)
        row = dict(img_per_s=n / seconds, output_shape=list(result.shape))
        if forward:
            row["ratio_to_forward"] = row["img_per_s"] / forward["img_per_s"]
        out[output_dtype] = row
        print(f"    output {output_dtype}: {row['img_per_s']:.0f} img/s", flush=True)
        del result
    out.update({k: v for k, v in out["float32"].items() if k != "output_shape"})
    return out


def section_dinov3(ctx):
    from qpm_sklearn import PatchEmbedder

    cfg, device, side = ctx.config, ctx.device, ctx.config["dinov3_image_size"]
    n = cfg["embedder_images"]
    forward = _forward_rate(ctx, ctx.dinov3(), side, cfg["forward_images"][cfg["embedder_size"]])
    print(f"    raw forward: {forward['img_per_s']:.0f} img/s", flush=True)
    images = np.random.default_rng(0).integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)
    embedder = PatchEmbedder(
        model=str(ctx.dinov3()),
        batch_size=cfg["forward_batch"],
        image_size=side,
        device=str(device),
        dtype="bfloat16" if device.type == "cuda" else "float32",
    )
    result, seconds = _timed_transform(embedder, images, images[: cfg["forward_batch"]], device)
    embedder_row = dict(img_per_s=n / seconds, output_shape=list(result.shape), n_images=n)
    embedder_row["ratio_to_forward"] = embedder_row["img_per_s"] / forward["img_per_s"]
    print(f"    embedder from arrays: {embedder_row['img_per_s']:.0f} img/s", flush=True)
    return dict(model="ViT-B/16" if cfg["dinov3"] else "tiny", forward=forward, embedder_arrays=embedder_row, image_size=side)


def write_jpegs(folder, n, shape):
    """Smooth random images (JPEG sizes like photos, unlike white noise), written in parallel."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    height, width = shape

    def write(index):
        rng = np.random.default_rng(index)
        coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
        pixels = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, size=(height, width, 3))
        path = folder / f"{index:05d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        return str(path)

    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        return list(pool.map(write, range(n)))


def section_embedder_jpeg(ctx):
    cfg = ctx.config
    paths = write_jpegs(ctx.workdir / "jpeg", cfg["jpeg_images"], cfg["jpeg_shape"])
    mean_kb = statistics.mean(os.path.getsize(p) for p in paths[:50]) / 1e3
    out = dict(n_images=len(paths), image_shape=list(cfg["jpeg_shape"]), mean_file_kb=mean_kb)
    variants = {"default": {}}
    if "n_jobs" in _embedder(ctx).get_params():
        variants["n_jobs=-1"] = dict(n_jobs=-1)
    for name, extra in variants.items():
        embedder = _embedder(ctx, **extra)
        _, seconds = _timed_transform(embedder, paths, paths[: cfg["forward_batch"]], ctx.device)
        out[name] = dict(img_per_s=len(paths) / seconds, decode_only_img_per_s=_decode_rate(embedder, paths))
        print(f"    {name}: {out[name]['img_per_s']:.0f} img/s (decoding alone "
              f"{out[name]['decode_only_img_per_s']:.0f} img/s)", flush=True)  # fmt: skip
    out["img_per_s"] = max(v["img_per_s"] for v in out.values() if isinstance(v, dict))
    return out


def _decode_rate(embedder, paths):
    """img/s of the embedder's decoding stage alone (no model): which stage limits the rate."""
    from qpm_sklearn.images import PREPROCESSING_FILTERS, decode_batches

    batches = [np.arange(i, min(i + embedder.batch_size, len(paths))) for i in range(0, len(paths), embedder.batch_size)]
    start = time.perf_counter()
    for _ in decode_batches(paths, batches, embedder.image_size, PREPROCESSING_FILTERS[embedder.preprocessing], n_jobs=embedder.n_jobs):
        pass
    return len(paths) / (time.perf_counter() - start)


def _network(ctx, head, selected=None):
    from qpm_sklearn.adapter import QPMNetwork, TokenMLP

    cfg = ctx.config
    torch.manual_seed(0)
    mlp = TokenMLP(cfg["dim"], cfg["hidden_size"], cfg["n_features"], cfg["n_layers"])
    return QPMNetwork(mlp, head, selected=selected)


def _epoch_summary(history):
    seconds = [row["seconds"] for row in history]
    later = seconds[1:] or seconds
    return dict(epoch_s=statistics.median(later), first_epoch_s=seconds[0], epochs_s=seconds)


def section_dense_epoch(ctx):
    from qpm_sklearn.training import tokens_on_device

    cfg, device = ctx.config, ctx.device
    X, y = ctx.tokens()
    start = time.perf_counter()
    tokens = tokens_on_device(X.reshape(len(X), -1, X.shape[-1]), device)
    synchronize(device)
    out = dict(upload_s=time.perf_counter() - start)
    large = cfg["dense_batches"][-1]
    # name -> (batch, options); options: cuda_graphs, cudnn (BatchNorm through cuDNN or PyTorch's
    # own kernels), compiled (the MLP through torch.compile). The last two are experiments that
    # the library does not use (yet): they measure whether they would pay at the large batch.
    variants = {f"batch{batch}": (batch, {}) for batch in cfg["dense_batches"]}
    if device.type == "cuda":
        variants.update({f"batch{batch}_eager": (batch, dict(cuda_graphs=False)) for batch in cfg["dense_batches"]})
        variants[f"batch{large}_native_batchnorm"] = (large, dict(cudnn=False))
        variants[f"batch{large}_compiled"] = (large, dict(compiled=True, cuda_graphs=False))
    for name, (batch, options) in variants.items():
        free_memory(device)
        try:
            out[name] = _dense_epochs(ctx, tokens, y, batch, **options)
        except Exception as exc:  # noqa: BLE001 -- an experiment that fails must not hide the rest
            out[name] = dict(error=f"{type(exc).__name__}: {exc}")
        print(f"    {name}: " + (f"{out[name]['epoch_s']:.3f} s/epoch" if "epoch_s" in out[name] else out[name]["error"]), flush=True)
    return out


def _dense_epochs(ctx, tokens, y, batch, *, cuda_graphs=None, cudnn=True, compiled=False):
    from qpm_sklearn.adapter import DenseHead
    from qpm_sklearn.training import train_network

    cfg, device = ctx.config, ctx.device
    network = _network(ctx, DenseHead(cfg["n_features"], cfg["n_classes"], 0.2))
    if compiled:
        network.mlp = torch.compile(network.mlp)  # the first epoch includes the compilation
    with torch.backends.cudnn.flags(enabled=cudnn):
        history = train_network(
            network, tokens, y, grid=cfg["grid"], epochs=cfg["dense_epochs"], batch_size=batch, lr=1e-3,
            weight_decay=7e-4, diversity=0.5, device=device, seed=0, cuda_graphs=cuda_graphs,
        )  # fmt: skip
    return dict(_epoch_summary(history), peak_gb=peak_gb(device))


def section_selection(ctx):
    from qpm_sklearn.selection import (
        feature_class_correlation,
        feature_similarity,
        redundancy_penalty,
        solve_selection,
    )

    cfg = ctx.config
    rng = np.random.default_rng(0)
    n, c, nf = cfg["n_train"], cfg["n_classes"], cfg["n_features"]
    y = np.arange(n) % c
    # Non-negative pooled features, each class lifting a few of them (like a dense model's).
    lift = (rng.random((c, nf)) < 0.03) * rng.random((c, nf)) * 2
    F = np.maximum(rng.normal(size=(n, nf)) * 0.5 + lift[y] + 0.3, 0)
    start = time.perf_counter()
    A = feature_class_correlation(F, y)
    penalty, tau = redundancy_penalty(feature_similarity(A), cfg["n_selected"])
    prepare = time.perf_counter() - start
    result = solve_selection(
        A, n_selected=cfg["n_selected"], n_per_class=cfg["n_per_class"], penalty=penalty, random_state=0
    )
    ctx.selection = result
    info = {k: v for k, v in result.as_dict().items() if isinstance(v, (int, float, str))}
    return dict(info, total_s=prepare + result.seconds, prepare_s=prepare)


def section_sparse_epoch(ctx):
    from qpm_sklearn.adapter import SparseHead
    from qpm_sklearn.training import tokens_on_device, train_network

    cfg, device = ctx.config, ctx.device
    X, y = ctx.tokens()
    k, c = cfg["n_selected"], cfg["n_classes"]
    if ctx.selection is not None:
        selected, assignment = ctx.selection.selected, np.asarray(ctx.selection.assignment, np.float32)
    else:  # the selection section failed: a random valid-shaped assignment serves for timing
        rng = np.random.default_rng(0)
        selected = np.sort(rng.choice(cfg["n_features"], k, replace=False))
        assignment = np.zeros((c, k), np.float32)
        for row in assignment:
            row[rng.choice(k, cfg["n_per_class"], replace=False)] = 1
    network = _network(ctx, SparseHead(assignment, np.full(k, 0.5), np.full(k, 0.2)), selected)
    tokens = tokens_on_device(X.reshape(len(X), -1, X.shape[-1]), device)
    history = train_network(
        network, tokens, y, grid=cfg["grid"], epochs=cfg["sparse_epochs"], batch_size=cfg["sparse_batch"], lr=5e-3,
        weight_decay=8e-4, diversity=1.0, l1_maps=5.0, l1_features=1.0, device=device, seed=0,
    )  # fmt: skip
    return dict(_epoch_summary(history), batch_size=cfg["sparse_batch"], peak_gb=peak_gb(device))


def section_full_fit(ctx):
    from qpm_sklearn import QPMClassifier

    cfg, device = ctx.config, ctx.device
    X, y = ctx.tokens()
    classifier = QPMClassifier(device=str(device), random_state=0, **cfg["classifier"])
    start = time.perf_counter()
    classifier.fit(X, y)
    synchronize(device)
    seconds = time.perf_counter() - start
    stages = {}
    for row in getattr(classifier, "history_", []) or []:
        stage = row.get("stage", "unknown")
        stages[stage] = stages.get(stage, 0.0) + float(row.get("seconds", 0.0))
    info = getattr(classifier, "selection_info_", {}) or {}
    selection_s = float(info.get("seconds", 0.0))
    out = dict(
        seconds=seconds,
        stage_epoch_seconds=stages,
        selection_s=selection_s,
        other_s=seconds - sum(stages.values()) - selection_s,
        peak_gb=peak_gb(device),
        train_accuracy=float(classifier.score(X[:512], y[:512])),
        n_epochs=len(getattr(classifier, "history_", []) or []),
    )
    return out


def section_selection_imagenet(ctx):
    """ImageNet-scale selection, 4096 x 2000 -> 400 x 5 (--quick: 256 x 50 -> 20 x 3): both redundancy
    rules' penalty build (CPU and wall seconds), the default solver, and the exact path's wall time
    against its limit (it must keep it: HiGHS runs in a worker stopped at the deadline)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from selection import build_instance  # the simulated dense features of benchmarks/selection.py

    from qpm_sklearn.selection import solve_selection

    n, c, m, k = (256, 50, 20, 3) if ctx.config is QUICK else (4096, 2000, 400, 5)
    limit = 10.0 if ctx.config is QUICK else 60.0
    out = dict(instance=f"{n} x {c} -> {m} x {k}", time_limit=limit)
    for rule in ("consistent", "paper"):
        A, penalty, info = build_instance(n, c, m, 0, rule=rule)
        row = dict(tau=info["tau"], penalty_s=info["penalty_seconds"], penalty_cpu_s=info["penalty_cpu_seconds"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for solver in ("osqp", "exact"):
                result = solve_selection(A, n_selected=m, n_per_class=k, penalty=penalty, solver=solver,
                                         time_limit=limit, random_state=0)
                row[solver] = dict(objective=result.objective, gap=result.gap, status=result.status,
                                   seconds=result.seconds, cpu_seconds=result.cpu_seconds,
                                   wall_over_limit=result.seconds / limit)
        out[rule] = row
        print(f"    {rule}: penalty {row['penalty_cpu_s']:.1f} CPU s, exact {row['exact']['seconds']:.1f} s "
              f"of {limit:.0f}", flush=True)
    return out


SECTIONS = [
    ("backbone_forward", section_backbone_forward),
    ("embedder_arrays", section_embedder_arrays),
    ("embedder_jpeg", section_embedder_jpeg),
    ("dinov3", section_dinov3),
    ("dense_epoch", section_dense_epoch),
    ("selection", section_selection),
    ("selection_imagenet", section_selection_imagenet),
    ("sparse_epoch", section_sparse_epoch),
    ("full_fit", section_full_fit),
]


def free_memory(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def run_section(name, function, ctx, budget):
    free_memory(ctx.device)
    print(f"[{name}] (time box {budget:.0f} s)", flush=True)
    start = time.perf_counter()
    record = {}
    try:
        with time_box(budget):
            record["result"] = function(ctx)
        record["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 -- one section's failure must not stop the run
        record["status"] = "timeout" if isinstance(exc, SectionTimeout) else "error"
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc(limit=6)
        print(f"    {record['status']}: {record['error']}", flush=True)
    record["wall_s"] = time.perf_counter() - start
    record["peak_gb"] = peak_gb(ctx.device)
    return record


# --------------------------------------------------------------------------- report
def environment(device):
    import transformers

    env = dict(
        device_type=device.type,
        torch=torch.__version__,
        transformers=transformers.__version__,
        python=platform.python_version(),
        cuda=torch.version.cuda,
        cpu_count=os.cpu_count(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    if device.type == "cuda":
        env["device"] = torch.cuda.get_device_name(device)
        env["gpu_memory_gb"] = torch.cuda.get_device_properties(device).total_memory / 1e9
    else:
        env["device"] = cpu_name()
    for package in ("sklearn", "osqp", "scipy", "PIL"):
        try:
            env[package] = __import__(package).__version__
        except Exception as exc:  # noqa: BLE001
            env[package] = f"unavailable ({type(exc).__name__})"
    return env


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "cpu " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu " + (platform.processor() or platform.machine())


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _get(sections, name, *keys):
    value = sections.get(name, {}).get("result")
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def check_targets(sections, quick):
    """(name, measured, target, ok) rows; ok is None when not measured (or --quick)."""
    rows = [
        ("embedder from arrays / raw forward (ViT-B)", _get(sections, "embedder_arrays", "ratio_to_forward"),
         TARGETS["embedder_arrays_vs_forward"], ">="),
        ("embedder from JPEG files, img/s (ViT-B)", _get(sections, "embedder_jpeg", "img_per_s"),
         TARGETS["embedder_jpeg_img_per_s"], ">="),
        ("dense epoch, batch 32, s", _get(sections, "dense_epoch", "batch32", "epoch_s"),
         TARGETS["dense_epoch_s_batch32"], "<="),
        ("dense epoch, batch 256, s", _get(sections, "dense_epoch", "batch256", "epoch_s"),
         TARGETS["dense_epoch_s_batch256"], "<="),
        ("full fit, s", _get(sections, "full_fit", "seconds"), TARGETS["full_fit_s"], "<="),
        ("full fit peak GPU memory, GB", _get(sections, "full_fit", "peak_gb"), TARGETS["full_fit_peak_gb"], "<="),
    ]  # fmt: skip
    out = []
    for name, measured, target, relation in rows:
        if quick or measured is None:
            measured, ok = None, None
        else:
            ok = measured >= target if relation == ">=" else measured <= target
        out.append(dict(name=name, measured=measured, target=f"{relation} {target}", ok=ok))
    return out


def table(report):
    lines = [f"device: {report['environment']['device']}  (quick={report['quick']})", ""]
    lines.append(f"{'section':<18} {'status':<8} {'wall s':>7}  measurement")
    for name, record in report["sections"].items():
        summary = record.get("error", "") if record["status"] != "ok" else _summary(name, record["result"])
        lines.append(f"{name:<18} {record['status']:<8} {record['wall_s']:7.1f}  {summary}")
    lines += ["", f"{'target':<46} {'measured':>10} {'target':>10}  ok"]
    for row in report["targets"]:
        measured = "-" if row["measured"] is None else f"{row['measured']:.3g}"
        ok = {True: "yes", False: "NO", None: "-"}[row["ok"]]
        lines.append(f"{row['name']:<46} {measured:>10} {row['target']:>10}  {ok}")
    return "\n".join(lines)


def _summary(name, result):
    if name == "backbone_forward":
        return ", ".join(f"{size} {v['img_per_s']:.0f} img/s" for size, v in result.items())
    if name in ("embedder_arrays", "embedder_jpeg"):
        extra = f" ({result['ratio_to_forward']:.0%} of forward)" if "ratio_to_forward" in result else ""
        return f"{result['img_per_s']:.0f} img/s{extra}"
    if name == "dinov3":
        forward, embedder = result["forward"], result["embedder_arrays"]
        return (f"{result['model']} forward {forward['img_per_s']:.0f} img/s, embedder {embedder['img_per_s']:.0f} img/s "
                f"({embedder['ratio_to_forward']:.0%} of forward)")  # fmt: skip
    if name == "dense_epoch":
        parts = [f"{k} {v['epoch_s']:.3f} s/epoch" for k, v in result.items() if isinstance(v, dict) and "epoch_s" in v]
        return ", ".join(parts) + f", upload {result['upload_s']:.2f} s"
    if name == "selection":
        return f"{result['total_s']:.2f} s, status {result.get('status')}, gap {result.get('gap')}"
    if name == "sparse_epoch":
        return f"{result['epoch_s']:.3f} s/epoch (batch {result['batch_size']})"
    if name == "full_fit":
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in result["stage_epoch_seconds"].items())
        peak = "" if result["peak_gb"] is None else f", peak {result['peak_gb']:.2f} GB"
        return f"{result['seconds']:.1f} s ({stages}, selection {result['selection_s']:.1f} s){peak}"
    return ""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default=None, help="backbone sizes for the raw forward: S,B,L (default) or T")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script (CPU)")
    names = ",".join(name for name, _ in SECTIONS)
    parser.add_argument("--sections", default=None, help=f"comma-separated subset of: {names}")
    parser.add_argument("--max-seconds", type=float, default=400.0, help="start no section after this many seconds")
    parser.add_argument("--out", default=None, help="JSON path (default: speed-<device>.json in the current directory)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    config = QUICK if args.quick else FULL
    sizes = args.sizes or ("T" if args.quick else "S,B,L")
    wanted = set(args.sections.split(",")) if args.sections else {name for name, _ in SECTIONS}
    unknown = wanted - {name for name, _ in SECTIONS}
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")

    report = dict(environment=environment(device), quick=args.quick, config=config, sections={})
    deadline = time.perf_counter() + args.max_seconds
    with tempfile.TemporaryDirectory(prefix="qpm-speed-") as workdir:
        ctx = Context(device, config, workdir)
        ctx.sizes = [SIZE_NAMES[s.strip().upper()] for s in sizes.split(",")]
        ctx.results = report["sections"]
        for name, function in SECTIONS:
            if name not in wanted:
                continue
            remaining = deadline - time.perf_counter()
            if remaining < 5:
                report["sections"][name] = dict(status="skipped", error="--max-seconds reached", wall_s=0.0)
                continue
            report["sections"][name] = run_section(name, function, ctx, min(TIME_BOX[name], remaining))
    report["targets"] = check_targets(report["sections"], args.quick)

    device_slug = slug(report["environment"]["device"]) + ("-quick" if args.quick else "")
    path = Path(args.out) if args.out else Path.cwd() / f"speed-{device_slug}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str))
    print()
    print(table(report))
    print(f"\nwritten: {path}")
    return report


if __name__ == "__main__":
    main()
