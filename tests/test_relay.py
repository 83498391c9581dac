"""How a stage process's output reaches the orchestrating run: split into lines and progress-bar
redraws, relayed to the log once each, and run with an environment of its own."""

from __future__ import annotations

import io
import logging
import os
import sys
from pathlib import Path

from pipeline.orchestration import dvc_stages, lazy_prefect, relay, stage_process


def test_output_segments_split_lines_and_progress_redraws():
    class Trickle(io.BytesIO):  # one byte per read: every boundary case of a pipe
        def read1(self, n: int = -1) -> bytes:
            return super().read1(1)

    data = b"Running stage 'x':\n\r 10%|#  \r 50%|## \r100%|###\nwin\r\nlast"
    assert list(relay.segments(Trickle(data))) == [
        ("Running stage 'x':", False), ("", True), (" 10%|#", True), (" 50%|##", True),
        ("100%|###", False), ("win", False), ("last", False),
    ]


def test_stage_processes_get_no_run_variables(monkeypatch):
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "x")
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "WARNING")
    env = dvc_stages.child_env("http://127.0.0.1:1/api")
    assert "PREFECT__FLOW_RUN_ID" not in env and env["PREFECT_API_URL"] == "http://127.0.0.1:1/api"
    assert env["PREFECT_LOGGING_LEVEL"] == "INFO" and env[lazy_prefect.FOLD_ENV] == "1"
    assert "%(asctime)" not in str(relay.child_log_env())
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "DEBUG")
    debug = dvc_stages.child_env(None)
    assert debug["PREFECT_LOGGING_LEVEL"] == "DEBUG"
    assert debug.get("PREFECT_API_URL") == os.environ.get("PREFECT_API_URL")  # None: left as it is
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_relay_logs_each_line_once_and_cuts_bars_off_log_records():
    class Capture(logging.Handler):
        def __init__(self):
            super().__init__()
            self.records: list[logging.LogRecord] = []

        def emit(self, record):
            self.records.append(record)

    logger = logging.getLogger("test.relay")
    logger.propagate, logger.level = False, logging.DEBUG
    cap = Capture()
    logger.addHandler(cap)
    now = [0.0]
    r = relay.Relay(logger, clock=lambda: now[0])
    stream = (b"Running stage 'x':\n\r 10%|#  \r 20%|## "  # a bar, then a record closes it
              b"INFO    | Flow run 'y' - hello\n\r 30%|###   "
              b"INFO    | Task run 'z' - later\n"
              b"[vfmtok] stage x: work 1.500 s, imports 0.250 s, prefect 2.000 s\n"
              b"WARNING | Task run 't' - careful\n"
              b"INFO    | a folded stage's record\n")
    for text, redraw in relay.segments(io.BytesIO(stream)):
        r.feed(text, redraw)
        if "hello" in text:
            now[0] += relay.PROGRESS_EVERY_S
    got = [(rec.levelname, rec.getMessage(), getattr(rec, "send_to_api", True)) for rec in cap.records]
    assert got == [
        ("INFO", "Running stage 'x':", True),
        ("INFO", "10%|#", True),  # the first state at once, the next within PROGRESS_EVERY_S dropped
        ("INFO", "Flow run 'y' - hello", False),  # a Prefect run's own record: terminal only
        ("INFO", "30%|###", True),  # PROGRESS_EVERY_S later: the bar's state, cut off the record
        ("INFO", "Task run 'z' - later", False),
        ("INFO", "[vfmtok] stage x: work 1.500 s, imports 0.250 s, prefect 2.000 s", True),
        ("WARNING", "Task run 't' - careful", False),
        ("INFO", "a folded stage's record", True),  # reaches the API only through the relay
    ]
    assert r.times == [stage_process.ProcessTimes("x", 1.5, 0.25, 2.0)]
