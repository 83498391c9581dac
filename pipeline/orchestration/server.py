"""Prefect servers: ``serve`` (the retrain on a cron schedule, and ``reproduce`` on demand) against a
Prefect server, optionally one we start ourselves on 127.0.0.1. (The throw-away API of one run is
``run_api.py``.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from pipeline.layout import Layout
from pipeline.orchestration.run_api import came_up, healthy, stop_server

DEPLOYMENT = "vfmtok-retrain"


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
