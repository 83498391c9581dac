"""scripts/slurm/: what each node of a Slurm job runs, with stand-ins for ``python`` and ``dvc`` that
record their command lines (no cluster is reachable here; the launch each node then plans is
tests/test_launch.py's)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NODE = REPO / "scripts" / "slurm" / "node.sh"
STANDIN = """#!/bin/bash
echo "{name} $*" >> "$CALLS"
if [ "{name}" = dvc ] && [ "$1" = status ]; then exit "$DVC_STATUS"; fi
"""


@pytest.fixture
def node(tmp_path):
    """Run node.sh as Slurm node K of job 77, in ``tmp_path``; returns (exit code, calls made)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python", "dvc"):
        (bin_dir / name).write_text(STANDIN.format(name=name))
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls.log"

    def run(node_id: int, *args: str, stale: bool = True) -> tuple[int, list[str]]:
        calls.write_text("")
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CALLS": str(calls),
               "SLURM_JOB_ID": "77", "SLURM_NODEID": str(node_id), "DVC_STATUS": "1" if stale else "0"}
        proc = subprocess.run(["bash", str(NODE), *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=30)
        return proc.returncode, calls.read_text().splitlines()

    return run


def test_every_node_runs_the_stage_command(node):
    assert node(0, "train_ar") == (0, ["python -m pipeline.stage train_ar"])
    assert node(3, "sample", "--params", "p.yaml") == (0, ["python -m pipeline.stage sample --params p.yaml"])


def test_under_dvc_node_0_runs_dvc_and_the_others_join_only_what_dvc_runs(node, tmp_path):
    cmd = ("dvc", "repro", "--single-item", "train_ar")
    assert node(0, *cmd) == (0, ["dvc status --quiet train_ar", "dvc repro --single-item train_ar"])
    assert (tmp_path / "logs/train_ar/slurm-77.todo").read_text().strip() == "run"
    assert node(1, *cmd) == (0, ["python -m pipeline.stage train_ar"])

    (tmp_path / "logs/train_ar/slurm-77.todo").unlink()
    ran = node(0, *cmd, stale=False)
    assert ran == (0, ["dvc status --quiet train_ar", "dvc repro --single-item train_ar"])
    assert node(1, *cmd) == (0, [])  # DVC has nothing to run: no rank waits for node 0
    (tmp_path / "logs/train_ar/slurm-77.todo").unlink()
    assert node(0, "dvc", "repro", "--force", "--single-item", "train_ar", stale=False)[0] == 0
    assert node(1, *cmd) == (0, ["python -m pipeline.stage train_ar"])  # forced: it runs


def test_the_batch_script_refuses_no_command():
    proc = subprocess.run(["bash", str(REPO / "scripts" / "slurm" / "stage.sbatch")], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and proc.stderr.startswith("usage: sbatch scripts/slurm/stage.sbatch")
