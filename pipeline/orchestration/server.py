"""Prefect servers: ``serve`` (the retrain on a cron schedule, and ``reproduce`` on demand) against a
Prefect server, optionally one we start ourselves on 127.0.0.1; and the throw-away API of one
``vfmtok-pipeline reproduce`` run (:func:`start_run_api`)."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline.layout import Layout

DEPLOYMENT = "vfmtok-retrain"


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def ui_url(api_url: str) -> str:
    """The UI's address for an API address (the UI is served beside the API, without ``/api``)."""
    url = api_url.rstrip("/")
    return url[: -len("/api")] if url.endswith("/api") else url


def server_env(port: int) -> dict[str, str]:
    """The environment of ``prefect server start`` on 127.0.0.1:``port``.

    The UI is a JavaScript app that asks ``/ui-settings`` where the API is; the server answers
    from ``PREFECT_UI_API_URL`` (else ``PREFECT_SERVER_API_PORT``), not from ``--port``, so without
    these the UI of a server on any port but 4200 looks for its API on 4200 and shows nothing.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_UI_URL")}
    env.update(PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(port),
               PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api", PREFECT_UI_URL=f"http://127.0.0.1:{port}")
    return env


def start_server(port: int, log_path: Path, timeout: float = 180.0) -> subprocess.Popen:
    """``prefect server start`` on 127.0.0.1 only, its UI pointed at the same port; returns once
    its API answers."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = server_env(port)
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if not came_up(f"http://127.0.0.1:{port}/api", proc, timeout):
        stop_server(proc)
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"prefect server did not start on 127.0.0.1:{port}; {log_path}:\n{tail}")
    return proc


def came_up(api_url: str, proc: subprocess.Popen, timeout: float) -> bool:
    """Wait until the API of server ``proc`` answers (True), it exits or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not healthy(api_url, timeout=1.0):
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def stop_server(proc: subprocess.Popen | None, timeout: float = 30.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunApi:
    """The throw-away API :func:`start_run_api` started: its address and its server process."""

    url: str
    proc: subprocess.Popen

    def wait_until_healthy(self, timeout: float = 120.0) -> None:
        if not came_up(self.url, self.proc, timeout):
            raise RuntimeError(f"the run's Prefect API did not answer at {self.url} within "
                               f"{timeout:.0f} s (server exit status {self.proc.poll()})")

    def stop(self) -> None:
        """Stop it (once the processes that used it are done, or at once if none will) and take
        ``PREFECT_API_URL`` back."""
        stop_server(self.proc)
        os.environ.pop("PREFECT_API_URL", None)


def start_run_api() -> RunApi | None:
    """A throw-away Prefect API for one run, started *before* this process imports Prefect.

    Without ``PREFECT_API_URL`` a flow call starts Prefect's ephemeral server itself: it first
    imports the server app in the calling process (~4.5 s on 2 cores), then starts it in a
    subprocess and waits; only then does anything else happen. Started here instead (the same
    server: uvicorn on the API app, UI off, this ``PREFECT_HOME``'s database), it comes up while
    this process asks DVC's status and imports Prefect, DVC and the flows (~3-4 s), and
    ``PREFECT_API_URL`` points the run and its stage processes at it. Returns it, or None when
    ``PREFECT_API_URL`` already names a server (the user's own). Stopped at exit like the
    ephemeral one: registered before Prefect's log and event workers, it stops after they have
    shipped their last records.
    """
    if os.environ.get("PREFECT_API_URL"):
        return None
    port = free_port()
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
           "PREFECT__SERVER_FINAL": "1"}
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"]
    proc = subprocess.Popen(cmd, env=env)
    atexit.register(stop_server, proc)
    url = f"http://127.0.0.1:{port}/api"
    os.environ["PREFECT_API_URL"] = url  # read when Prefect is first imported, after this
    return RunApi(url, proc)


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

    from pipeline.orchestration.flows import reproduce_flow, retrain_flow

    path = Path(root).resolve()
    url = (None if start else os.environ.get("PREFECT_API_URL")) or f"http://127.0.0.1:{port}/api"
    server = None
    if start:
        log = Path(os.environ.get("PREFECT_HOME", Layout(path).prefect_home)) / "server.log"
        print(f"starting prefect server on 127.0.0.1:{port} (log: {log})")
        server = start_server(port, log)
    elif not healthy(url):
        raise SystemExit(f"no Prefect server answers at {url}: add --start-server, or start one with "
                         f"`PREFECT_UI_API_URL=http://127.0.0.1:{port}/api prefect server start "
                         f"--host 127.0.0.1 --port {port}` (or set PREFECT_API_URL to yours)")
    os.environ["PREFECT_API_URL"] = url  # for the flow-run subprocesses and the stages they start
    print(f"serving retrain/{name} ({cron!r}) and reproduce/vfmtok-reproduce; UI: {ui_url(url)}", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops serving like Ctrl-C
    common = {"root": str(path), "retries": retries, "retry_delay_s": retry_delay_s}
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            prefect.serve(
                retrain_flow.to_deployment(
                    name, cron=cron, parameters={**common, "set_params": set_params or []},
                    description="Scheduled retrain in an isolated clone: the DVC stages, a named DVC "
                                "experiment, then the promotion gate (promote.* in params.yaml).",
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
