"""Named DVC experiments run one after the other, as ``claims`` and ``rar-vs-raster`` make them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from vfmtok import files


def run_experiments(root: str | Path, runs: list[tuple[str, list[str]]]) -> None:
    """``dvc exp run -n NAME -S KEY=VALUE ...`` for each ``(NAME, [KEY=VALUE, ...])`` in order,
    replacing an experiment of the same name. Like ``dvc exp run`` they work in the workspace, so
    the last run's results and overrides stay applied; ``-S`` rewrites params.yaml (comments and
    layout lost), so the user's own file is kept when the last run leaves its values unchanged."""
    params_file = Path(root) / "params.yaml"
    original = params_file.read_text()
    for name, overrides in runs:
        subprocess.run(["dvc", "exp", "remove", name], cwd=root, capture_output=True)  # may not exist
        cmd = ["dvc", "exp", "run", "-n", name]
        for o in overrides:
            cmd += ["-S", o]
        subprocess.run(cmd, cwd=root, check=True)
    if yaml.safe_load(params_file.read_text()) == yaml.safe_load(original):
        files.write_text(params_file, original)
