"""Atomic file replacement: a reader sees the old file or the new one, never a part.

The content goes to a temporary file with a unique name in the destination's folder
(so that concurrent writers never share one, and ``os.replace`` stays on one
filesystem), is flushed and fsynced, and then replaces the destination; the folder is
fsynced too, so the rename itself survives a power cut. If writing fails, the
temporary file is removed and the destination is untouched.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def replace_atomically(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(handle)`` on a temporary file, then move it to ``path`` atomically."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def write_bytes_atomically(path: str | os.PathLike[str], content: bytes) -> Path:
    """:func:`replace_atomically` for content already in memory."""
    return replace_atomically(path, lambda handle: handle.write(content))


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some filesystems refuse fsync on folders; the rename is still atomic
    finally:
        os.close(descriptor)
