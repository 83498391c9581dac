"""The whole DVC pipeline as one Prefect flow, and scheduled retraining on a Prefect server.

DVC stays the judge of what is up to date: the ``reproduce`` flow reads the stage list and its
order from ``dvc.yaml`` (DVC's own graph and plan, never a hard-coded list) and runs one task per
stage, each asking ``dvc repro --single-item STAGE`` to bring that one stage up to date, so a
current stage is skipped by DVC, not by us. A failing stage is retried with exponential backoff.
After the last stage the run publishes a table artifact of every metric (``dvc metrics show``)
and a Markdown artifact of the diff against the previous run's metrics, which are kept in
``.prefect/last_metrics.json`` (git-ignored, per checkout). Each stage's wall time per run is
appended to ``reports/stage_times.{csv,md}``.

The ``retrain`` flow is what the schedule runs: it applies parameter overrides with DVC's own
``-S`` grammar, runs the same per-stage tasks, then ``dvc exp run -n NAME``, which finds every
stage current and records the run as a named DVC experiment with its params and metrics (the
same result as one ``dvc exp run -n NAME -S ...``, with per-stage tasks, retries and timings).
``serve`` puts it on a cron schedule against a ``prefect server`` bound to 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run, task_run
from prefect.tasks import exponential_backoff

from pipeline import artifacts, stage_times
from pipeline.stage_times import StageTime

METRICS_KEY = "vfmtok-metrics"
DIFF_KEY = "vfmtok-metrics-diff"
LAST_METRICS = Path(".prefect") / "last_metrics.json"
DEPLOYMENT = "vfmtok-retrain"
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


def _flatten(data: dict, prefix: str = "") -> dict[str, float | int | str | bool]:
    """Nested metrics -> dotted keys; lists (e.g. skipped files) are details, not metrics."""
    out: dict[str, float | int | str | bool] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        elif isinstance(value, int | float | str | bool) or value is None:
            out[name] = value
    return out


def read_metrics(root: Path) -> dict[str, dict]:
    """``{metrics file: {dotted key: value}}`` of the workspace, from ``dvc metrics show --json``."""
    proc = subprocess.run(["dvc", "metrics", "show", "--json"], cwd=root, env=_child_env(None),
                          capture_output=True, text=True, check=True)
    files = json.loads(proc.stdout or "{}").get("", {}).get("data", {})
    return {f: _flatten(v["data"]) for f, v in sorted(files.items()) if "data" in v}


def metrics_rows(metrics: dict[str, dict]) -> list[dict]:
    """Rows of the table artifact; NaN and infinities as text (the API takes strict JSON only)."""
    rows = []
    for file, values in metrics.items():
        for k, v in sorted(values.items()):
            rows.append({"file": file, "metric": k,
                         "value": str(v) if isinstance(v, float) and not math.isfinite(v) else v})
    return rows


def _fmt(v) -> str:
    return "" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)


def diff_markdown(previous: dict | None, current: dict[str, dict], title: str) -> str:
    """The metrics that changed since the previous run, as a Markdown table."""
    lines = [f"# {title}", ""]
    if previous is None:
        return "\n".join(lines + ["First run: no previous metrics to compare with.", ""])
    old = previous["metrics"]
    lines.append(f"Against run `{previous['run']}` finished {previous['finished_utc']} UTC.")
    lines += ["", "| file | metric | previous | current | change |", "|---|---|---|---|---|"]
    keys = sorted({(f, k) for m in (old, current) for f in m for k in m[f]})
    changed = 0
    for f, k in keys:
        a, b = old.get(f, {}).get(k), current.get(f, {}).get(k)
        if a == b:
            continue
        changed += 1
        numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b))
        delta = f"{b - a:+.6g}" if numeric else ""
        lines.append(f"| {f} | {k} | {_fmt(a)} | {_fmt(b)} | {delta} |")
    lines += ["", f"{changed} changed, {len(keys) - changed} unchanged."]
    return "\n".join(lines) + "\n"


def publish_metrics(root: Path, note: str = "") -> dict[str, dict]:
    """The table and diff artifacts of this run; then this run becomes the 'previous run'."""
    metrics = read_metrics(root)
    run_name = flow_run.name or "manual"
    last = root / LAST_METRICS
    previous = json.loads(last.read_text()) if last.is_file() else None
    suffix = f" ({note})" if note else ""
    create_table_artifact(metrics_rows(metrics), key=METRICS_KEY,
                          description=f"`dvc metrics show` after run {run_name}{suffix}")
    create_markdown_artifact(diff_markdown(previous, metrics, f"Metrics diff, run {run_name}{suffix}"),
                             key=DIFF_KEY, description="metrics changed since the previous run")
    artifacts.write_json(last, {"run": run_name, "metrics": metrics,
                                "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
    return metrics


@flow(name="reproduce")
def reproduce_flow(root: str = ".", targets: list[str] | None = None, retries: int = 2,
                   retry_delay_s: float = 10.0) -> dict:
    """``dvc repro`` as one task per stage, then the metrics and diff artifacts."""
    _verbose_run_logs()
    path = Path(root).resolve()
    times = run_stages(path, targets, retries, retry_delay_s)
    return {"stages": [asdict(t) for t in times], "metrics": publish_metrics(path)}


def apply_params(root: Path, overrides: list[str]) -> None:
    """``dvc exp run -S`` semantics (``[file:]key=value``, Hydra grammar), validated.

    A value the project's params loader rejects leaves the file as it was and raises, so a bad
    override fails the run at once instead of after every retry of the first stage.
    """
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides

    from pipeline.config import ParamsError
    from pipeline.params import load_params

    for rel, items in to_path_overrides(overrides).items():
        path = root / rel
        before = path.read_text()
        try:
            load_params(path)
            ours = True
        except ParamsError:
            ours = False  # not this project's params file (or already broken): DVC's rules only
        apply_overrides(path, items)
        if ours:
            try:
                load_params(path)
            except ParamsError:
                path.write_text(before)
                raise


@task(cache_policy=NO_CACHE)
def record_experiment(root: str, name: str, targets: list[str] | None, api_url: str | None) -> None:
    """``dvc exp run -n NAME``: DVC checks that every stage is current and saves the experiment."""
    _dvc(root, ["exp", "run", "-n", name, *(targets or [])], api_url)


@flow(name="retrain")
def retrain_flow(root: str = ".", exp_name: str = "", set_params: list[str] | None = None,
                 targets: list[str] | None = None, retries: int = 2, retry_delay_s: float = 10.0) -> dict:
    """A scheduled retrain: params overrides, the stages (``targets`` and upstream; default all),
    then a named DVC experiment."""
    _verbose_run_logs()
    path = Path(root).resolve()
    name = exp_name or dt.datetime.now(dt.UTC).strftime("retrain-%Y%m%d-%H%M%S")
    if set_params:
        get_run_logger().info("params overrides: %s", " ".join(set_params))
        apply_params(path, set_params)
    times = run_stages(path, targets, retries, retry_delay_s)
    record_experiment(str(path), name, targets, _api_url())
    metrics = publish_metrics(path, note=f"experiment {name}")
    return {"experiment": name, "stages": [asdict(t) for t in times], "metrics": metrics}


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def start_server(port: int, log_path: Path, timeout: float = 180.0) -> subprocess.Popen:
    """``prefect server start`` on 127.0.0.1 only; returns once its API answers."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_SERVER_API_HOST"] = "127.0.0.1"
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url, deadline = f"http://127.0.0.1:{port}/api", time.monotonic() + timeout
    while not healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(proc)
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"prefect server did not start on 127.0.0.1:{port}; {log_path}:\n{tail}")
        time.sleep(0.5)
    return proc


def stop_server(proc: subprocess.Popen | None, timeout: float = 30.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def serve(
    root: str = ".", cron: str = "0 3 * * 0", name: str = DEPLOYMENT, set_params: list[str] | None = None,
    start: bool = False, port: int = 4200, retries: int = 2, retry_delay_s: float = 10.0,
) -> None:
    """Serve ``retrain`` on ``cron`` (and ``reproduce``, on demand) until interrupted.

    ``start``: also run ``prefect server start`` on 127.0.0.1:``port`` for as long as we serve.
    Without it, the server at ``PREFECT_API_URL`` (default http://127.0.0.1:PORT/api) must be up.
    """
    import prefect
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.types.entrypoint import EntrypointType

    path = Path(root).resolve()
    url = (None if start else os.environ.get("PREFECT_API_URL")) or f"http://127.0.0.1:{port}/api"
    server = None
    if start:
        log = Path(os.environ.get("PREFECT_HOME", path / ".prefect")) / "server.log"
        print(f"starting prefect server on 127.0.0.1:{port} (log: {log})")
        server = start_server(port, log)
    elif not healthy(url):
        raise SystemExit(f"no Prefect server answers at {url}: add --start-server, or start one with "
                         f"`prefect server start --host 127.0.0.1 --port {port}`")
    os.environ["PREFECT_API_URL"] = url  # for the flow-run subprocesses and the stages they start
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops serving like Ctrl-C
    common = {"root": str(path), "retries": retries, "retry_delay_s": retry_delay_s}
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            prefect.serve(
                retrain_flow.to_deployment(
                    name, cron=cron, parameters={**common, "set_params": set_params or []},
                    description="Scheduled retrain: the DVC stages, then `dvc exp run -n NAME`.",
                    entrypoint_type=EntrypointType.MODULE_PATH,
                ),
                reproduce_flow.to_deployment(
                    "vfmtok-reproduce", parameters=common, entrypoint_type=EntrypointType.MODULE_PATH,
                    description="`dvc repro` as a task per stage, on demand.",
                ),
                limit=1,  # one DVC run at a time in this workspace
            )
    except KeyboardInterrupt:
        pass
    finally:
        stop_server(server)


def cli(args) -> int:
    """``vfmtok-pipeline reproduce|serve`` (arguments defined in ``pipeline/__main__.py``)."""
    if args.command == "reproduce":
        state = reproduce_flow(root=args.root, targets=args.targets or None, retries=args.retries,
                               retry_delay_s=args.retry_delay, return_state=True)
        return 0 if state.is_completed() else 1
    serve(args.root, args.cron, args.name, args.set_params, args.start_server, args.port,
          args.retries, args.retry_delay)
    return 0
