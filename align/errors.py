"""How a user's mistake ends a program: one line that names what was wrong, and exit code 2.

A mistake in what the user gave (a config value, a data file, a model path, the output directory, an
environment name) is not a bug of the program, and a 40-line traceback only hides the one line that
matters. Every recipe's ``if __name__ == "__main__":`` and the ``align`` command run their ``main``
through :func:`run_main`, which catches the user-error types (:func:`user_error_types`), prints
``<prog>: <message>`` to stderr and exits with 2 (the status argparse gives a bad flag). Anything else is
a programming error and keeps its traceback; so does a user error with ``--debug`` on the command line or
``ALIGN_DEBUG=1`` in the environment.

The messages themselves are the raisers' job: each names the file (and line or row), the field or option,
and what was expected. Library code raises the narrowest type that says what went wrong;
:class:`UserError` and its subclasses here are for mistakes that have no better standard type.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "DEBUG_ENV",
    "DEBUG_FLAG",
    "DataError",
    "EXIT_USER_ERROR",
    "ModelPathError",
    "UserError",
    "call_main",
    "debug_enabled",
    "error_line",
    "run_main",
    "strip_debug_flag",
    "user_error_types",
]

DEBUG_FLAG = "--debug"
"""On any recipe's or ``align``'s command line: show the traceback of a user error instead of one line."""
DEBUG_ENV = "ALIGN_DEBUG"
"""The environment variable that does what ``--debug`` does (any value but empty, 0, false, no)."""
EXIT_USER_ERROR = 2
"""The exit status of a program stopped by a user error."""


class UserError(Exception):
    """A mistake in what the user gave; the message names the file, row, field or option and what was
    expected."""


class DataError(UserError, ValueError):
    """A data file or dataset that cannot be read as the project expects; the message names the file and
    the line or row. A ``ValueError``, as the readers raised before it existed."""


class ModelPathError(UserError, OSError):
    """A model path that names neither a usable local folder nor a hub model. An ``OSError``, as
    transformers raises for a model it cannot find."""


# User-error classes of modules that are costly to import (torch, the judge): looked up only in modules
# already loaded, since an error of a module that was never imported cannot have been raised.
_LAZY_USER_ERRORS = (
    ("align.config", "ConfigError"),
    ("align.checkpoint", "CheckpointError"),
    ("align.rl.offline_dataset", "OfflineDataError"),
    ("align.rewards.rubric", "RubricError"),
    ("align.rewards.combine", "NonFiniteRewardError"),
    ("align.rewards.combine", "MissingRewardError"),
    ("align.models", "EmbeddedModelNotInstalledError"),
)
# What the output-directory guard and the loaders raise for a path the user gave.
_PATH_ERRORS = (FileExistsError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception types :func:`run_main` reports on one line: :class:`UserError`, the path errors
    (``FileExistsError``, ``FileNotFoundError``, ``IsADirectoryError``, ``NotADirectoryError``,
    ``PermissionError``), ``align.config.ConfigError``, ``align.checkpoint.CheckpointError``,
    ``align.rl.offline_dataset.OfflineDataError``, ``align.rewards.rubric.RubricError``,
    ``align.rewards.combine.NonFiniteRewardError`` and ``MissingRewardError``, and
    ``align.models.EmbeddedModelNotInstalledError``."""
    types: list[type[BaseException]] = [UserError, *_PATH_ERRORS]
    for module, name in _LAZY_USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type):
            types.append(cls)
    return tuple(types)


def error_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line. An ``OSError`` raised by the system (``[Errno 2] No such file
    or directory: 'x'``) reads ``x: No such file or directory``."""
    text = str(exc)
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None and text.startswith("[Errno"):
        text = f"{exc.filename}: {exc.strerror}"
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(exc).__name__


def debug_enabled() -> bool:
    """Whether ``ALIGN_DEBUG`` asks for tracebacks (set by ``--debug`` too)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def strip_debug_flag(argv: list[str]) -> list[str]:
    """``argv`` without ``--debug``; when it was there, ``ALIGN_DEBUG=1`` is set, so that a recipe that
    ``align train`` runs, or a process the program starts, shows tracebacks too."""
    if DEBUG_FLAG not in argv:
        return list(argv)
    os.environ[DEBUG_ENV] = "1"
    return [a for a in argv if a != DEBUG_FLAG]


def call_main(main: Callable[[], Any], prog: str) -> Any:
    """``main()``, or for a user error (:func:`user_error_types`) ``<prog>: <message>`` on stderr and
    :data:`EXIT_USER_ERROR` returned. With debugging on (:func:`debug_enabled`) the user error propagates
    with its traceback; every other exception always does."""
    try:
        return main()
    except Exception as e:
        if debug_enabled() or not isinstance(e, user_error_types()):
            raise
        print(f"{prog}: {error_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR


def run_main(main: Callable[[], Any], prog: str | None = None) -> None:
    """Run a program's ``main()`` (which reads ``sys.argv``) as its entry point: what every recipe's
    ``if __name__ == "__main__":`` does.

    ``--debug`` is taken off ``sys.argv`` first (:func:`strip_debug_flag`); then :func:`call_main`. An ``int``
    returned (by ``main``, or 2 for a user error) is the exit status; anything else (a recipe's summary)
    means success. ``prog`` defaults to the name of the script in ``sys.argv[0]``.
    """
    prog = prog or Path(sys.argv[0]).stem or "align"
    sys.argv[1:] = strip_debug_flag(sys.argv[1:])
    result = call_main(main, prog)
    if isinstance(result, int) and not isinstance(result, bool):
        raise SystemExit(result)
