"""The command line's exit statuses and the error a command raises for an expected failure."""

from __future__ import annotations

#: Exit statuses of ``qpm-sklearn`` (docs/cli.md): success, a data or runtime error, a usage error
#: (argparse's own status), an interrupt (128 + SIGINT, as shells report Ctrl-C).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """An expected failure: printed as one line on stderr, exit status ``exit_status``.

    The message names the argument or file at fault and what to do about it.
    """

    def __init__(self, message: str, exit_status: int = EXIT_ERROR):
        super().__init__(message)
        self.exit_status = exit_status


class UsageError(CommandError):
    """Options that do not fit together: exit status 2, like argparse's own usage errors."""

    def __init__(self, message: str):
        super().__init__(message, EXIT_USAGE)
