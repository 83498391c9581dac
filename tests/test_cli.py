"""The command line: the stages come from ``dvc.yaml`` and each has its module, every command
module is reachable, bad input is one clear line, and ``reproduce`` maps its run to 0/1/2."""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest
import yaml

from pipeline import cli, errors, stage
from pipeline.orchestration import reproduce, run_api
from tests.conftest import REPO


def test_every_dvc_stage_has_its_module_and_every_module_its_stage():
    in_dvc = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    modules = sorted(p.stem for p in (REPO / "pipeline" / "stages").glob("*.py") if p.stem != "__init__")
    assert stage.names() == in_dvc  # dvc.yaml's order
    assert sorted(in_dvc) == modules
    for name in in_dvc:
        assert callable(getattr(importlib.import_module(stage.module_name(name)), f"{name}_flow"))


def test_help_lists_every_stage_and_command(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("    ")}
    assert set(stage.names()) <= listed
    assert {"profile", "check", "deps", "compare", "claims", "rar-vs-raster", "import-weights", "reproduce",
            "generate", "reconstruct", "summary", "serve"} <= listed


def test_every_command_module_is_a_command_of_the_cli():
    names = [c.name for c in cli.commands()]
    assert len(names) == len(set(names))
    for path in (REPO / "pipeline" / "commands").glob("*.py"):
        module = importlib.import_module(f"pipeline.commands.{path.stem}")
        if hasattr(module, "COMMAND"):
            assert module.COMMAND in cli.commands(), path


@pytest.mark.parametrize("entry", [cli.main, stage.main])
def test_an_unknown_stage_is_refused_with_the_known_ones(capsys, entry):
    with pytest.raises(SystemExit) as done:
        entry(["train_gpt"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "invalid choice: 'train_gpt'" in err and "train_ar" in err


def test_no_dvc_yaml_is_one_clear_error(tmp_path):
    with pytest.raises(errors.UserError, match=r"dvc.yaml: cannot read the pipeline's stages"):
        stage.names(tmp_path / "dvc.yaml")


def test_import_weights_names_its_generator_flag(capsys):
    assert cli.main(["import-weights", "--params", "nowhere.yaml"]) == 2
    err = capsys.readouterr().err
    assert err == "error: import-weights: give --tokenizer FILE, --generator FILE or both\n"


class _State:
    def __init__(self, completed: bool, result: object = None):
        self.completed, self.value = completed, result

    def is_completed(self) -> bool:
        return self.completed

    def result(self, raise_on_failure: bool = True) -> object:
        return self.value


@pytest.fixture
def fake_run(monkeypatch):
    """``reproduce`` without DVC or Prefect: the stale stages and the flow's end state as given."""
    calls: dict = {"flows": []}

    def setup(stale: list[str] | None, state: _State | None = None) -> dict:
        monkeypatch.setattr(run_api, "start_run_api", lambda: None)
        monkeypatch.setattr(reproduce, "stale", lambda root, targets: stale)
        flows = types.ModuleType("pipeline.orchestration.flows")
        flows.reproduce_flow = lambda **kw: calls["flows"].append(kw) or state
        monkeypatch.setitem(sys.modules, "pipeline.orchestration.flows", flows)
        return calls

    return setup


def test_reproduce_starts_no_flow_when_dvc_says_up_to_date(fake_run, capsys, tmp_path):
    calls = fake_run([])
    assert cli.main(["--root", str(tmp_path), "reproduce"]) == 0
    assert calls["flows"] == [] and capsys.readouterr().out.startswith("Data and pipelines are up to date")
    fake_run([], _State(True))
    assert cli.main(["--root", str(tmp_path), "reproduce", "--record", "--retries", "0", "b"]) == 0
    (flow,) = calls["flows"]
    assert (flow["targets"], flow["retries"], flow["stale"]) == (["b"], 0, [])


@pytest.mark.parametrize("state, code, line", [
    (_State(False, RuntimeError("stage b exited with 1")), 1, ""),
    (_State(False, errors.UserError("params.yaml: a.n = -1: must be at least 0")), 2,
     "error: params.yaml: a.n = -1: must be at least 0\n"),
])
def test_reproduce_exit_status_is_the_runs_end(fake_run, capsys, tmp_path, state, code, line):
    fake_run(["b"], state)
    assert cli.main(["--root", str(tmp_path), "reproduce"]) == code
    assert capsys.readouterr().err == line


def test_the_stage_list_is_dvc_yamls_next_to_the_package():
    assert stage.DVC_YAML == Path(stage.__file__).resolve().parent.parent / "dvc.yaml" == REPO / "dvc.yaml"
