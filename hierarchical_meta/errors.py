"""The error policy of the command lines (docs/reliability.md).

Library functions raise specific exceptions naming the bad value and the fix: ValueError for
a bad value, FileNotFoundError, IsADirectoryError, PermissionError, FileExistsError (and
other OSError) for a file, FloatingPointError for a run that diverged. A command line's
``main`` runs its work through :func:`report_errors`, which turns these into one
``error: <message>`` line on stderr and exit status 2; any other exception is a bug and
keeps its traceback. Ctrl-C ends in one line and status 130. ``--debug`` or the environment
variable ``HIERARCHICAL_META_DEBUG=1`` shows the traceback of a user error too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

__all__ = ["USER_ERRORS", "DEBUG_ENV", "EXIT_USER_ERROR", "EXIT_INTERRUPTED", "debug_requested", "one_line",
           "report_errors"]

USER_ERRORS = (ValueError, OSError, FloatingPointError)
DEBUG_ENV = "HIERARCHICAL_META_DEBUG"
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # the shell's status for Ctrl-C


def debug_requested(flag: bool = False, env: str = DEBUG_ENV) -> bool:
    """True when ``flag`` (a ``--debug`` option) or the environment variable ``env`` asks for tracebacks."""
    return flag or os.environ.get(env, "").strip() not in ("", "0")


def one_line(error: BaseException) -> str:
    """The exception's message on one line (whitespace runs, newlines included, become one space)."""
    return " ".join(str(error).split()) or type(error).__name__


def report_errors(work: Callable[[], object], debug: bool = False) -> int:
    """Run ``work()``; 0 when it returns, 2 after an ``error:`` line for a user error (see the module)."""
    try:
        work()
    except USER_ERRORS as error:
        if debug_requested(debug):
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        if debug_requested(debug):
            raise
        print("interrupted (rerun the same command to resume: a fit from its last checkpoint, a study from its "
              "last row)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
