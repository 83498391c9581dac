"""DVC stages as Prefect tasks: DVC stays the judge of what is up to date.

:func:`dag_stages` reads the stage list and its order from ``dvc.yaml`` (DVC's own graph and plan,
never a hard-coded list); :func:`run_stages` runs one task per stage, each asking ``dvc repro
--single-item STAGE`` to bring that one stage up to date, so a current stage is skipped by DVC,
not by us. A failing stage is retried with exponential backoff, and each stage's wall time per run
is appended to ``reports/stage_times.{csv,md}``. DVC's and the stages' output goes to Prefect's
logger; a progress bar's redraws are logged at most every ``PROGRESS_EVERY_S``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run, task_run
from prefect.tasks import exponential_backoff

from pipeline.reporting import stage_times
from pipeline.reporting.stage_times import StageTime

PROGRESS_EVERY_S = 30.0  # how often a running progress bar's state is logged
STATUS_LINES = [  # DVC's words for what it did with a stage -> our status
    ("Running stage '{}'", "ran"),
    ("Stage '{}' is cached - skipping run", "restored"),
    ("{} is frozen", "frozen"),
]


class StageFailed(RuntimeError):
    """``dvc repro`` of one stage exited non-zero; the message carries the end of its output."""


@dataclass
class Stage:
    name: str  # DVC's address, what `dvc repro --single-item` takes
    metrics: list[str]  # the stage's metrics files, relative to the project root


def dag_stages(root: str | Path = ".", targets: list[str] | None = None) -> list[Stage]:
    """The stages with a command, in the order DVC itself would reproduce them.

    With ``targets``, only those stages and everything upstream of them (like ``dvc repro T``).
    """
    from dvc.repo import Repo
    from dvc.repo.reproduce import get_active_graph, plan_repro

    root = Path(root).resolve()
    with Repo(str(root)) as repo:
        graph = get_active_graph(repo.index.graph)
        by_address = {_address(s): s for s in graph if s.cmd}
        if unknown := sorted(set(targets or []) - set(by_address)):
            raise ValueError(f"no stage {', '.join(unknown)} in {root} (stages: {', '.join(by_address)})")
        sources = [by_address[t] for t in targets] if targets else None
        return [
            Stage(_address(s), [os.path.relpath(o.fs_path, root) for o in s.outs if o.metric])
            for s in plan_repro(graph, sources) if s.cmd
        ]  # fmt: skip


def _address(stage) -> str:
    """The stage's address from the project root (``Stage.addressing`` is relative to the cwd)."""
    if stage.path_in_repo == "dvc.yaml":
        return stage.name
    return f"{stage.path_in_repo}:{stage.name}"


def _child_env(api_url: str | None) -> dict[str, str]:
    """The environment of DVC and the stage processes it starts.

    The venv's ``bin`` goes first on PATH (``dvc`` and ``vfmtok-pipeline``). Prefect's per-run
    variables (``PREFECT__*``) must not leak into the stages' own flows. Pointing the stages at
    this run's API spares each of them the start of a throw-away ephemeral server (~10 s). The
    stages log at INFO at least, like this flow, so their own messages reach its log too.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT__")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    if env.get("PREFECT_LOGGING_LEVEL", "INFO").upper() in ("WARNING", "ERROR", "CRITICAL"):
        env["PREFECT_LOGGING_LEVEL"] = "INFO"
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def _api_url() -> str | None:
    """This process's Prefect API over HTTP (a real or a subprocess ephemeral server), if any."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        url = str(client.api_url)
    return url if url.startswith(("http://", "https://")) and "ephemeral-prefect" not in url else None


def _segments(stream) -> Iterator[tuple[str, bool]]:
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


def _dvc(root: str | Path, args: list[str], api_url: str | None) -> str:
    """Run ``dvc ARGS`` in ``root``; its output goes to Prefect's logger (terminal and API).

    Every line is logged; a progress bar's redraws at most every ``PROGRESS_EVERY_S``, so a long
    stage shows signs of life in the UI without flooding it. Returns the start and the end of the
    output (DVC says what it does with a stage first); a non-zero exit raises ``StageFailed``.
    """
    log = get_run_logger()
    cmd = ["dvc", *args]
    log.info("$ %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, cwd=root, env=_child_env(api_url), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    head: list[str] = []
    tail: deque[str] = deque(maxlen=40)
    last_redraw = time.monotonic()
    assert proc.stdout is not None
    for line, redraw in _segments(proc.stdout):
        if not line or (redraw and time.monotonic() - last_redraw < PROGRESS_EVERY_S):
            continue
        if redraw:
            last_redraw = time.monotonic()
        log.info(line)
        tail.append(line)
        if len(head) < 20:
            head.append(line)
    if (rc := proc.wait()) != 0:
        raise StageFailed(f"`{' '.join(cmd)}` exited with {rc}:\n" + "\n".join(tail))
    return "\n".join(head + list(tail))


def _work_seconds(root: Path, stage: Stage) -> float | None:
    """The time a stage says its own work took: ``seconds`` in its metrics file(s), else the sum
    of its top-level ``*_seconds`` (e.g. ``train_seconds``); None when it reports neither."""
    total = None
    for rel in stage.metrics:
        try:
            report = json.loads((root / rel).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(report, dict):
            continue
        keys = ["seconds"] if "seconds" in report else [k for k in report if k.endswith("_seconds")]
        values = [float(report[k]) for k in keys if isinstance(report[k], int | float)]
        if values:
            total = (total or 0.0) + sum(values)
    return total


@task(cache_policy=NO_CACHE)
def run_stage(root: str, stage: str, api_url: str | None = None) -> tuple[str, int]:
    """Ask DVC to bring one stage up to date; returns (what DVC did, which attempt this was)."""
    said = _dvc(root, ["repro", "--single-item", stage], api_url)
    status = next((s for pat, s in STATUS_LINES if pat.format(stage) in said), "up to date")
    return status, task_run.run_count


def _verbose_run_logs() -> None:
    """Stage output is logged at INFO: let it through even when PREFECT_LOGGING_LEVEL is WARNING."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)


def run_stages(root: Path, targets: list[str] | None, retries: int, retry_delay_s: float) -> list[StageTime]:
    """One task per stage in DAG order; every stage's wall time goes to reports/ even on failure."""
    log = get_run_logger()
    stages = dag_stages(root, targets)
    log.info("DAG order from dvc.yaml: %s", " -> ".join(s.name for s in stages))
    api_url = _api_url()
    run_name = flow_run.name or "manual"
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    times: list[StageTime] = []
    try:
        for s in stages:
            t0 = time.perf_counter()
            stage_task = run_stage.with_options(
                name=f"stage {s.name}", retries=retries,
                retry_delay_seconds=exponential_backoff(backoff_factor=retry_delay_s),
            )  # fmt: skip
            try:
                status, attempts = stage_task(str(root), s.name, api_url)
            except Exception:
                times.append(StageTime(run_name, started, s.name, "failed", retries + 1,
                                       time.perf_counter() - t0))
                raise
            work = _work_seconds(root, s) if status == "ran" else None
            seconds = time.perf_counter() - t0
            times.append(StageTime(run_name, started, s.name, status, attempts, seconds, work))
    finally:
        if times:
            stage_times.append(root, times)
    return times
