"""The throw-away Prefect API of one run: a stage's run alone (``stage_process.py``), one
``vfmtok-pipeline reproduce`` run (``pipeline/orchestration/reproduce.py``), an experiment's
(``pipeline/experiments``).

Started early, so it comes up while the caller imports Prefect and its flows, and tied to the
process that started it: it dies with it even when that process is killed with ``kill -9``
(Prefect's own ephemeral server would live on). A module of its own because a stage process may
import only what ``dvc.yaml`` lists as its code deps (``server.py`` imports the flows).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


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


def dies_with_this_process() -> Callable[[], None] | None:
    """A ``preexec_fn`` after which the child gets SIGTERM when this process dies, however it
    dies (``kill -9`` runs no atexit handler); None where that cannot be had.

    Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``) fires when the *thread* that forked
    the child ends, so it is set only when forking from the main thread, which lives as long as
    the process. The child checks its parent afterwards: a parent that died before the ``prctl``
    would never signal it. SIGTERM, not SIGKILL: uvicorn then shuts the API down cleanly (its
    SQLite database included). Elsewhere the child is stopped at exit only (``atexit``).
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child only calls it
    except (OSError, AttributeError):
        return None
    parent, sig = os.getpid(), int(signal.SIGTERM)

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


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
    this process imports Prefect and the rest (a stage: its module; ``reproduce``: DVC's status
    and the flows), and ``PREFECT_API_URL`` points the run and its stage processes at it. Returns
    it, or None when ``PREFECT_API_URL`` already names a server (the user's own, or a run's).

    It dies with this process (:func:`dies_with_this_process`), where Prefect's own would outlive
    a killed one, and it stays in this process's group, so whatever signals the group (Ctrl-C, a
    CI timeout) reaches it too. Stopped at exit like the ephemeral one: registered before
    Prefect's log and event workers, it stops after they have shipped their last records.
    """
    if os.environ.get("PREFECT_API_URL"):
        return None
    port = free_port()
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
           "PREFECT__SERVER_FINAL": "1"}
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"]
    proc = subprocess.Popen(cmd, env=env, preexec_fn=dies_with_this_process())
    atexit.register(stop_server, proc)
    url = f"http://127.0.0.1:{port}/api"
    os.environ["PREFECT_API_URL"] = url  # read when Prefect is first imported, after this
    return RunApi(url, proc)
