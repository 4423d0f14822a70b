"""The ``qpm-sklearn`` command line: embed images, fit, explain, report, and reproduce the paper's table.

::

    qpm-sklearn embed photos/ --embedding-cache emb/           # resumable: rerun to continue
    qpm-sklearn fit photos/ --embedding-cache emb/ --out model.npz -p n_selected=30
    qpm-sklearn explain model.npz photos/test/ --embedding-cache emb/ --out explained/
    qpm-sklearn report model.npz photos/test/ --embedding-cache emb/ --out report.html
    qpm-sklearn table --dataset cub --root ~/datasets --embedding-cache cache/

``fit`` reads labels from class subfolders (``photos/<class>/<image>``) or takes an array of
embeddings with a labels file. The model is written with :meth:`QPMClassifier.save` (no pickle);
beside it, ``<model>.embedder.json`` keeps the embedder's settings, so ``explain`` and ``report`` embed new
images the way the training images were embedded.

Every expected failure is one line on stderr naming the argument or file at fault, with the exit
status 2 for a usage error, 1 for a data or runtime error and 130 for an interrupt (Ctrl-C);
``--debug`` (or ``QPM_SKLEARN_DEBUG=1``) shows the traceback. Each command lives in its own module
with a ``register(commands, common)`` function that adds its subparser; :data:`COMMANDS` lists them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from typing import NoReturn

from . import _embed, _explain, _fit, _report, _table
from ._console import note, one_line
from ._errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, CommandError

__all__ = ["main", "build_parser", "COMMANDS", "EXIT_ERROR", "EXIT_USAGE", "EXIT_INTERRUPTED"]

#: The modules of the subcommands, in the order ``--help`` lists them.
COMMANDS = (_embed, _fit, _explain, _report, _table)

#: Setting this environment variable to 1 has the effect of ``--debug``.
DEBUG_VARIABLE = "QPM_SKLEARN_DEBUG"
_PROG = "qpm-sklearn"

# Failures a user can meet and fix (bad input, a full disk, a refused parameter): one line. Other
# exceptions are bugs, reported as such (still one line; --debug shows where).
_EXPECTED = (CommandError, OSError, ValueError, TypeError, RuntimeError, ImportError, MemoryError)


class _Parser(argparse.ArgumentParser):
    """argparse's parser with usage errors on one line (the usage itself is in ``--help``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see '{self.prog} --help')\n")


def _common_options() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notes")
    common.add_argument(
        "--debug", action="store_true", help=f"show the traceback of an error (or set {DEBUG_VARIABLE}=1)"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``qpm-sklearn``, one subparser per module of :data:`COMMANDS`.

    Returns
    -------
    parser : argparse.ArgumentParser

    Examples
    --------
    >>> from qpm_sklearn.cli import build_parser
    >>> args = build_parser().parse_args(["fit", "--embeddings", "X.npy", "--labels", "y.txt", "--out", "m.npz"])
    >>> args.command, args.out, args.cpu_sized
    ('fit', 'm.npz', False)
    """
    from .. import __version__

    parser = _Parser(
        prog=_PROG,
        description="Globally interpretable image classifiers on frozen DINOv2 features (DINO-QPM).",
        epilog="Run 'qpm-sklearn COMMAND --help' for a command's options. Exit status: 0 success, 1 data or "
        "runtime error, 2 usage error, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"qpm_sklearn {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _common_options()
    for command in COMMANDS:
        command.register(commands, common)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    note(f"{_PROG}: warning: {one_line(str(message))}")


@contextlib.contextmanager
def _one_line_warnings(debug: bool) -> Iterator[None]:
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _show_warning
        yield


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``qpm-sklearn`` with ``argv`` (default: the process's arguments).

    Parameters
    ----------
    argv : sequence of str, default=None
        The arguments after the program name.

    Returns
    -------
    status : int
        0 on success, 1 for a data or runtime error, 2 for a usage error, 130 when
        interrupted (argparse's own usage errors and ``--help`` raise ``SystemExit``).

    Examples
    --------
    >>> from qpm_sklearn.cli import main
    >>> main(["fit", "--embeddings", "missing.npy", "--labels", "y.txt", "--out", "m.npz"])  # doctest: +SKIP
    qpm-sklearn fit: error: --embeddings missing.npy: no such file
    1
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get(DEBUG_VARIABLE, "") not in ("", "0") or "--debug" in argv
    command = next((a for a in argv if not a.startswith("-")), None)
    prefix = f"{_PROG} {command}" if command in {c for c in _command_names()} else _PROG
    try:
        args = build_parser().parse_args(argv)
        with _one_line_warnings(debug):
            return int(args.handler(args))
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        note(f"{prefix}: interrupted; files being written were left as they were")
        return EXIT_INTERRUPTED
    except _EXPECTED as exc:
        if debug:
            traceback.print_exc()
        status = exc.exit_status if isinstance(exc, CommandError) else EXIT_ERROR
        hint = "" if debug or isinstance(exc, CommandError) else " (--debug shows the traceback)"
        note(f"{prefix}: error: {one_line(str(exc)) or type(exc).__name__}{hint}")
        return status
    except Exception as exc:  # a bug: still one line, with the way to the traceback
        if debug:
            traceback.print_exc()
        note(f"{prefix}: internal error: {type(exc).__name__}: {one_line(str(exc))} (--debug shows the traceback; please report it)")
        return EXIT_ERROR


def _command_names() -> list[str]:
    return [command.__name__.rsplit("._", 1)[-1] for command in COMMANDS]
