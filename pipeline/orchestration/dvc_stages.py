"""DVC stages as Prefect tasks: DVC stays the judge of what is up to date.

:func:`run_stages` runs one task per stage in DVC's order (``dag.py``). Each task first asks DVC's
``status`` in-process whether its stage is stale (no subprocess for a current stage), and if so
runs ``dvc repro --single-item STAGE``, so DVC itself runs, restores (run-cache) or skips the stage.
A stage that fails is retried with exponential backoff, unless its process exited with the user-error
status (``pipeline/stage.py``: one ``error:`` line, exit 2: bad input, which the next attempt would
meet again); that ends the run with the stage's one line. Each stage's wall time per run (split into
the stage's work, its imports and Prefect, as the stage process reports them) is appended to
``reports/stage_times.{csv,md}``. The stage process runs folded into its task
(``pipeline/orchestration/lazy_prefect.py``: no Prefect import, no flow run of its own), so the run is one row
in the UI with a task per stage; DVC's and the stages' output is relayed to that task's log
(``relay.py``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run, task_run
from prefect.tasks import exponential_backoff

from pipeline.errors import UserError, is_user_error, retry_unless_user_error
from pipeline.orchestration.dag import Stage, dag_stages, is_stale, stale_stages
from pipeline.orchestration.lazy_prefect import FOLD_ENV
from pipeline.orchestration.relay import STAGE_ERROR, Relay, child_log_env, segments
from pipeline.orchestration.stage_process import ProcessTimes
from pipeline.reporting import stage_times
from pipeline.reporting.stage_times import StageTime

STATUS_LINES = [  # DVC's words for what it did with a stage -> our status
    ("Running stage '{}'", "ran"),
    ("Stage '{}' is cached - skipping run", "restored"),
    ("{} is frozen", "frozen"),
]


USER_ERROR_STATUS = 2  # a stage process's exit status for bad input (pipeline/stage.py: guarded)
# What DVC says when a stage's command fails (dvc/stage/exceptions.py: StageCmdFailedError); DVC
# itself then exits with 255 whatever the command's status was.
CMD_FAILED = re.compile(r"^ERROR: failed to reproduce '[^']*': failed to run: .*, "
                        r"exited with (?P<status>-?\d+)$")


class StageFailed(RuntimeError):
    """``dvc repro`` of one stage exited non-zero; the message carries the end of its output."""


class StageUserError(StageFailed, UserError):
    """The stage's process exited with :data:`USER_ERROR_STATUS`: its input is wrong, and a retry
    would fail the same way. The message is the stage's own ``error:`` line, without the prefix."""


def failure(cmd: list[str], rc: int, lines: list[str]) -> StageFailed:
    """The exception for ``dvc CMD`` having exited with ``rc`` after printing ``lines``: a user
    error when DVC says the stage's command exited with :data:`USER_ERROR_STATUS`."""
    statuses = [int(m["status"]) for line in lines if (m := CMD_FAILED.match(line))]
    if statuses and statuses[-1] == USER_ERROR_STATUS:
        said = [m["msg"] for line in lines if (m := STAGE_ERROR.match(line))]
        return StageUserError(said[-1] if said else lines[-1])
    return StageFailed(f"`{' '.join(cmd)}` exited with {rc}:\n" + "\n".join(lines))


@dataclass
class DvcRun:
    said: str  # the start and end of the output
    times: list[ProcessTimes]  # what each stage process reported about its time


def child_env(api_url: str | None) -> dict[str, str]:
    """The environment of DVC and the stage processes it starts.

    The venv's ``bin`` goes first on PATH (``dvc`` and ``vfmtok-pipeline``). Our stages run folded
    into the task (:data:`FOLD_ENV`). Prefect's per-run variables (``PREFECT__*``) must not leak
    into a stage command that is a Prefect flow of its own; pointing such a command at this run's
    API spares it the start of a throw-away ephemeral server (~10 s). The stages log at INFO at
    least, like this flow, without timestamps (the relay adds its own).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT__")}
    env[FOLD_ENV] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    if env.get("PREFECT_LOGGING_LEVEL", "INFO").upper() in ("WARNING", "ERROR", "CRITICAL"):
        env["PREFECT_LOGGING_LEVEL"] = "INFO"
    env.update(child_log_env())
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def api_url() -> str | None:
    """This process's Prefect API over HTTP (a real or a subprocess ephemeral server), if any."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        url = str(client.api_url)
    return url if url.startswith(("http://", "https://")) and "ephemeral-prefect" not in url else None


def run_dvc(root: str | Path, args: list[str], api: str | None) -> DvcRun:
    """Run ``dvc ARGS`` in ``root``, its output relayed to Prefect's logger; a non-zero exit
    raises ``StageFailed`` with the end of the output."""
    log = get_run_logger()
    cmd = ["dvc", *args]
    log.info("$ %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, cwd=root, env=child_env(api), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    relay = Relay(log)
    assert proc.stdout is not None
    for text, redraw in segments(proc.stdout):
        relay.feed(text, redraw)
    if (rc := proc.wait()) != 0:
        raise failure(cmd, rc, list(relay.tail))
    return DvcRun(relay.said(), relay.times)


def reported_work_seconds(root: Path, stage: Stage) -> float | None:
    """The time a stage says its own work took: ``seconds`` in its metrics file(s), else the sum
    of its top-level ``*_seconds`` (e.g. ``train_seconds``); None when it reports neither. Used
    for stages whose process does not report its times (not one of ours)."""
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


@dataclass
class StageOutcome:
    status: str  # ran | restored | up to date | frozen
    attempts: int
    times: ProcessTimes | None  # the stage process's own report, when it ran one of ours


@task(cache_policy=NO_CACHE)
def run_stage(root: str, stage: str, api: str | None = None, known: str = "ask") -> StageOutcome:
    """Bring one stage up to date: ``dvc repro --single-item`` (the stage runs folded into this
    task) unless DVC's status says it is current. ``known``: ``stale`` or ``current`` when the
    run's status check already said so and nothing upstream has run since; ``ask`` checks now."""
    if known == "current" or (known == "ask" and not is_stale(root, stage)):
        get_run_logger().info("stage %s is up to date (dvc status)", stage)
        return StageOutcome("up to date", task_run.run_count, None)
    run = run_dvc(root, ["repro", "--single-item", stage], api)
    status = next((s for pat, s in STATUS_LINES if pat.format(stage) in run.said), "up to date")
    return StageOutcome(status, task_run.run_count, run.times[-1] if run.times else None)


def verbose_run_logs() -> None:
    """Stage output is logged at INFO: let it through even when PREFECT_LOGGING_LEVEL is WARNING."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)


def _row(run_name: str, started: str, stage: Stage, root: Path, out: StageOutcome,
         seconds: float) -> StageTime:
    t = out.times
    work = t.work if t else reported_work_seconds(root, stage) if out.status == "ran" else None
    return StageTime(run_name, started, stage.name, out.status, out.attempts, seconds, work,
                     t.imports if t else None, t.prefect if t else None)


def run_stages(root: Path, targets: list[str] | None, retries: int, retry_delay_s: float,
               times_root: Path | None = None, stale: list[str] | None = None) -> list[StageTime]:
    """One task per stage in DAG order; every stage's wall time goes to ``times_root`` (default
    ``root``) ``reports/stage_times.*``, even on failure. ``stale``: DVC's status of these stages
    if the caller has just asked it (else one status check here, for all of them)."""
    log = get_run_logger()
    stages = dag_stages(root, targets)
    log.info("DAG order from dvc.yaml: %s", " -> ".join(s.name for s in stages))
    if stale is None:
        stale = stale_stages(root, [s.name for s in stages], upstream=False)
    stale = set(stale)
    ran = False  # once a stage has run, a stage that was current may not be any more: ask again
    api = api_url()
    run_name = flow_run.name or "manual"
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    times: list[StageTime] = []
    try:
        for s in stages:
            t0 = time.perf_counter()
            stage_task = run_stage.with_options(
                name=f"stage {s.name}", retries=retries, retry_condition_fn=retry_unless_user_error,
                retry_delay_seconds=exponential_backoff(backoff_factor=retry_delay_s),
            )  # fmt: skip
            try:
                known = "stale" if s.name in stale else "ask" if ran else "current"
                out = stage_task(str(root), s.name, api, known)
            except Exception as e:
                times.append(StageTime(run_name, started, s.name, "failed",
                                       1 if is_user_error(e) else retries + 1, time.perf_counter() - t0))
                raise
            times.append(_row(run_name, started, s, root, out, time.perf_counter() - t0))
            ran = ran or out.status in ("ran", "restored")
    finally:
        if times:
            stage_times.append(times_root or root, times)
    return times
