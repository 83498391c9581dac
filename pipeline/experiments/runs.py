"""Named DVC experiments run one after the other, as ``claims`` and ``rar-vs-raster`` make them.

Each is a ``dvc exp run --temp``: it runs in a temporary copy, so the workspace (its params.yaml,
dvc.lock and committed reports) is left as it was, and its results live in the experiment (read
them with ``pipeline.experiments.revisions``). The runs share DVC's run cache, so a stage whose code, inputs
and params an earlier run already had is restored, not re-run (but not a training stage:
``run_from`` starts runs from an experiment's results). They also share one Prefect API, started
once (``start_run_api``): each stage process runs its flow against it instead of starting a
throw-away server of its own (~10-20 s a stage on 2 cores).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from pipeline.errors import UserError
from pipeline.layout import Layout
from pipeline.orchestration.run_api import RunApi, start_run_api
from pipeline.params.profiles import load_profile, write_profile
from vfmtok import files


def existing(root: str | Path) -> set[str]:
    """The names of the experiments this repository holds, on any baseline commit."""
    out = subprocess.run(["dvc", "exp", "list", "--all-commits", "--name-only"], cwd=root,
                         capture_output=True, text=True, check=True).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def run_experiments(root: str | Path, runs: list[tuple[str, list[str]]], profile: str = "active") -> None:
    """``dvc exp run --temp -n NAME -S KEY=VALUE ...`` for each ``(NAME, [KEY=VALUE, ...])`` in
    order, replacing an experiment of the same name. ``profile``: ``params/<profile>.yaml`` stands
    in for params.yaml while the runs are queued from the workspace (``active``: params.yaml as it
    is); params.yaml is put back as it was afterwards, byte for byte."""
    if not runs:
        return
    root = Path(root)
    params_file = root / "params.yaml"
    original = params_file.read_bytes()
    if profile != "active":
        load_profile(profile, root)  # refuse a bad profile before running anything
    api = _shared_api()
    if profile != "active":
        write_profile(profile, root)
    try:
        for name, overrides in runs:
            _exp_run(root, name, overrides, temp=True)
    finally:
        files.write_bytes(params_file, original)
        if api:
            api.stop()


def run_from(root: str | Path, runs: list[tuple[str, list[str]]], base: str) -> None:
    """Runs that start from experiment ``base``'s results and re-run only what their overrides
    change (a CFG sweep: sample and evaluate). They run in the workspace, not a ``--temp`` copy: a
    copy has none of the outputs, and DVC's run cache cannot restore a training stage (it keeps no
    entry for a stage with a persistent output; the checkpoints are). So the workspace must have
    no uncommitted changes; ``dvc exp apply`` puts the base there, and afterwards the committed
    files and the data of its dvc.lock (``dvc checkout``) are put back."""
    if not runs:
        return
    root = Path(root)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                           capture_output=True, text=True, check=True).stdout.split("\n")[0]
    if dirty:
        raise UserError(f"{root}: uncommitted changes ({dirty.strip()}, ...): commit or stash them "
                        f"first; runs from experiment {base} use the workspace")
    api = _shared_api()
    try:
        subprocess.run(["dvc", "exp", "apply", base], cwd=root, check=True)
        _keep_code(root)
        for name, overrides in runs:
            _exp_run(root, name, overrides, temp=False)
    finally:
        subprocess.run(["git", "checkout", "HEAD", "--", "."], cwd=root, check=True)
        subprocess.run(["dvc", "checkout", "--force", "--quiet"], cwd=root, check=False)
        if api:
            api.stop()


def _keep_code(root: Path) -> None:
    """After ``dvc exp apply``: everything but the base's params, lock and stage outputs back as
    committed, so the runs use this revision's code (a stage whose code differs re-runs)."""
    layout = Layout(Path("."))
    outputs = (f"{layout.data.as_posix()}/", f"{layout.reports.as_posix()}/")
    changed = subprocess.run(["git", "diff", "--name-only", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.split()
    code = [p for p in changed if p not in ("params.yaml", "dvc.lock") and not p.startswith(outputs)]
    if code:
        subprocess.run(["git", "checkout", "HEAD", "--", *code], cwd=root, check=True)


def _shared_api() -> RunApi | None:
    """The one Prefect API the runs' stage processes share (None: ``PREFECT_API_URL`` names one)."""
    if api := start_run_api():
        api.wait_until_healthy()
    return api


def _exp_run(root: Path, name: str, overrides: list[str], temp: bool) -> None:
    """One ``dvc exp run -n NAME -S ...``, replacing an experiment of the same name."""
    subprocess.run(["dvc", "exp", "remove", name], cwd=root, capture_output=True)  # may not exist
    cmd = ["dvc", "exp", "run", *(["--temp"] if temp else []), "-n", name]
    for item in overrides:
        cmd += ["-S", item]
    subprocess.run(cmd, cwd=root, check=True)
