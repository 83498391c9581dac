"""Prefect's ``flow``, ``task`` and ``get_run_logger`` for the stage modules, with Prefect imported
only where a stage actually runs as a Prefect flow.

A stage runs in one of two ways:

- **alone** (``dvc repro``, ``vfmtok-pipeline NAME``, a test): its ``<stage>_flow`` is a Prefect
  flow and its tasks are Prefect tasks, with their retries, states and logs in the UI;
- **folded** into the task of an orchestrating run (``vfmtok-pipeline reproduce`` / ``retrain``
  set :data:`FOLD_ENV` for the stage processes DVC starts): that task already stands for the
  stage in the UI and relays the stage's output into its own log, so the stage process calls the
  same functions plainly and never imports Prefect. That saves each stage process ~2.3 s of
  importing Prefect and ~1 s of flow-run bookkeeping and log shipping (the demo's orchestration
  overhead, ``benchmarks/overhead.py``), and keeps API traffic off the cores training runs on. A
  folded stage that fails is retried as a whole by the orchestrating task, and resumes from its
  checkpoints.

The decorators wrap the function once; which way it runs is decided at call time, so importing a
stage module costs nothing either way.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

FOLD_ENV = "VFMTOK_FOLDED"
STAGE_LOGGER = "vfmtok.stage"
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")  # what Prefect's get_run_logger writes to


def folded() -> bool:
    """Whether this process runs its stage folded into an orchestrating task (no Prefect)."""
    return os.environ.get(FOLD_ENV) == "1"


def in_prefect_run() -> bool:
    """Whether a Prefect flow run is active here (never so while Prefect is not even imported)."""
    if "prefect" not in sys.modules:
        return False
    from prefect.context import FlowRunContext

    return FlowRunContext.get() is not None


class StageTask:
    """A function that is a Prefect task inside a Prefect flow run and a plain call elsewhere."""

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        functools.update_wrapper(self, fn)
        self.fn, self.options = fn, options
        self._task = None

    def as_prefect(self):
        if self._task is None:
            from prefect import task
            from prefect.cache_policies import NO_CACHE

            # Never cached by Prefect: DVC alone decides what is current.
            self._task = task(**{"cache_policy": NO_CACHE, **self.options})(self.fn)
        return self._task

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.as_prefect()(*args, **kwargs) if in_prefect_run() else self.fn(*args, **kwargs)


class StageFlow:
    """A stage's entry: a Prefect flow named ``name``, or, folded, a plain call."""

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        functools.update_wrapper(self, fn)
        self.fn, self.name = fn, name
        self._flow = None

    def as_prefect(self):
        if self._flow is None:
            from prefect import flow

            self._flow = flow(name=self.name)(self.fn)
        return self._flow

    def __call__(self, **parameters: Any) -> Any:
        return self.fn(**parameters) if folded() else self.as_prefect()(**parameters)


def flow(*, name: str) -> Callable[[Callable[..., Any]], StageFlow]:
    return lambda fn: StageFlow(fn, name)


def task(**options: Any) -> Callable[[Callable[..., Any]], StageTask]:
    """``prefect.task(**options)``, applied when the task runs inside a Prefect flow run."""
    return lambda fn: StageTask(fn, options)


def get_run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The current Prefect run's logger, else the stage's plain logger (see :func:`log_to_stdout`)."""
    if in_prefect_run():
        from prefect import get_run_logger as prefect_logger

        return prefect_logger()
    return logging.getLogger(STAGE_LOGGER)


def log_to_stdout() -> None:
    """A folded stage's records as ``LEVEL   | message`` lines on stdout, the form the relay reads."""
    logger = logging.getLogger(STAGE_LOGGER)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(levelname)-7s | %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


class _HidePrefectChatter(logging.Filter):
    """Drops what Prefect's own code writes through the run loggers below ``level`` ("Created task
    run ...", "Finished in state Completed()"); the stage's records pass (their caller is ours)."""

    def __init__(self, level: int, prefect_dir: str) -> None:
        super().__init__()
        self.level, self.prefect_dir = level, prefect_dir

    def filter(self, record: logging.LogRecord) -> bool:
        return (record.levelno >= self.level or not record.name.startswith(RUN_LOGGERS)
                or not record.pathname.startswith(self.prefect_dir))


def show_run_records() -> None:
    """A stage alone, as a Prefect flow: its INFO records on the console and in the API.

    ``PREFECT_LOGGING_LEVEL`` is WARNING by default (``pipeline/orchestration/prefect_env.py``: Prefect's INFO
    chatter would bury a stage's output), and Prefect's run loggers inherit it, so the records a
    stage writes through :func:`get_run_logger` at INFO (the training progress lines, "resumed from
    step N", the stages' summaries) reached neither the console nor the UI. The run loggers go
    to INFO, and the console (the root logger's handlers) keeps dropping Prefect's own records
    below the configured level; the API gets them all, as in any Prefect run. Nothing changes
    when the level is INFO or lower (an orchestrating run's stage commands, a user's choice).
    """
    configured = logging.getLogger("prefect").getEffectiveLevel()
    if configured <= logging.INFO:
        return
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
    prefect_dir = os.path.dirname(sys.modules["prefect"].__file__) + os.sep
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _HidePrefectChatter) for f in handler.filters):
            handler.addFilter(_HidePrefectChatter(configured, prefect_dir))
