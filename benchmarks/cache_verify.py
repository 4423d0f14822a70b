"""Read overhead of the embedding cache's verification, in seconds per GB.

Builds a cache of ``--gigabytes`` of float16 patch-grid rows (16 x 16 x 768, the shape of
DINOv2-base at 224 px, committed in blocks of 64 rows as the embedder does), then times,
with the file in the page cache (warm; best of ``--repeats``):

* ``verify``: :meth:`EmbeddingCache.result` -- map the file, hash every committed block;
* ``plain_read``: reading the same bytes once without hashing (``readinto`` a buffer),
  what any consumer of the result pays anyway.

The overhead of verification is ``verify`` per GB; ``plain_read`` puts it in scale. Cold
reads (from disk) add the disk's own time to both. Writes ``cache_verify.json`` to
``--out``.  Run: python benchmarks/cache_verify.py --gigabytes 1 --out benchmarks/results
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dense_cache_key import best_seconds  # noqa: E402
from speed import cpu_name  # noqa: E402

from qpm_sklearn._cache import EmbeddingCache  # noqa: E402

ROW_SHAPE = (16, 16, 768)
BLOCK_ROWS = 64


def build(folder: Path, gigabytes: float) -> EmbeddingCache:
    row_bytes = int(np.prod(ROW_SHAPE)) * 2
    n = max(BLOCK_ROWS, int(gigabytes * 1e9 / row_bytes))
    keys = np.random.default_rng(0).integers(0, 256, (n, 20), dtype=np.uint8)
    cache = EmbeddingCache(folder, {"benchmark": "cache_verify"}, keys, ROW_SHAPE)
    block = np.random.default_rng(1).standard_normal((BLOCK_ROWS, *ROW_SHAPE)).astype(np.float16)
    for start in range(0, n, BLOCK_ROWS):
        rows = np.arange(start, min(start + BLOCK_ROWS, n))
        cache.store(rows, block[: len(rows)])
    return cache


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=1.0, help="size of the cache to build (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions, best kept (default 3)")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for cache_verify.json (default .)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to build the cache (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        cache = build(Path(folder), args.gigabytes)
        data_bytes = cache.n_rows * int(np.prod(ROW_SHAPE)) * 2
        cache.result()  # warm the page cache
        verify = best_seconds(cache.result, args.repeats)
        plain = best_seconds(lambda: _read(cache.folder / "embeddings.npy"), args.repeats)
    gb = data_bytes / 1e9
    result = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "gigabytes": round(gb, 3),
        "rows": int(cache.n_rows),
        "row_shape": list(ROW_SHAPE),
        "block_rows": BLOCK_ROWS,
        "page_cache": "warm",
        "verify_seconds_per_gb": round(verify / gb, 3),
        "plain_read_seconds_per_gb": round(plain / gb, 3),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cache_verify.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _read(path: Path, chunk: int = 64 << 20) -> None:
    """Read every byte of ``path`` once into a reused buffer, without hashing."""
    buffer = bytearray(chunk)
    with open(path, "rb", buffering=0) as handle:
        while handle.readinto(buffer):
            pass


if __name__ == "__main__":
    main()
