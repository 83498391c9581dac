"""Named DVC experiments run one after the other, as ``claims`` and ``rar-vs-raster`` make them.

Each is a ``dvc exp run --temp``: it runs in a temporary copy, so the workspace (its params.yaml,
dvc.lock and committed reports) is left as it was, and its results live in the experiment (read
them with ``pipeline.revisions``). The runs share DVC's run cache, so a stage whose code, inputs
and params an earlier run already had is restored, not re-run. They also share one Prefect API,
started once (``start_run_api``): each stage process runs its flow against it instead of starting
a throw-away server of its own (~10-20 s a stage on 2 cores).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from pipeline.orchestration.server import start_run_api
from pipeline.params import load_params, profile_path
from vfmtok import files


def run_experiments(root: str | Path, runs: list[tuple[str, list[str]]], profile: str = "active") -> None:
    """``dvc exp run --temp -n NAME -S KEY=VALUE ...`` for each ``(NAME, [KEY=VALUE, ...])`` in
    order, replacing an experiment of the same name. ``profile``: ``params/<profile>.yaml`` stands
    in for params.yaml while the runs are queued from the workspace (``active``: params.yaml as it
    is); params.yaml is put back as it was afterwards, byte for byte."""
    root = Path(root)
    params_file = root / "params.yaml"
    original = params_file.read_bytes()
    source = None if profile == "active" else profile_path(profile, root)
    if source is not None:
        load_params(source)  # refuse a profile that does not validate before running anything
    if api := start_run_api():
        api.wait_until_healthy()
    if source is not None:
        shutil.copyfile(source, params_file)
    try:
        for name, overrides in runs:
            subprocess.run(["dvc", "exp", "remove", name], cwd=root, capture_output=True)  # may not exist
            cmd = ["dvc", "exp", "run", "--temp", "-n", name]
            for item in overrides:
                cmd += ["-S", item]
            subprocess.run(cmd, cwd=root, check=True)
    finally:
        files.write_bytes(params_file, original)
        if api:
            api.stop()
