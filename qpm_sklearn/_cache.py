"""On-disk embedding cache: float16 memory-mapped .npy files keyed by content.

Layout under ``cache_dir``::

    <settings digest>/settings.json          what the digest stands for (readable)
    <settings digest>/<collection digest>/
        keys.npy          (n, 20) uint8   content hash of every image, in input order
        embeddings.npy    (n, ...) float16, a memory map filled row by row
        progress.json     {"rows_done": k}: rows < k are complete

The settings digest covers everything that changes the numbers (model and revision,
preprocessing, statistics, image size, output mode, compute dtype); the collection
digest covers the ordered image hashes. So a changed image or setting lands in another
folder and is never served stale. Rows are computed in increasing order; after each
batch the memory map is flushed *before* ``progress.json`` is atomically replaced, so
an interrupted run resumes at ``rows_done``. Rows already present in another
collection with the same settings (a subset, or the same images before one changed)
are copied instead of recomputed. Concurrent writers to one collection are not
supported. Old collections are never deleted: remove folders by hand to reclaim space.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
KEY_BYTES = 20


def _digest(payload: bytes) -> str:
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


def _write_json_atomically(path: Path, content: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _rows_done(folder: Path) -> int:
    try:
        return int(json.loads((folder / "progress.json").read_text())["rows_done"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


class EmbeddingCache:
    """The cache entry of one collection of images under one set of settings.

    Parameters
    ----------
    cache_dir : path-like
    settings : dict
        JSON-serialisable; every value that changes the embeddings.
    keys : ndarray of shape (n, 20), uint8
        Content hashes of the images (:func:`qpm_sklearn.images.image_key`).
    row_shape : tuple
        Shape of one image's embedding.

    After construction ``missing`` holds the (increasing) row ids still to compute;
    feed their embeddings, in that order, to :meth:`store`.
    """

    def __init__(self, cache_dir, settings: dict, keys: np.ndarray, row_shape: tuple):
        settings = dict(settings, format_version=FORMAT_VERSION, row_shape=list(row_shape))
        encoded = json.dumps(settings, sort_keys=True).encode()
        self.settings_folder = Path(cache_dir) / _digest(encoded)
        keys = np.ascontiguousarray(keys, dtype=np.uint8).reshape(len(keys), KEY_BYTES)
        self.folder = self.settings_folder / _digest(keys.tobytes())
        self.folder.mkdir(parents=True, exist_ok=True)
        settings_file = self.settings_folder / "settings.json"
        if not settings_file.exists():
            _write_json_atomically(settings_file, settings)

        shape = (len(keys), *row_shape)
        data_file = self.folder / "embeddings.npy"
        done = _rows_done(self.folder)
        self.data = None
        if done > 0:
            try:
                self.data = np.lib.format.open_memmap(data_file, mode="r+")
            except (OSError, ValueError):
                self.data = None
            if self.data is None or self.data.shape != shape or self.data.dtype != np.float16:
                self.data, done = None, 0
        if self.data is None:
            _write_json_atomically(self.folder / "progress.json", {"rows_done": 0})
            np.save(self.folder / "keys.npy", keys)
            self.data = np.lib.format.open_memmap(data_file, mode="w+", dtype=np.float16, shape=shape)
        self.n_rows = len(keys)
        self.rows_done = min(done, self.n_rows)
        todo = np.arange(self.rows_done, self.n_rows)
        copied = self._copy_from_siblings(keys, todo)
        self.missing = todo[~copied]
        self._next = 0
        if len(self.missing) == 0:
            self._commit(self.n_rows)

    def _copy_from_siblings(self, keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Copy rows whose image is complete in another collection; mask of rows copied."""
        copied = np.zeros(len(rows), dtype=bool)
        if len(rows) == 0:
            return copied
        wanted = {keys[row].tobytes(): i for i, row in enumerate(rows)}
        for sibling in self.settings_folder.iterdir():
            if sibling == self.folder or not sibling.is_dir():
                continue
            done = _rows_done(sibling)
            if done == 0:
                continue
            try:
                sibling_keys = np.load(sibling / "keys.npy")[:done]
                sibling_data = np.load(sibling / "embeddings.npy", mmap_mode="r")
            except (OSError, ValueError):
                continue
            if sibling_data.shape[1:] != self.data.shape[1:]:
                continue
            for source_row, key in enumerate(sibling_keys):
                i = wanted.pop(key.tobytes(), None)
                if i is not None:
                    self.data[rows[i]] = sibling_data[source_row]
                    copied[i] = True
            if not wanted:
                break
        return copied

    def store(self, rows: np.ndarray, values: np.ndarray) -> None:
        """Write the embeddings of the next ``len(rows)`` missing rows and commit them."""
        expected = self.missing[self._next : self._next + len(rows)]
        if not np.array_equal(rows, expected):
            raise RuntimeError("EmbeddingCache.store: rows must follow the order of `missing`.")
        self.data[rows] = values
        self._next += len(rows)
        self._commit(self.missing[self._next] if self._next < len(self.missing) else self.n_rows)

    def _commit(self, rows_done: int) -> None:
        self.data.flush()  # the rows reach the disk before the progress file says so
        _write_json_atomically(self.folder / "progress.json", {"rows_done": int(rows_done)})
        self.rows_done = int(rows_done)

    @property
    def complete(self) -> bool:
        return self.rows_done >= self.n_rows

    def result(self) -> np.ndarray:
        """The finished embeddings as a read-only float16 memory map."""
        if not self.complete:
            raise RuntimeError(f"EmbeddingCache: only {self.rows_done} of {self.n_rows} rows are done.")
        self.data.flush()
        return np.load(self.folder / "embeddings.npy", mmap_mode="r")
