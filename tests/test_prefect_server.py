"""Scheduled retraining against a real `prefect server` on a free (non-default) loopback port.

One documented command, `vfmtok-pipeline serve --start-server --port N --cron ...`, starts the
server (127.0.0.1 only) and serves the `retrain` deployment on a temporary copy of the repository
on the smoke profile. The module triggers one retrain through the API and waits for it; the tests
then check what the server says (its UI pointed at port N, the run with a task per stage, the
stages' output in its log, artifacts, the promotion), what the checkout says (untouched: the retrain ran in
a clone and came back as a DVC experiment and GTO tags), what a real browser renders of the run
page, and that stopping `serve` stops the server. About 3-6 minutes on 2 shared cores: the server
takes 15-20 s to start and the retrain runs all seven smoke stages.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline import stage
from pipeline.orchestration import metrics_artifacts, promotion, server
from tests import browser
from tests.conftest import FASHION_MNIST

REPO = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed"),
]


def _env(prefect_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PREFECT_UI_API_URL") and not k.startswith("PREFECT__")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(PREFECT_HOME=str(prefect_home), DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1",
               PREFECT_RUNNER_POLL_FREQUENCY="2")  # the served runner picks a new run up within 2 s
    return env


def _run(cwd: Path, env: dict[str, str], *cmd: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
    return proc.stdout


def _copy_project(dst: Path, env: dict[str, str]) -> Path:
    """The repository's tracked and new files as a fresh git repo on the smoke profile."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if (REPO / rel).is_file() and (not rel.startswith(("data/", "reports/")) or rel == "data/.gitignore"):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            (dst / rel).write_bytes((REPO / rel).read_bytes())
    _run(dst, env, "git", "init", "-q")
    _run(dst, env, "vfmtok-pipeline", "profile", "smoke")
    _run(dst, env, "git", "add", "-A")
    _run(dst, env, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "smoke")
    return dst


def _free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != 4200:  # the point is a port other than Prefect's default
            return port


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


@dataclass
class Served:
    project: Path
    port: int
    url: str
    proc: subprocess.Popen
    log: Path
    deployment: object
    run: object  # the retrain's FlowRun, finished

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`serve --start-server` on a free port, and one finished retrain run of its deployment."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    tmp = tmp_path_factory.mktemp("served")
    (tmp / "project").mkdir()
    project = _copy_project(tmp / "project", _env(tmp / "setup-home"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = tmp / "serve.log"
    cmd = ["vfmtok-pipeline", "--root", str(project), "serve", "--start-server", "--port", str(port),
           "--cron", "0 3 * * 0", "--retries", "1", "--retry-delay", "1"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=project, env=_env(tmp / "prefect-home"), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    s = None
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}), get_client(sync_client=True) as client:
            deployment = _wait_for_deployment(client, f"retrain/{server.DEPLOYMENT}", proc, log)
            run = run_deployment(
                f"retrain/{server.DEPLOYMENT}", as_subflow=False, timeout=1200, poll_interval=2,
                parameters={"exp_name": "ci-smoke", "set_params": ["extract_features.batch_size=16"]},
            )
        s = Served(project, port, url, proc, log, deployment, run)
        yield s
    finally:
        (s or Served(project, port, url, proc, log, None, None)).stop()


def test_scheduled_retrain_on_a_real_server(served):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    run, project = served.run, served.project
    assert [s.schedule.cron for s in served.deployment.schedules] == ["0 3 * * 0"]
    assert run.state is not None and run.state.is_completed(), f"{run.state}:\n{_tail(served.log)}"
    with urllib.request.urlopen(f"http://127.0.0.1:{served.port}/ui-settings", timeout=10) as r:
        assert json.load(r)["api_url"] == served.url, "the UI must look for its API on the served port"

    with temporary_settings(updates={PREFECT_API_URL: served.url}), get_client(sync_client=True) as client:
        found = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        artifacts = {a.key: a.data for a in found}
        logs = _logs(client, run.id)
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id={"any_": [run.id]}))
        stage_runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=stage.names())))
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))

    # One run in the UI, a task per stage, each stage folded into its task (no runs of its own).
    assert children == [] and stage_runs == [], "stages must not be flow runs of their own"
    stage_tasks = {t.name.rsplit("-", 1)[0]: t for t in tasks if t.name.startswith("stage ")}
    assert sorted(stage_tasks) == sorted(f"stage {s}" for s in stage.names())
    assert all(t.state.is_completed() for t in stage_tasks.values())
    assert any("Running stage 'prepare'" in m for m in logs), "DVC's output must reach the run's log"
    done = [m for m in logs if "train_tokenizer step 6/6 (100%)" in m]
    assert len(done) == 1, f"training progress lines, each once in the run's log: {done}"

    table = json.loads(artifacts[metrics_artifacts.METRICS_KEY])
    assert {"file": "reports/prepare.json", "metric": "images", "value": 100} in table
    assert any(r["file"] == "reports/extract_features.json" for r in table)
    assert "# Retrain `ci-smoke`: promoted" in artifacts[promotion.PROMOTION_KEY]

    # The checkout is untouched; the retrain came back as an experiment and registered versions.
    home = _env(project / ".prefect-h")
    assert _run(project, home, "git", "status", "--porcelain") == ""
    assert not (project / "reports").exists() and not (project / "data" / "prepared").exists()
    exp = _find_experiment(json.loads(_run(project, home, "dvc", "exp", "show", "--json")), "ci-smoke")
    assert exp is not None, "the run must be recorded as DVC experiment ci-smoke"
    assert exp["data"]["params"]["params.yaml"]["data"]["extract_features"]["batch_size"] == 16
    assert exp["data"]["metrics"]["reports/prepare.json"]["data"]["images"] == 100
    assert _run(project, home, "git", "tag", "--list").split() == ["generator@v0.0.1", "tokenizer@v0.0.1"]
    tagged = _run(project, home, "git", "rev-list", "-n1", "generator@v0.0.1").strip()
    assert tagged == exp["rev"], "the registered version is the experiment's commit"
    times = _run(project, home, "git", "show", f"{tagged}:reports/stage_times.csv")
    assert ",prepare,ran," in times and ",extract_features,ran," in times


@pytest.mark.skipif(browser.chromium_path() is None,
                    reason="chromium not installed (scripts/test.sh installs Debian's `chromium` if it can)")
def test_the_ui_shows_the_run_with_its_stages_in_a_real_browser(served, tmp_path):
    page = f"http://127.0.0.1:{served.port}/runs/flow-run/{served.run.id}"
    with browser.Browser() as b:
        b.goto(page)
        text = b.wait_for([served.run.name, "Completed", "DAG order from dvc.yaml",
                           "$ dvc repro --single-item"])
        assert "Can't connect to Server API" not in text
        assert b.click_text("Task Runs")
        b.wait_for([f"stage {s}" for s in stage.names()])
        assert b.click_text("Artifacts")
        b.wait_for([metrics_artifacts.METRICS_KEY, metrics_artifacts.DIFF_KEY, promotion.PROMOTION_KEY])
        shot = b.screenshot(Path(os.environ.get("VFMTOK_UI_SCREENSHOTS", tmp_path)) / "flow-run.png")
        assert shot.stat().st_size > 10_000  # for a person to look at (docs/ui_retrain.png is one)


def test_stopping_serve_stops_the_server(served):
    served.stop()
    assert served.proc.returncode is not None
    assert not server.healthy(served.url), "stopping serve must stop the server it started"
