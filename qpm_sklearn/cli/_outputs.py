"""Output files: checked before any long work, written under temporary names, moved into place together.

A command that writes several files (a model and its embedder settings, embeddings and their
paths, a CSV and its figures) stages each one as a hidden temporary file beside its destination
(same folder, so the move is a rename on one filesystem), flushed and fsynced. Only when every
file is complete are they renamed over their destinations: the files that describe another first,
the primary file (the model, the array) last, so a reader who finds the new primary file finds
its companions too. A failure while writing (a full disk,
an interrupt) removes the temporary files and leaves every destination as it was.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from .._atomic import fsync_folder
from ._errors import CommandError


def _describe(exc: OSError) -> str:
    return exc.strerror or str(exc)


def check_writable_folder(folder: Path, option: str, shown: Path) -> None:
    """Raise a CommandError unless a file can be created in ``folder`` (probed, not guessed)."""
    if not folder.exists():
        raise CommandError(f"{option} {shown}: the folder {folder} does not exist; create it first")
    if not folder.is_dir():
        raise CommandError(f"{option} {shown}: {folder} is not a folder")
    # os.access says yes to root on a read-only mount; creating a file is the only sure test.
    try:
        descriptor, probe = tempfile.mkstemp(dir=folder, prefix=".qpm-sklearn-probe.")
    except OSError as exc:
        raise CommandError(f"{option} {shown}: cannot write in {folder} ({_describe(exc)})") from None
    os.close(descriptor)
    os.unlink(probe)


def check_output_file(path: Path, option: str) -> Path:
    """``path`` when a file can be written there; else a CommandError naming ``option``."""
    if path.is_dir():
        raise CommandError(f"{option} {path}: is a folder; give a file name")
    check_writable_folder(path.parent if str(path.parent) else Path("."), option, path)
    return path


def prepare_output_folder(path: Path, option: str) -> Path:
    """Create the folder ``path`` (and its parents) if missing and check that files can be written in it."""
    if path.exists() and not path.is_dir():
        raise CommandError(f"{option} {path}: is a file; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"{option} {path}: cannot create this folder ({_describe(exc)})") from None
    check_writable_folder(path, option, path)
    return path


class OutputSet:
    """Files staged beside their destinations, moved into place by :func:`written_together`."""

    def __init__(self) -> None:
        self._moves: list[tuple[Path, Path]] = []
        self._primary: list[tuple[Path, Path]] = []

    def temporary(self, destination: Path, *, primary: bool = False) -> Path:
        """A fresh hidden name beside ``destination`` (same suffix), moved onto it at the end.

        ``primary`` files are moved after all the others.
        """
        destination = Path(destination)
        temporary = destination.with_name(f".{destination.name}.{secrets.token_hex(4)}.tmp{destination.suffix}")
        (self._primary if primary else self._moves).append((temporary, destination))
        return temporary

    def write(self, destination: Path, write: Callable[[BinaryIO], object], *, primary: bool = False) -> None:
        """Stage ``destination`` with the content ``write(handle)`` produces."""

        def write_file(temporary: Path) -> None:
            # "x": never share a file with another writer; the mode follows the umask like open()'s.
            with open(temporary, "xb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())

        self.save(destination, write_file, primary=primary)

    def save(self, destination: Path, save: Callable[[Path], object], *, primary: bool = False) -> Path:
        """Stage ``destination`` as the file ``save(temporary path)`` writes; returns that path."""
        temporary = self.temporary(destination, primary=primary)
        try:
            save(temporary)
        except OSError as exc:  # a full disk, a quota: name the file, say that nothing was replaced
            raise CommandError(f"cannot write {destination} ({_describe(exc)}); no output file was replaced") from exc
        return temporary

    def write_bytes(self, destination: Path, content: bytes, *, primary: bool = False) -> None:
        """Stage ``destination`` with ``content``."""
        self.write(destination, lambda handle: handle.write(content), primary=primary)

    def commit(self) -> None:
        """Move every staged file onto its destination: the primary ones last, else in staging order."""
        self._moves += self._primary
        self._primary = []
        folders = set()
        for position, (temporary, destination) in enumerate(self._moves):
            try:
                os.replace(temporary, destination)
            except BaseException:
                self._moves = self._moves[position:]
                raise
            folders.add(destination.parent)
        self._moves = []
        for folder in folders:
            fsync_folder(folder)

    def discard(self) -> None:
        """Remove every staged file that has not been moved."""
        for temporary, _ in self._moves + self._primary:
            with contextlib.suppress(OSError):
                temporary.unlink()
        self._moves, self._primary = [], []


@contextlib.contextmanager
def written_together() -> Iterator[OutputSet]:
    """Stage files in the ``with`` block; on success move them all into place, on failure none."""
    outputs = OutputSet()
    try:
        yield outputs
        outputs.commit()
    finally:
        outputs.discard()


def file_name_bytes(path: str) -> bytes:
    """``path`` as the bytes the filesystem holds (names that are not valid UTF-8 survive)."""
    return os.fsencode(path)
