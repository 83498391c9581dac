"""The flows over a tiny DVC project: DAG order from dvc.yaml, retries, stage times, artifacts,
stages folded into their tasks, and the retrain (isolated clone, promotion gate). Prefect runs in
ephemeral mode; the stages are one-line Python commands (a `dvc repro --single-item` ~1 s each).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from pipeline.experiments.revisions import flatten
from pipeline.layout import Layout
from pipeline.orchestration import (
    dag,
    dvc_stages,
    flows,
    metrics_artifacts,
    promotion,
)
from pipeline.params.profiles import profile_text
from pipeline.reporting import stage_times
from tests.conftest import FASHION_MNIST
from vfmtok.config_schema import ConfigError

REPO = Path(__file__).resolve().parents[1]

# Declared out of order on purpose: DVC's graph, not the file order, must decide.
DVC_YAML = """
stages:
  report:
    cmd: python report.py
    deps: [b.txt, c.txt, report.py]
    metrics:
      - metrics.json:
          cache: false
  c:
    cmd: python flaky.py
    deps: [a.txt, flaky.py]
    outs: [c.txt]
  b:
    cmd: python -c "open('b.txt', 'w').write(open('a.txt').read() * 2)"
    deps: [a.txt]
    outs: [b.txt]
  a:
    cmd: python -c "import yaml; open('a.txt','w').write('w '*yaml.safe_load(open('params.yaml'))['a']['n'])"
    params: [a.n]
    outs: [a.txt]
artifacts:
  model:
    path: c.txt
    type: model
"""
PARAMS = "a:\n  n: 3\npromote:\n  metric: lines\n  mode: min\n  min_delta: 1\n"

REPORT = """
import json
words = len(open("b.txt").read().split()) + len(open("c.txt").read().split())
report = {"lines": words, "seconds": 0.25, "nested": {"ok": True}, "files": ["x"]}
json.dump(report, open("metrics.json", "w"))
"""

FLAKY = """
import os, pathlib, shutil, sys
marker = pathlib.Path(os.environ["FLAKY_MARKER"])
if not marker.exists():  # the first attempt fails, later ones succeed
    marker.touch()
    print("flaky: failing once on purpose")
    sys.exit(3)
shutil.copy("a.txt", "c.txt")
"""


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


def _project(root: Path, dvc_yaml: str, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dvc.yaml").write_text(textwrap.dedent(dvc_yaml))
    for name, text in files.items():
        (root / name).write_text(textwrap.dedent(text))
    (root / ".gitignore").write_text(".prefect/\n")
    _git(root, "init", "-q")
    bin_dir = Path(sys.executable).parent
    subprocess.run([bin_dir / "dvc", "init", "-q"], cwd=root, check=True)
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "init")
    return root


@pytest.fixture
def tiny(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FLAKY_MARKER", str(tmp_path / "flaky.marker"))
    files = {"flaky.py": FLAKY, "report.py": REPORT, "params.yaml": PARAMS}
    return _project(tmp_path / "proj", DVC_YAML, files)


def _artifacts(flow_run_name: str) -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[flow_run_name])))
    return {a.key: a.data for a in found}


@pytest.mark.slow
def test_dag_order_comes_from_dvc(tiny):
    names = [s.name for s in dag.dag_stages(tiny)]
    assert names[0] == "a" and names[-1] == "report" and sorted(names[1:3]) == ["b", "c"]
    assert [s.name for s in dag.dag_stages(tiny, ["b"])] == ["a", "b"]
    assert {s.name: s.metrics for s in dag.dag_stages(tiny)}["report"] == ["metrics.json"]


@pytest.mark.slow
def test_flaky_stage_is_retried_and_a_second_run_reruns_nothing(tiny):
    from pipeline.cli import main

    state = flows.reproduce_flow(root=str(tiny), retries=2, retry_delay_s=0, return_state=True)
    assert state.is_completed()
    result = state.result()
    by_stage = {t["stage"]: t for t in result["stages"]}
    assert [t["stage"] for t in result["stages"]][::3] == ["a", "report"]
    assert {t["status"] for t in result["stages"]} == {"ran"}
    assert by_stage["c"]["attempts"] == 2 and by_stage["a"]["attempts"] == 1
    assert by_stage["report"]["work_seconds"] == 0.25
    assert result["metrics"] == {"metrics.json": {"lines": 9, "seconds": 0.25, "nested.ok": True}}
    first = stage_times.read(tiny)
    assert [(r.stage, r.attempts) for r in first][::3] == [("a", 1), ("report", 1)] and len(first) == 4
    run1 = first[0].run
    arts = _artifacts(run1)
    table = json.loads(arts[metrics_artifacts.METRICS_KEY])
    assert {"file": "metrics.json", "metric": "lines", "value": 9} in table
    assert "First run" in arts[metrics_artifacts.DIFF_KEY]

    a_mtime = (tiny / "a.txt").stat().st_mtime_ns
    assert main(["--root", str(tiny), "reproduce", "--retries", "0"]) == 0  # the CLI, in-process:
    assert len(stage_times.read(tiny)) == 4  # nothing stale, so no flow was started
    assert main(["--root", str(tiny), "reproduce", "--retries", "0", "--record"]) == 0
    second = stage_times.read(tiny)[4:]
    assert [r.status for r in second] == ["up to date"] * 4 and all(r.attempts == 1 for r in second)
    assert (tiny / "a.txt").stat().st_mtime_ns == a_mtime
    run2 = second[0].run
    assert json.loads(Layout(tiny).last_metrics.read_text())["run"] == run2 != run1
    diff = _artifacts(run2)[metrics_artifacts.DIFF_KEY]
    assert f"Against run `{run1}`" in diff and "| metrics.json | lines |" not in diff
    md = Layout(tiny).stage_times("md").read_text()
    assert f"| {run1} |" in md and f"| {run2} |" in md and "2 attempts" in md

    # Only what changed runs: the stages DVC's status calls current are skipped without a dvc process.
    (tiny / "report.py").write_text((tiny / "report.py").read_text() + "# edited\n")
    third = flows.reproduce_flow(root=str(tiny), retries=0, return_state=True).result()["stages"]
    assert [(t["stage"], t["status"]) for t in third][::3] == [("a", "up to date"), ("report", "ran")]
    assert {t["status"] for t in third[1:3]} == {"up to date"}


@pytest.mark.slow
def test_stage_failing_every_attempt_fails_the_flow_and_is_recorded(tmp_path):
    root = _project(tmp_path / "bad", """
        stages:
          broken:
            cmd: python -c "import sys; print('boom'); sys.exit(5)"
            outs: [never.txt]
        """, {})
    state = flows.reproduce_flow(root=str(root), retries=1, retry_delay_s=0, return_state=True)
    assert state.is_failed()
    with pytest.raises(dvc_stages.StageFailed, match=r"broken` exited with \d+:\n(.|\n)*boom"):
        state.result()
    (row,) = stage_times.read(root)
    assert (row.stage, row.status, row.attempts) == ("broken", "failed", 2)
    assert not Layout(root).last_metrics.exists()


USER_ERROR = "error: params.yaml: a.n = -1: must be at least 0"
BAD_INPUT = f"""
import sys
with open("attempts.txt", "a") as f:  # one x per attempt
    f.write("x")
print({USER_ERROR!r}, file=sys.stderr)  # what pipeline/stage.py's guarded() prints, and its status
sys.exit(2)
"""


@pytest.mark.slow
def test_a_stage_user_error_is_not_retried_and_ends_the_run_with_its_line(tmp_path, monkeypatch, capsys,
                                                                         caplog):
    """Exit status 2 is a stage's bad input (DVC itself exits 255 and names the status): no retry,
    and ``reproduce`` ends with the stage's own ``error:`` line and status 2, no traceback."""
    from pipeline.cli import main
    from pipeline.orchestration import run_api

    root = _project(tmp_path / "user", """
        stages:
          bad:
            cmd: python bad.py
            deps: [bad.py]
            outs: [never.txt]
        """, {"bad.py": BAD_INPUT})
    monkeypatch.setattr(run_api, "start_run_api", lambda: None)  # this session's API will do
    caplog.set_level(logging.INFO)
    assert main(["--root", str(root), "reproduce", "--retries", "2", "--retry-delay", "0"]) == 2
    assert (root / "attempts.txt").read_text() == "x", "retried bad input"
    out, err = capsys.readouterr()
    assert err.splitlines()[-1] == USER_ERROR
    assert "Traceback" not in out + err and not [r for r in caplog.records if r.exc_info]
    assert any(r.levelno == logging.ERROR and r.getMessage() == USER_ERROR for r in caplog.records)
    (row,) = stage_times.read(root)
    assert (row.stage, row.status, row.attempts) == ("bad", "failed", 1)

    failure = dvc_stages.failure(["dvc", "repro"], 255, [  # any other status is a fault: retried
        "error: looks like bad input", "ERROR: failed to reproduce 'bad': failed to run: python "
        "bad.py, exited with 1"])
    assert type(failure) is dvc_stages.StageFailed


def test_diff_markdown_lists_only_changes_and_rows_are_strict_json():
    prev = {"run": "old", "finished_utc": "t", "metrics": {"r.json": {"acc": 0.5, "n": 10, "name": "x"}}}
    cur = {"r.json": {"acc": 0.75, "n": 10, "name": "y"}, "s.json": {"fid": 3.0}}
    md = metrics_artifacts.diff_markdown(prev, cur, "T")
    assert "| r.json | acc | 0.5 | 0.75 | +0.25 |" in md
    assert "| r.json | name | x | y |  |" in md and "| s.json | fid |  | 3 |  |" in md
    assert "| r.json | n |" not in md and "3 changed, 1 unchanged." in md
    assert "First run" in metrics_artifacts.diff_markdown(None, cur, "T")
    nested = {"a": {"b": 1, "c": [1, 2]}, "d": "s"}
    assert flatten(nested, scalars_only=True) == {"a.b": 1, "d": "s"}
    assert flatten(nested) == {"a.b": 1, "a.c": [1, 2], "d": "s"}
    rows = metrics_artifacts.metrics_rows({"m.json": {"x": float("nan"), "y": 2}})
    assert [r["value"] for r in rows] == ["nan", 2] and json.loads(json.dumps(rows, allow_nan=False))


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_params_overrides_use_dvc_grammar_and_are_validated(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(profile_text("smoke", REPO))
    flows.apply_params(tmp_path, ["prepare.max_per_class_val=3", "extract_features.splits=[val]"])
    data = yaml.safe_load(params.read_text())
    assert data["prepare"]["max_per_class_val"] == 3 and data["extract_features"]["splits"] == ["val"]
    assert "# The smoke profile" in params.read_text()  # DVC's writer keeps the comments
    before = params.read_text()
    with pytest.raises(ConfigError, match="prepare.resolution"):
        flows.apply_params(tmp_path, ["prepare.resolution=4"])
    assert params.read_text() == before


TINY_FLOW = """
import sys
import time
from pipeline.orchestration.lazy_prefect import flow, get_run_logger, task
from pipeline.params.profiles import profile_text

@task()
def step():
    get_run_logger().info("hello from the stage; prefect imported: %s", "prefect" in sys.modules)
    time.sleep(0.3)

@flow(name="hello")
def hello_flow():
    step()
    open("hello.txt", "w").write("hi")
"""
HELLO_CMD = ("python -c \"import sys; sys.path.insert(0, '.'); from pipeline.orchestration.stage_process "
             "import run_stage_flow; run_stage_flow('hello', 'tinyflow', {})\"")


@pytest.mark.slow
def test_stage_runs_folded_into_its_task_without_prefect_and_reports_its_times(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    root = _project(tmp_path / "sub", f"""
        stages:
          hello:
            cmd: {HELLO_CMD}
            deps: [tinyflow.py]
            outs: [hello.txt]
        """, {"tinyflow.py": TINY_FLOW})
    state = flows.reproduce_flow(root=str(root), retries=0, return_state=True)
    assert state.is_completed(), state
    (row,) = stage_times.read(root)
    assert row.status == "ran" and row.work_seconds >= 0.3 and row.prefect_seconds is not None
    assert row.import_seconds is not None and row.seconds > row.work_seconds

    with get_client(sync_client=True) as client:
        parent = client.read_flow_runs(flow_run_filter=FlowRunFilter(name={"any_": [row.run]}))[0]
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id={"any_": [parent.id]}))
        assert children == [], "a folded stage has no flow run of its own"
        tasks = {t.name for t in client.read_task_runs() if t.flow_run_id == parent.id}
        assert any(name.startswith("stage hello") for name in tasks)
    parent_logs = _logs(parent.id, expect="hello from the stage")
    hello = [m for m in parent_logs if "hello from the stage" in m]
    assert hello == ["hello from the stage; prefect imported: False"], "once, in the task's log, no Prefect"
    assert any("Running stage 'hello'" in m for m in parent_logs)
    assert not any(re.search(r"\d\d:\d\d:\d\d\.\d{3} \|", m) for m in parent_logs), "a second timestamp"


@pytest.mark.slow
def test_a_stage_alone_is_a_prefect_flow_with_its_tasks(tmp_path, monkeypatch):
    """Outside an orchestrating run the same module is a Prefect flow; its tasks are Prefect tasks."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "tinyflow.py").write_text(TINY_FLOW)
    import tinyflow

    tinyflow.hello_flow()
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["hello"])))
        assert run.state.is_completed()
        assert any(t.name.startswith("step") for t in client.read_task_runs() if t.flow_run_id == run.id)
    assert any("prefect imported: True" in m for m in _logs(run.id, expect="prefect imported"))


def _logs(flow_run_id, expect: str | None = None, timeout: float = 30.0) -> list[str]:
    """The run's log messages in the API; with ``expect``, once one contains it (records are
    shipped in batches, a moment after they are written) or ``timeout`` has passed."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            messages = [log.message for log in client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)]
        if expect is None or any(expect in m for m in messages) or time.monotonic() > deadline:
            return messages
        time.sleep(0.5)


def _git_out(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.mark.slow
def test_retrain_leaves_the_checkout_alone_and_promotes_only_a_better_model(tiny):
    """Three flow runs in one test (~1 min on 2 cores): the baseline, a better and a worse retrain,
    each retrain in its own clone; the second decision depends on the first promotion."""
    assert flows.reproduce_flow(root=str(tiny), retries=2, retry_delay_s=0, return_state=True).is_completed()
    _git(tiny, "add", "-A")
    _git(tiny, "commit", "-qm", "baseline: lines = 9")
    before = {p: (tiny / p).read_bytes() for p in ("params.yaml", "dvc.lock", "metrics.json", ".gitignore")}

    better = flows.retrain_flow(root=str(tiny), exp_name="fewer", set_params=["a.n=2"], retries=1,
                                retry_delay_s=0)
    p = better["promotion"]
    assert p["promoted"] and (p["value"], p["baseline"]) == (6.0, 9.0)
    assert p["baseline_ref"].startswith("HEAD")
    assert p["versions"] == {"model": "v0.0.1"} and "lower than the current 9" in p["reason"]
    assert _git_out(tiny, "rev-list", "-n1", "model@v0.0.1").strip() == better["commit"]
    assert _git_out(tiny, "status", "--porcelain") == ""  # the checkout is untouched
    assert {p: (tiny / p).read_bytes() for p in before} == before

    worse = flows.retrain_flow(root=str(tiny), exp_name="more", set_params=["a.n=4"], retries=1,
                               retry_delay_s=0)
    p = worse["promotion"]
    assert not p["promoted"] and (p["value"], p["baseline"]) == (12.0, 6.0) and not p["versions"]
    assert p["baseline_ref"].startswith("model@v0.0.1") and "not lower" in p["reason"]
    assert _git_out(tiny, "tag", "--list", "model@*").split() == ["model@v0.0.1"]
    assert _git_out(tiny, "status", "--porcelain") == ""
    assert {p: (tiny / p).read_bytes() for p in before} == before
    assert not any((tiny / ".dvc" / "tmp" / "retrain").iterdir()), "the clones are removed"

    shown = subprocess.run([Path(sys.executable).parent / "dvc", "exp", "show", "--json"], cwd=tiny,
                           capture_output=True, text=True, check=True).stdout
    assert '"fewer"' in shown and '"more"' in shown
    table = subprocess.run([Path(sys.executable).parent / "dvc", "exp", "show", "--csv", "--drop", ".*",
                            "--keep", r"^(Experiment|a\.n)$"], cwd=tiny, capture_output=True, text=True,
                           check=True).stdout
    rows = dict(line.split(",")[:2] for line in table.splitlines()[1:])
    assert (rows["fewer"], rows["more"]) == ("2", "4")  # each experiment keeps its override
    arts = _artifacts(_flow_run_name_of(worse))
    assert "not promoted" in arts[promotion.PROMOTION_KEY] and "model@v0.0.1" in arts[promotion.PROMOTION_KEY]


def _flow_run_name_of(result: dict) -> str:
    return result["stages"][0]["run"]
