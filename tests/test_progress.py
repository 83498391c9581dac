"""The training progress reporter: plain lines every N steps anywhere, a bar only on a terminal."""

from __future__ import annotations

import io
import logging

from pipeline.reporting.progress import Progress, format_eta


class Lines(logging.Handler):
    def __init__(self, stream: io.StringIO | None = None):
        super().__init__()
        self.lines: list[str] = []
        self.stream = stream

    def emit(self, record):
        self.lines.append(record.getMessage())
        if self.stream is not None:  # like a console handler sharing the bar's stream
            self.stream.write(record.getMessage() + "\n")


def _logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"test.progress.{id(handler)}")
    logger.propagate, logger.level = False, logging.INFO
    logger.addHandler(handler)
    return logger


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_line_every_n_steps_with_loss_rate_and_eta_and_no_bar_off_a_terminal():
    stream, lines, clock = io.StringIO(), Lines(), Clock()
    p = Progress("train_ar", total=10, every=4, stream=stream, logger=_logger(lines), clock=clock)
    assert p.bar is None
    for step in range(10):
        clock.t += 0.5  # 2 steps/s
        p.update(step, {"loss": 3.0 - step / 10, "lr": 1e-3, **({"val_loss": 2.5} if step == 7 else {})})
    p.close()
    assert lines.lines == [
        "train_ar step 4/10 (40%): loss 2.7000, 2 steps/s, ETA 0:03",
        "train_ar step 8/10 (80%): loss 2.3000, val_loss 2.5000, 2 steps/s, ETA 0:01",
        "train_ar step 10/10 (100%): loss 2.1000, val_loss 2.5000, 2 steps/s",  # always at the end
    ]
    assert stream.getvalue() == ""  # no carriage-return garbage in a log file or a pipe


def test_a_resumed_run_counts_only_its_own_steps():
    lines, clock = Lines(), Clock()
    p = Progress("train_tokenizer", total=600, start=400, stream=io.StringIO(), logger=_logger(lines),
                 clock=clock)
    assert p.every == 30  # 20 lines a run by default
    for step in range(400, 430):
        clock.t += 0.25
        p.update(step, {"total": 1.0})
    assert lines.lines == ["train_tokenizer step 420/600 (70%): total 1.0000, 4 steps/s, ETA 0:45"]


def test_on_a_terminal_the_bar_is_cleared_before_each_line_and_redrawn_after():
    tty = Tty()
    lines = Lines(tty)
    p = Progress("train_ar", total=6, every=3, stream=tty, logger=_logger(lines), clock=Clock())
    assert p.bar is not None
    for step in range(6):
        p.update(step, {"loss": 1.5})
    p.close()
    out = tty.getvalue()
    assert "train_ar" in out and "6/6" in out and "loss=1.5" in out  # tqdm's own bar
    for line in lines.lines:  # each logged line starts on a cleared line, never after bar text
        (before,) = [chunk for chunk in out.split("\n") if chunk.endswith(line)]
        assert before.rsplit("\r", 1)[-1] == line


def test_eta_format():
    assert format_eta(0) == "0:00" and format_eta(59.6) == "1:00" and format_eta(3725) == "1:02:05"
