"""Atomic file replacement: a reader sees the old file or the new one, never a part.

The content goes to a temporary file with a unique name in the destination's folder
(so that concurrent writers never share one, and ``os.replace`` stays on one
filesystem), is flushed and fsynced, and then replaces the destination; the folder is
fsynced too, so the rename itself survives a power cut. If writing fails, the
temporary file is removed and the destination is untouched.

**Permissions** are those ``open(path, "wb")`` (and so ``np.save``) would give: a new
file gets ``0o666`` less the process's umask (``0o644`` under the usual umask 022), and
a file that is replaced keeps its mode. The temporary file is created with
``os.open(..., 0o666)``, so the kernel applies the umask; the umask is never read or
changed (changing it would race with other threads creating files).
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def replace_atomically(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(handle)`` on a temporary file, then move it to ``path`` atomically."""
    path = Path(path)
    descriptor, temporary = _create_temporary(path)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            _keep_mode(handle.fileno(), path)
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)
    return path


def write_bytes_atomically(path: str | os.PathLike[str], content: bytes) -> Path:
    """:func:`replace_atomically` for content already in memory."""
    return replace_atomically(path, lambda handle: handle.write(content))


# Flags of a new, exclusively created temporary file (O_BINARY matters on Windows only).
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
_NAME_ATTEMPTS = 100


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new file beside ``path`` with a unique name, mode ``0o666`` less the umask: (descriptor, path)."""
    for _ in range(_NAME_ATTEMPTS):
        temporary = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(temporary, _CREATE_FLAGS, 0o666), temporary
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}: {_NAME_ATTEMPTS} names were taken.")


def _keep_mode(descriptor: int, path: Path) -> None:
    """Give the temporary file the mode of the file it replaces, if there is one (as ``open(path, "wb")`` keeps it)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:  # no file yet (or unreadable): the umask's mode stays
        return
    if hasattr(os, "fchmod"):  # POSIX; Windows has only the read-only bit, which a new file lacks anyway
        os.fchmod(descriptor, mode)


def fsync_folder(folder: Path) -> None:
    """Flush ``folder``'s entries to disk, so that a rename into it survives a power cut (where the OS allows)."""
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
