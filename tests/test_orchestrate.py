"""The `reproduce` flow over a tiny DVC project: DAG order from dvc.yaml, retries, stage times, artifacts.

Runs in Prefect's ephemeral mode (the test session's throw-away PREFECT_HOME); the stages are
one-line Python commands, so each `dvc repro --single-item` costs about a second.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from pipeline.layout import Layout
from pipeline.orchestration import dvc_stages, flows, metrics_artifacts
from pipeline.reporting import stage_times
from pipeline.revisions import flatten
from tests.conftest import FASHION_MNIST
from vfmtok.typed import ConfigError

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
"""

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
    files = {"flaky.py": FLAKY, "report.py": REPORT, "params.yaml": "a:\n  n: 3\n"}
    return _project(tmp_path / "proj", DVC_YAML, files)


def _artifacts(flow_run_name: str) -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[flow_run_name])))
    return {a.key: a.data for a in found}


def test_dag_order_comes_from_dvc(tiny):
    names = [s.name for s in dvc_stages.dag_stages(tiny)]
    assert names[0] == "a" and names[-1] == "report" and sorted(names[1:3]) == ["b", "c"]
    assert [s.name for s in dvc_stages.dag_stages(tiny, ["b"])] == ["a", "b"]
    assert {s.name: s.metrics for s in dvc_stages.dag_stages(tiny)}["report"] == ["metrics.json"]


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
    assert main(["--root", str(tiny), "reproduce", "--retries", "0"]) == 0  # the CLI, in-process
    second = stage_times.read(tiny)[4:]
    assert [r.status for r in second] == ["up to date"] * 4 and all(r.attempts == 1 for r in second)
    assert (tiny / "a.txt").stat().st_mtime_ns == a_mtime
    run2 = second[0].run
    assert json.loads(Layout(tiny).last_metrics.read_text())["run"] == run2 != run1
    diff = _artifacts(run2)[metrics_artifacts.DIFF_KEY]
    assert f"Against run `{run1}`" in diff and "| metrics.json | lines |" not in diff
    md = Layout(tiny).stage_times("md").read_text()
    assert f"| {run1} |" in md and f"| {run2} |" in md and "2 attempts" in md


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
    params.write_text((REPO / "params" / "smoke.yaml").read_text())
    flows.apply_params(tmp_path, ["prepare.max_per_class_val=3", "extract_features.splits=[val]"])
    data = yaml.safe_load(params.read_text())
    assert data["prepare"]["max_per_class_val"] == 3 and data["extract_features"]["splits"] == ["val"]
    assert "# The smoke profile" in params.read_text()  # DVC's writer keeps the comments
    before = params.read_text()
    with pytest.raises(ConfigError, match="prepare.resolution"):
        flows.apply_params(tmp_path, ["prepare.resolution=4"])
    assert params.read_text() == before


def test_output_segments_split_lines_and_progress_redraws():
    class Trickle(io.BytesIO):  # one byte per read: every boundary case of a pipe
        def read1(self, n: int = -1) -> bytes:
            return super().read1(1)

    data = b"Running stage 'x':\n\r 10%|#  \r 50%|## \r100%|###\nwin\r\nlast"
    assert list(dvc_stages._segments(Trickle(data))) == [
        ("Running stage 'x':", False), ("", True), (" 10%|#", True), (" 50%|##", True),
        ("100%|###", False), ("win", False), ("last", False),
    ]


def test_stage_processes_get_no_run_variables(monkeypatch):
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "x")
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "WARNING")
    env = dvc_stages._child_env("http://127.0.0.1:1/api")
    assert "PREFECT__FLOW_RUN_ID" not in env and env["PREFECT_API_URL"] == "http://127.0.0.1:1/api"
    assert env["PREFECT_LOGGING_LEVEL"] == "INFO"
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "DEBUG")
    debug = dvc_stages._child_env(None)
    assert debug["PREFECT_LOGGING_LEVEL"] == "DEBUG"
    assert debug.get("PREFECT_API_URL") == os.environ.get("PREFECT_API_URL")  # None: left as it is
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
