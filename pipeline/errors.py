"""User errors: one line that names the file, key, row or value, a non-zero exit, nothing written.

A bad params file, a bad source folder, a corrupt token file or a missing model folder is the
user's to fix, not a bug: the stage prints ``error: <the one line>`` and exits with 2. A stage
raises these *before* it writes anything (it validates its inputs first), so a failure loses
nothing. Prefect would log each of them with two copies of a traceback (the flow's and the
task's) and retry the task; :func:`quiet_prefect` drops those records for user errors and
:func:`retry_unless_user_error` stops the pointless retries. ``--debug`` (or ``VFMTOK_DEBUG=1``)
brings the tracebacks back.
"""

from __future__ import annotations

import logging
import os
import re

from vfmtok.config_schema import ConfigError
from vfmtok.model_folder import ConfigMismatch

DEBUG_ENV = "VFMTOK_DEBUG"


class UserError(Exception):
    """A problem with the user's input; its message is the whole story, in one line."""


class SourceError(UserError):
    """The image source is missing, empty or not in the expected layout."""


class FormatError(UserError):
    """An artifact on disk that does not match its format (schema, shapes, rows)."""


# FileNotFoundError: a missing weights file, model folder or artifact, always named in the message.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ConfigError, ConfigMismatch, FileNotFoundError)


def is_user_error(exc: BaseException | None) -> bool:
    return isinstance(exc, USER_ERRORS)


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def one_line(exc: BaseException) -> str:
    """The message of a user error, folded onto one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


def retry_unless_user_error(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed task unless the failure is the user's input,
    which the next attempt would meet again."""
    exc = getattr(state, "data", None)
    if not isinstance(exc, BaseException):
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # noqa: BLE001 - no readable result: treat as transient
            return True
    return not is_user_error(exc)


def _subclass_names(classes: tuple[type, ...]) -> set[str]:
    names, todo = set(), list(classes)
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo += cls.__subclasses__()
    return names


class _DropUserErrorRecords(logging.Filter):
    """Drops Prefect's records of a user error: those carrying it (with a traceback) and its
    "Finished in state Failed('... encountered an exception SourceError: ...')" lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if is_user_error(exc):
            return False
        names = "|".join(sorted(_subclass_names(USER_ERRORS)))
        return re.search(rf"encountered an exception:? (?:{names})\b", record.getMessage()) is None


def quiet_prefect() -> None:
    """Drop Prefect's traceback records of user errors (the CLI prints the one line instead)."""
    if debug_enabled():
        return
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropUserErrorRecords) for f in logger.filters):
            logger.addFilter(_DropUserErrorRecords())
