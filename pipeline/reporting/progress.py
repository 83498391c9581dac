"""Progress of a training loop: a live bar on a terminal, a plain line every N steps in the run's log.

A training stage is silent for minutes otherwise. On a terminal a tqdm bar shows the step, the loss
and the ETA; wherever the output goes (a terminal, DVC's pipe, the Prefect UI), one plain line
every ``every`` steps goes through the Prefect run logger (or, outside a run, this module's
logger), e.g. ``train_ar step 400/800 (50%): loss 1.9021, val_loss 1.9310, 7.9 steps/s, ETA 0:51``.
No bar is drawn when the stream is not a terminal, so logs hold no carriage-return garbage; on a
terminal the bar is cleared before a line is logged and redrawn after it, so the two never run
into each other. The rate and ETA count only the steps this process ran (a resumed run starts at
its checkpoint's step).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import IO

LINES_PER_RUN = 20  # default: a line every 5% of the run


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The current Prefect run's logger (terminal and API), else the stage's plain logger (a stage
    folded into an orchestrating task: its stdout is that task's log)."""
    from pipeline.orchestration.lazy_prefect import get_run_logger

    return get_run_logger()


def format_eta(seconds: float) -> str:
    """``H:MM:SS`` above an hour, else ``M:SS``."""
    s = max(0, round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Report ``update(step, logs)`` of a loop that runs steps ``start .. total - 1``.

    ``loss_keys``: the entries of ``logs`` shown (those present), in this order.
    ``every``: a log line every that many steps (default ``total / LINES_PER_RUN``), and one at the end.
    """

    def __init__(self, name: str, total: int, start: int = 0, every: int = 0,
                 loss_keys: tuple[str, ...] = ("loss", "total", "val_loss"), stream: IO[str] | None = None,
                 logger: logging.Logger | logging.LoggerAdapter | None = None,
                 clock=time.monotonic) -> None:
        self.name, self.total, self.start = name, total, start
        self.every = every if every > 0 else max(1, round(total / LINES_PER_RUN))
        self.loss_keys = loss_keys
        self.stream = sys.stderr if stream is None else stream
        self._logger = logger
        self._clock = clock
        self._t0: float | None = None
        self._first: int | None = None  # the first step this process ran
        self.done = start
        self.latest: dict[str, float] = {}
        self.bar = None
        if _is_tty(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=name, unit="step", file=self.stream,
                            dynamic_ncols=True, leave=True)

    @property
    def logger(self) -> logging.Logger | logging.LoggerAdapter:
        if self._logger is None:
            self._logger = _run_logger()
        return self._logger

    def update(self, step: int, logs: dict[str, float] | None = None) -> None:
        """Step ``step`` (0-based) has finished with ``logs``."""
        now = self._clock()
        if self._first is None:
            self._first, self._t0 = step, now
        self.done = step + 1
        for k in self.loss_keys:
            if logs and k in logs:
                self.latest[k] = float(logs[k])
        if self.bar is not None:
            self.bar.update(self.done - self.bar.n)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in self.latest.items()}, refresh=False)
        if self.done % self.every == 0 or self.done == self.total:
            self._log(self.line(now))

    def rate(self, now: float) -> float | None:
        """Steps per second over the steps this process ran (None before two timestamps)."""
        if self._first is None or self._t0 is None or now <= self._t0:
            return None
        ran = self.done - self._first - 1  # the first step's own time is not measured
        return ran / (now - self._t0) if ran > 0 else None

    def line(self, now: float | None = None) -> str:
        now = self._clock() if now is None else now
        pct = 100.0 * self.done / self.total if self.total else 100.0
        parts = [f"{k} {v:.4f}" for k, v in self.latest.items()]
        if (r := self.rate(now)) is not None:
            parts.append(f"{r:.3g} steps/s")
            if self.done < self.total:
                parts.append(f"ETA {format_eta((self.total - self.done) / r)}")
        tail = f": {', '.join(parts)}" if parts else ""
        return f"{self.name} step {self.done}/{self.total} ({pct:.0f}%){tail}"

    def _log(self, text: str) -> None:
        if self.bar is not None:
            self.bar.clear()
        self.logger.info(text)
        if self.bar is not None:
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _is_tty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
