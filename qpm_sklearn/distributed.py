"""Cluster work on Dask: embed a large collection in shards into one shared embedding cache.

Requires the optional extra ``pip install "qpm_sklearn[distributed]"`` (Dask's
``distributed``). Scheduling, retries, data transfer and worker restarts are Dask's;
this module only cuts the collection into shards, keeps one backbone per worker process
and writes every shard into the embedding cache (:mod:`qpm_sklearn._cache`) that a
single-process ``Dinov2Embedder(embedding_cache=...).transform`` uses, so the result is the
same memory map. Searches over :class:`~qpm_sklearn.QPMClassifier` need nothing from
here: run them under ``joblib.parallel_config(backend="dask")`` (see docs/distributed.md).
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

import joblib
import numpy as np

from . import images as _images
from ._cache import EmbeddingCache
from ._utils import check_int, logger, progress

if TYPE_CHECKING:
    import distributed

    from . import embedding

__all__ = ["embed"]

# One embedder (and so one backbone) per worker process, kept between shards: a shard
# with the same embedder parameters reuses the loaded model instead of reloading it.
_worker_embedder: tuple[str, object] | None = None
_worker_lock = threading.Lock()
# The row keys of the collection this worker last wrote to: (folder, keys).
_worker_collection: tuple[str, np.ndarray] | None = None


def embed(
    embedder: embedding.PatchEmbedder,
    images: _images.Images,
    *,
    client: distributed.Client,
    embedding_cache: str | os.PathLike[str],
    shard_size: int | None = None,
    retries: int = 2,
    verbose: int | bool = False,
) -> np.ndarray:
    """Embed ``images`` on a Dask cluster into one shared embedding cache.

    The collection is cut into shards of ``shard_size`` consecutive images; each shard
    is one Dask task that embeds its images on a worker (the worker's GPU when it has
    one: ``device=None`` resolves on the worker) and writes them into the collection's
    entry under ``embedding_cache``. Rows already in the cache (from an interrupted run, or
    from another collection with the same images and settings) are not recomputed, so
    rerunning after an interruption resumes. A shard whose task raises is retried
    ``retries`` times by Dask; a shard whose worker dies is rescheduled by Dask (up to
    the scheduler's ``distributed.scheduler.allowed-failures``); its partly written rows
    are never served.

    Parameters
    ----------
    embedder : PatchEmbedder or Dinov2Embedder
        Its parameters decide the numbers; its own ``embedding_cache``, ``output_dtype`` and
        ``verbose`` are ignored on the workers. Every worker must resolve the same device
        type and compute dtype (the cache is keyed by them); a worker that does not
        fails its shard with an error saying so.
    images : sequence of paths / PIL images / uint8 arrays, or uint8 ndarray (n, H, W, 3) or (n, H, W)
        File paths must be readable under the same name on every worker (a shared
        filesystem); in-memory images are sent to the workers with their shard.
    client : distributed.Client
        The cluster to run on.
    embedding_cache : str or path-like
        The embedding cache (what ``embedding_cache`` names on the embedder), on a
        filesystem shared by the workers and this process.
    shard_size : int, default=None
        Images per task; None means ``8 * embedder.batch_size``. When it is a multiple
        of ``embedder.batch_size``, every forward pass sees the same images as in a
        single-process ``transform`` of the whole collection, so the embeddings are
        identical to it, not just close.
    retries : int, default=2
        Dask retries of a shard whose task raised.
    verbose : bool, default=False
        Show a progress bar over finished shards on this (the driver's) process.

    Returns
    -------
    embeddings : ndarray
        What ``embedder.set_params(embedding_cache=embedding_cache).transform(images)`` returns when
        run on a worker: the read-only float16 memory map of the cache entry when
        ``embedder.output_dtype="float16"``, a float32 array read from it otherwise.

    Raises
    ------
    RuntimeError
        When shards still fail after their retries; the shards that finished stay in the
        cache, so calling :func:`embed` again computes only the rest.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from distributed import Client, LocalCluster
    >>> from qpm_sklearn import Dinov2Embedder
    >>> from qpm_sklearn.testing import save_random_backbone
    >>> from qpm_sklearn.distributed import embed
    >>> folder = save_random_backbone(tempfile.mkdtemp(), "tiny")  # offline stand-in for a hub id
    >>> images = np.random.default_rng(0).integers(0, 256, (6, 40, 50, 3), dtype=np.uint8)
    >>> embedder = Dinov2Embedder(model=str(folder), image_size=56, device="cpu", batch_size=2)
    >>> with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster, Client(cluster) as client:
    ...     embed(embedder, images, client=client, embedding_cache=tempfile.mkdtemp(), shard_size=2).shape
    (6, 4, 4, 32)
    """
    from distributed import Client, as_completed

    if not isinstance(client, Client):
        raise TypeError(f"client must be a distributed.Client; got {type(client).__name__}.")
    if not isinstance(embedding_cache, (str, os.PathLike)):
        raise TypeError(f"embedding_cache must be a path (str or os.PathLike); got {type(embedding_cache).__name__}.")
    shard_size = check_int(8 * embedder.batch_size if shard_size is None else shard_size, "shard_size", 1)
    retries = check_int(retries, "retries", 0)
    images = _images.check_images(images)
    worker_embedder = _for_workers(embedder).fit(images)  # validates the parameters

    starts = range(0, len(images), shard_size)
    parts = [_take(images, range(s, min(s + shard_size, len(images)))) for s in starts]
    key_parts = client.map(_image_keys, parts, pure=False)
    layout = client.submit(_layout, worker_embedder, pure=False)
    keys = np.concatenate(client.gather(key_parts))
    settings, row_shape = layout.result()
    cache = EmbeddingCache(embedding_cache, settings, keys, row_shape)

    def compute(rows):
        shard_of = rows // shard_size
        shards = [rows[shard_of == shard] for shard in np.unique(shard_of)]
        logger.info("embed: %d of %d shards to compute (%d rows).", len(shards), len(starts), len(rows))
        futures = [
            client.submit(
                _embed_shard, worker_embedder, _take(images, shard), shard,
                os.fspath(embedding_cache), settings, row_shape, str(cache.folder),
                retries=retries, pure=False,
            )
            for shard in shards
        ]  # fmt: skip
        finished = as_completed(futures, raise_errors=False)
        bar = progress(finished, verbose=verbose, desc="Embedding shards", total=len(futures), unit="shard")
        failed = [future for future in bar if future.status == "error"]
        if failed:
            raise RuntimeError(
                f"embed: {len(failed)} of {len(futures)} shards failed after {retries} retries; the "
                f"{len(futures) - len(failed)} finished ones are kept in embedding_cache={os.fspath(embedding_cache)!r} "
                f"and a rerun computes only the rest. First error: {failed[0].exception()!r}"
            ) from failed[0].exception()

    result = cache.fill(compute)
    return result if embedder.output_dtype == "float16" else np.asarray(result, dtype=np.float32)


def _for_workers(embedder):
    """The embedder as the workers run it: no cache of its own, float16 out, quiet."""
    from sklearn.base import clone

    embedder = clone(embedder)
    return embedder.set_params(embedding_cache=None, output_dtype="float16", verbose=False)


def _take(images, rows):
    """The images of ``rows``: a sub-array of an array, a list of the items otherwise."""
    if isinstance(images, np.ndarray):
        return images[np.asarray(rows)]
    return [images[i] for i in rows]


# ----------------------------------------------------------------------------------------
# What runs on the workers
# ----------------------------------------------------------------------------------------


def _image_keys(images) -> np.ndarray:
    """Content hashes of ``images`` (the cache's row keys), ``(len(images), KEY_BYTES)`` uint8."""
    return np.stack([np.frombuffer(_images.image_key(item), np.uint8) for item in images])


def _resident(embedder):
    """This worker process's embedder with ``embedder``'s parameters, loaded at most once."""
    global _worker_embedder
    key = joblib.hash((type(embedder).__module__, type(embedder).__qualname__, embedder.get_params(deep=False)))
    with _worker_lock:
        if _worker_embedder is None or _worker_embedder[0] != key:
            _worker_embedder = None  # free the previous backbone before the next one loads
            _worker_embedder = (key, embedder)
        return _worker_embedder[1]


def _layout(embedder) -> tuple[dict, tuple]:
    """The cache settings and row shape of ``embedder`` as this worker computes it."""
    from ._device import resolve_device, resolve_dtype
    from .embedding import cache_settings

    embedder = _resident(embedder)
    return cache_settings(embedder, resolve_dtype(embedder.dtype, resolve_device(embedder.device)))


def _open_collection(embedding_cache, settings, row_shape, folder) -> EmbeddingCache:
    """The collection the driver opened, from the keys it saved there (not sent with every task).

    Keys that do not hash to ``folder`` (a damaged ``keys.npy``) would open another
    collection, so that is an error rather than a write to the wrong place.
    """
    global _worker_collection
    if _worker_collection is None or _worker_collection[0] != folder:
        keys = np.load(os.path.join(folder, "keys.npy"), allow_pickle=False)
        _worker_collection = (folder, keys)
    cache = EmbeddingCache(embedding_cache, settings, _worker_collection[1], row_shape, copy_from_siblings=False)
    if os.path.abspath(cache.folder) != os.path.abspath(folder):
        _worker_collection = None
        raise RuntimeError(f"embed: {folder}/keys.npy no longer holds the keys of its collection; rerun embed.")
    return cache


def _embed_shard(embedder, images, rows, embedding_cache, settings, row_shape, folder) -> int:
    """Embed the images of ``rows`` that are still missing and store them; the rows computed."""
    embedder = _resident(embedder)
    here = _layout(embedder)
    if here != (settings, tuple(row_shape)):
        raise RuntimeError(
            f"this worker would embed with settings {here[0]} (rows {here[1]}), but the collection "
            f"is cached with {settings} (rows {tuple(row_shape)}): every worker must resolve the same "
            f"device type and compute dtype. Give the embedder an explicit device and dtype."
        )
    cache = _open_collection(embedding_cache, settings, row_shape, folder)
    todo = np.isin(rows, cache.missing(int(rows[0]), int(rows[-1]) + 1))  # another try may have stored some
    if not todo.any():
        return 0
    with _worker_lock:  # one shard at a time per process: the backbone is shared
        values = embedder.transform(_take(images, np.flatnonzero(todo)))
    cache.store(rows[todo], values)
    return int(todo.sum())
