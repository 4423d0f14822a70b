"""Dinov2Embedder throughput on the real ViT-B/14 + 4 registers architecture (random weights).

Measures, on whatever device is available:
* model_only: the backbone's forward alone on ready pixel tensors (the upper bound);
* transform from a uint8 array (no decoding) and from JPEG files (decoded and resized by n_jobs
  workers, overlapped with the forward), for a few n_jobs (the decoding stage alone is measured by
  benchmarks/embedder_host.py and benchmarks/speed.py);
* the cache: first run vs a fully cached second run;
* bf16 vs float32 agreement of the patch tokens (cosine similarity);
* a real CUDA out-of-memory error recovered by halving the batch (CUDA only).

Writes JSON with the device name to benchmarks/results/embedding_speed_<device>.json (and to
$OUT when set). Usage: python benchmarks/embedding_speed.py [--n-images 2048] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from speed import write_jpegs  # this folder is on sys.path when the script runs

from qpm_sklearn import Dinov2Embedder
from qpm_sklearn.testing import save_random_backbone


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn, repeats=1):
    best, result = float("inf"), None
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        result = fn()
        _sync()
        best = min(best, time.perf_counter() - start)
    return best, result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-images", type=int, default=2048)
    parser.add_argument("--size", default="base")
    parser.add_argument("--quick", action="store_true", help="tiny model and few images (CPU smoke run)")
    args = parser.parse_args()
    size = "tiny" if args.quick else args.size
    n = 64 if args.quick else args.n_images
    image_size = 56 if args.quick else 224

    cuda = torch.cuda.is_available()
    device_name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    results = {
        "device": device_name,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "model": f"random dinov2-with-registers-{size}",
        "image_size": image_size,
        "n_images": n,
    }
    work = Path(tempfile.mkdtemp())
    folder = save_random_backbone(work / "model", size, num_register_tokens=4)
    paths = write_jpegs(work / "images", n, (375, 500))  # CUB-like: 500 x 375, photo-like content
    array = np.stack([np.asarray(Image.open(p).convert("RGB").resize((image_size, image_size))) for p in paths[:n]])

    # Upper bound: the backbone alone on ready pixel tensors.
    embedder = Dinov2Embedder(str(folder), image_size=image_size, batch_size=128)
    embedder.transform(array[:8])  # load + warm up
    _, backbone = embedder._backbone
    dtype = next(backbone.parameters()).dtype
    device = next(backbone.parameters()).device
    pixels = torch.randn(128, 3, image_size, image_size, device=device, dtype=dtype)
    with torch.inference_mode():
        backbone(pixel_values=pixels)
        seconds, _ = _timed(lambda: [backbone(pixel_values=pixels) for _ in range(max(1, n // 128))], repeats=2)
    results["model_only_images_per_s"] = max(1, n // 128) * 128 / seconds
    results["compute_dtype"] = str(dtype)

    for output in ("patch", "cls"):
        seconds, _ = _timed(lambda: Dinov2Embedder(str(folder), image_size=image_size, batch_size=128, output=output).transform(array), repeats=2)
        results[f"uint8_array_{output}_images_per_s"] = n / seconds
    for n_jobs in (4, 8, 16):
        emb = Dinov2Embedder(str(folder), image_size=image_size, batch_size=128, n_jobs=n_jobs, output="cls")
        emb.transform(paths[:8])
        seconds, _ = _timed(lambda: emb.transform(paths))
        results[f"jpeg_paths_n_jobs{n_jobs}_images_per_s"] = n / seconds
    # Cache: first run and a fully cached rerun (hashing the files only).
    cache = work / "cache"
    emb = Dinov2Embedder(str(folder), image_size=image_size, batch_size=128, embedding_cache=cache, output_dtype="float16")
    first, _ = _timed(lambda: emb.transform(paths))
    second, cached = _timed(lambda: Dinov2Embedder(str(folder), image_size=image_size, embedding_cache=cache, output_dtype="float16").transform(paths))
    results["cache_first_run_s"] = first
    results["cache_cached_run_s"] = second
    results["cache_returns_memmap"] = isinstance(cached, np.memmap)

    # bf16 (default on CUDA) against float32 on the same device.
    if cuda:
        low = Dinov2Embedder(str(folder), image_size=image_size).transform(array[:64])
        high = Dinov2Embedder(str(folder), image_size=image_size, dtype="float32").transform(array[:64])
        a, b = low.reshape(-1, low.shape[-1]), high.reshape(-1, high.shape[-1])
        cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        results["bf16_vs_fp32_patch_cosine_min"] = float(cosine.min())
        results["bf16_vs_fp32_patch_cosine_mean"] = float(cosine.mean())
        results["bf16_vs_fp32_max_abs_diff"] = float(np.abs(low - high).max())

        # A real out-of-memory error: 518 px (1374 tokens) with a huge batch.
        tile = np.random.default_rng(0).integers(0, 256, (16, 518, 518, 3), dtype=np.uint8)
        big = np.repeat(tile, 512, axis=0)  # 8192 images: ~70 GB of MLP activations at once
        emb = Dinov2Embedder(str(folder), image_size=518, batch_size=len(big), output="cls")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            start = time.perf_counter()
            try:
                out = emb.transform(big)
                results["oom_recovered"] = bool(np.isfinite(out).all()) and out.shape == (len(big), backbone.config.hidden_size)
            except torch.cuda.OutOfMemoryError as exc:
                results["oom_recovered"] = f"failed: {exc}"[:300]
            results["oom_seconds"] = time.perf_counter() - start
        results["oom_warnings"] = [str(w.message) for w in caught if "GPU memory" in str(w.message)]
        results["oom_final_batch_size"] = emb._effective_batch_size
        results["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30

    print(json.dumps(results, indent=1))
    name = "".join(c if c.isalnum() else "_" for c in device_name).strip("_").lower()
    for target in [Path(__file__).parent / "results", Path(os.environ["OUT"]) if os.environ.get("OUT") else None]:
        if target is not None:
            target.mkdir(parents=True, exist_ok=True)
            (target / f"embedding_speed_{name}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
