"""A scratch copy of the repository on the smoke profile, and the commands run in it: what the
end-to-end modules share (tests/test_dvc_smoke.py: DVC and the commands; tests/test_launch_e2e.py:
stages on several processes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.orchestration.lazy_prefect import FOLD_ENV

REPO = Path(__file__).resolve().parents[1]


def project_env(cwd: Path, folded: bool = False) -> dict[str, str]:
    """``folded``: stage processes run as ``vfmtok-pipeline reproduce`` runs them, without Prefect
    (~4 s a stage process)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PREFECT_HOME"] = str(cwd / ".prefect")
    if folded:
        env[FOLD_ENV] = "1"
    return env


def run_in(cwd: Path, *cmd: str, folded: bool = False) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=project_env(cwd, folded), capture_output=True, text=True,
                          timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{out[-4000:]}"
    return out


def make_project(dst: Path) -> Path:
    """The repository's tracked and new files in ``dst``, as a fresh git repo on the smoke profile."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if (REPO / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dst / rel)
    for d in ("data", "reports", "logs"):
        shutil.rmtree(dst / d, ignore_errors=True)
    run_in(dst, "git", "init", "-q")
    run_in(dst, "vfmtok-pipeline", "profile", "smoke")
    run_in(dst, "git", "add", "-A")
    run_in(dst, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "smoke")
    return dst


def set_param(project: Path, section: str, key: str, value) -> None:
    path = project / "params.yaml"
    data = yaml.safe_load(path.read_text())
    data[section][key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def stale(project: Path) -> list[str]:
    """The stages `dvc status` lists as changed."""
    return sorted(json.loads(run_in(project, "dvc", "status", "--json")))
