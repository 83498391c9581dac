"""A ``dvc`` subprocess's output, relayed line by line to the orchestrating task's Prefect logger.

The output mixes three things, each handled once:
- DVC's own lines and whatever a stage prints: logged as they come (terminal and Prefect API), at
  INFO, but a stage's ``error:`` line (its user error, the reason the run stops) at ERROR;
- a progress bar's redraws (text ended by a bare ``\\r``): one line at most every
  ``PROGRESS_EVERY_S``, so a long stage shows signs of life without flooding the log, and a bar
  left open by a log line is cut off from it instead of running into it;
- the stage process's log records (``LEVEL   | message``): a stage of ours runs folded into the
  relaying task (``pipeline/orchestration/lazy_prefect.py``), so its records reach the API only through this
  relay, under that task, with one timestamp (the relaying logger's). A record of a Prefect run
  logger in the child (``Flow run 'x' - ...``, ``Task run 'x' - ...``: a stage command that is a
  Prefect flow of its own) is in the API already under that run: relayed to the terminal only
  (``send_to_api=False``). Prefect's console formats lose their timestamp in the child
  (:func:`child_log_env`) for the same reason.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pipeline.orchestration.stage_process import ProcessTimes, parse_times

PROGRESS_EVERY_S = 30.0  # how often a running progress bar's state is logged
_LEVEL = r"(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) +\| "
RECORD = re.compile(_LEVEL + r"(?P<msg>.*)")  # a record of the stage process's Prefect logger
RUN_IN = re.compile(_LEVEL + r"(?:Flow run|Task run|prefect)")  # such a record after a bar's text
IN_API = re.compile(r"(?:Flow run|Task run) '[^']*' - ")  # a record a Prefect run logger shipped itself
STAGE_ERROR = re.compile(r"^error: (?P<msg>.+)$")  # a stage's user error (pipeline/stage.py: guarded)


def child_log_env() -> dict[str, str]:
    """Prefect's console formats for the stage processes: the same, less the timestamp."""
    return {
        "PREFECT_LOGGING_FORMATTERS_STANDARD_FORMAT": "%(levelname)-7s | %(name)s - %(message)s",
        "PREFECT_LOGGING_FORMATTERS_STANDARD_FLOW_RUN_FMT":
            "%(levelname)-7s | Flow run %(flow_run_name)r - %(message)s",
        "PREFECT_LOGGING_FORMATTERS_STANDARD_TASK_RUN_FMT":
            "%(levelname)-7s | Task run %(task_run_name)r - %(message)s",
    }


def segments(stream) -> Iterator[tuple[str, bool]]:
    """``(text, is_redraw)`` for every line of ``stream``; a redraw is text ended by a bare ``\\r``
    (a progress bar), which arrives without any newline for as long as the bar runs."""
    buf = b""
    while chunk := stream.read1(1 << 16):
        buf += chunk
        while (ends := [i for i in (buf.find(b"\n"), buf.find(b"\r")) if i >= 0]):
            i = min(ends)
            if i == len(buf) - 1 and buf.endswith(b"\r"):
                break  # a "\r\n" may be split across reads: wait for the next byte
            redraw = buf[i : i + 1] == b"\r" and buf[i + 1 : i + 2] != b"\n"
            yield buf[:i].decode(errors="replace").rstrip(), redraw
            buf = buf[i + (2 if buf[i : i + 2] == b"\r\n" else 1) :]
    if buf:
        yield buf.decode(errors="replace").rstrip(), False


@dataclass
class Relay:
    """Feeds ``(text, is_redraw)`` segments to ``log``; keeps the start and end of the output."""

    log: logging.Logger | logging.LoggerAdapter
    clock: Callable[[], float] = time.monotonic
    head: list[str] = field(default_factory=list)
    tail: deque = field(default_factory=lambda: deque(maxlen=40))
    times: list[ProcessTimes] = field(default_factory=list)
    _last_redraw: float = float("-inf")
    _in_bar: bool = False

    def feed(self, text: str, redraw: bool) -> None:
        if redraw:
            self._in_bar = True
            self._bar_state(text)
            return
        if self._in_bar and (m := RUN_IN.search(text)) and m.start() > 0:
            self._bar_state(text[: m.start()])  # the bar's state, cut off the record after it
            text = text[m.start() :]
        self._in_bar = False
        if text:
            self._emit(text)

    def _bar_state(self, text: str) -> None:
        """A progress bar's current state: logged at most every ``PROGRESS_EVERY_S``."""
        now = self.clock()
        if text.strip() and now - self._last_redraw >= PROGRESS_EVERY_S:
            self._last_redraw = now
            self._emit(text.strip())

    def _emit(self, text: str) -> None:
        if not text:
            return
        if (t := parse_times(text)) is not None:
            self.times.append(t)
        if (m := RECORD.match(text)) is not None:
            extra = {"send_to_api": False} if IN_API.match(m["msg"]) else None
            self.log.log(logging.getLevelName(m["level"]), m["msg"], extra=extra)
        else:
            self.log.log(logging.ERROR if STAGE_ERROR.match(text) else logging.INFO, text)
        self.tail.append(text)
        if len(self.head) < 20:
            self.head.append(text)

    def said(self) -> str:
        """The start and the end of the output (DVC says what it does with a stage first)."""
        return "\n".join(self.head + list(self.tail))
