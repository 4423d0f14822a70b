"""What the command line prints: results on stdout, notes and warnings on stderr, one line each."""

from __future__ import annotations

import sys


def printable(text: str, stream) -> str:
    """``text`` as ``stream`` can encode it: a file name that is not valid UTF-8 shows its bytes escaped."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    return text.encode(encoding, "backslashreplace").decode(encoding)


def one_line(text: str) -> str:
    """``text`` with its lines joined by spaces (a message spread over lines stays one line)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def say(text: str) -> None:
    """A result line on stdout."""
    sys.stdout.write(printable(text, sys.stdout) + "\n")


def note(text: str) -> None:
    """A progress note on stderr."""
    sys.stderr.write(printable(one_line(text), sys.stderr) + "\n")
    sys.stderr.flush()
