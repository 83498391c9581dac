"""Scheduled retraining against a real `prefect server` on a free loopback port.

One documented command, `vfmtok-pipeline serve --start-server --port N --cron ...`, starts the
server (127.0.0.1 only) and serves the `retrain` deployment on a temporary copy of the repository
on the smoke profile. The test triggers a run through the API, waits for it, then checks the run
state, its logs and artifacts, the DVC experiment it recorded, and that stopping `serve` also
stops the server. About 1.5-3 minutes on 2 cores (the server alone takes 15-20 s to start).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.orchestration import flows, metrics_artifacts, server
from tests.conftest import FASHION_MNIST

REPO = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed"),
]


def _env(prefect_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL" and not k.startswith("PREFECT__")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(PREFECT_HOME=str(prefect_home), DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_UI_ENABLED="false", DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1",
               PREFECT_RUNNER_POLL_FREQUENCY="2")  # the served runner picks a new run up within 2 s
    return env


def _run(cwd: Path, env: dict[str, str], *cmd: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The repository's tracked and new files as a fresh git repo on the smoke profile."""
    dst = tmp_path_factory.mktemp("served")
    env = _env(dst / ".prefect")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if (REPO / rel).is_file() and not rel.startswith(("data/", "reports/")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            (dst / rel).write_bytes((REPO / rel).read_bytes())
    _run(dst, env, "git", "init", "-q")
    _run(dst, env, "vfmtok-pipeline", "profile", "smoke")
    _run(dst, env, "git", "add", "-A")
    _run(dst, env, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "smoke")
    return dst


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-5000:]


def _wait_for_deployment(client, name: str, proc: subprocess.Popen, log: Path, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"serve exited with {proc.returncode}:\n{_tail(log)}"
        try:
            return client.read_deployment_by_name(name)
        except Exception:  # server not up yet, or deployment not registered yet
            time.sleep(1)
    pytest.fail(f"deployment {name} did not appear in {timeout} s:\n{_tail(log)}")


def _find_experiment(node, name: str):
    """The `dvc exp show --json` entry named ``name`` (experiments nest under their baseline)."""
    if isinstance(node, dict):
        if node.get("name") == name and "data" in node:
            return node
        node = list(node.values())
    if isinstance(node, list):
        for child in node:
            if (found := _find_experiment(child, name)) is not None:
                return found
    return None


def _logs(client, flow_run_id) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    flt = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    out: list[str] = []
    while batch := client.read_logs(log_filter=flt, limit=200, offset=len(out)):
        out += [log.message for log in batch]
    return out


def test_scheduled_retrain_on_a_real_server(project, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = tmp_path / "serve.log"
    cmd = ["vfmtok-pipeline", "--root", str(project), "serve", "--start-server", "--port", str(port),
           "--cron", "0 3 * * 0", "--retries", "1", "--retry-delay", "1"]
    with open(log, "wb") as out:
        serve = subprocess.Popen(cmd, cwd=project, env=_env(tmp_path / "prefect-home"), stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}), get_client(sync_client=True) as client:
            deployment = _wait_for_deployment(client, f"retrain/{flows.DEPLOYMENT}", serve, log)
            assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * 0"]
            run = run_deployment(
                f"retrain/{flows.DEPLOYMENT}", as_subflow=False, timeout=900, poll_interval=2,
                parameters={"exp_name": "ci-smoke", "set_params": ["extract_features.batch_size=16"]},
            )
            assert run.state is not None and run.state.is_completed(), f"{run.state}:\n{_tail(log)}"
            found = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            artifacts = {a.key: a.data for a in found}
            logs = _logs(client, run.id)
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
    assert not server.healthy(url), "stopping serve must stop the server it started"

    prepare = json.loads((project / "reports" / "prepare.json").read_text())
    assert prepare["images"] == 100  # smoke: (8 + 2) images x 10 classes
    table = json.loads(artifacts[metrics_artifacts.METRICS_KEY])
    assert {"file": "reports/prepare.json", "metric": "images", "value": 100} in table
    assert any(r["file"] == "reports/extract_features.json" for r in table)
    assert "First run" in artifacts[metrics_artifacts.DIFF_KEY]
    assert any("Running stage 'prepare'" in m for m in logs), "stage output must reach the API"
    assert any("Running stage 'extract_features'" in m for m in logs)
    assert any("for flow 'prepare'" in m for m in logs), "the stage's own Prefect logs must be forwarded"

    exp = _find_experiment(json.loads(_run(project, _env(tmp_path / "h"), "dvc", "exp", "show", "--json")),
                           "ci-smoke")
    assert exp is not None, "the run must be recorded as DVC experiment ci-smoke"
    assert exp["data"]["params"]["params.yaml"]["data"]["extract_features"]["batch_size"] == 16
    assert exp["data"]["metrics"]["reports/prepare.json"]["data"]["images"] == 100
    times = (project / "reports" / "stage_times.csv").read_text()
    assert ",prepare,ran," in times and ",extract_features,ran," in times
