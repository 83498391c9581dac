"""Named DVC experiments run one after the other, as ``claims`` and ``rar-vs-raster`` make them.

Each is a ``dvc exp run --temp``: it runs in a temporary copy, so the workspace (its params.yaml,
dvc.lock and committed reports) is left as it was, and its results live in the experiment (read
them with ``pipeline.revisions``). The runs share DVC's run cache, so a stage whose code, inputs
and params an earlier run already had is restored, not re-run (a training stage only from a
``base``). They also share one Prefect API, started once (``start_run_api``): each stage process
runs its flow against it instead of starting a throw-away server of its own (~10-20 s a stage on
2 cores).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from pipeline.orchestration.server import start_run_api
from pipeline.params import load_params, profile_path
from vfmtok import files


def run_experiments(root: str | Path, runs: list[tuple[str, list[str]]], profile: str = "active",
                    base: str | None = None) -> None:
    """``dvc exp run --temp -n NAME -S KEY=VALUE ...`` for each ``(NAME, [KEY=VALUE, ...])`` in
    order, replacing an experiment of the same name. ``profile``: ``params/<profile>.yaml`` stands
    in for params.yaml while the runs are queued from the workspace (``active``: params.yaml as it
    is). ``base``: an experiment whose params.yaml and dvc.lock stand in instead, so the runs start
    from its results and re-run only what their overrides change. (The run cache cannot do that
    for the training stages: DVC keeps no run-cache entry for a stage with a persistent output,
    and their checkpoints are.) params.yaml and dvc.lock are put back afterwards, byte for byte."""
    root = Path(root)
    kept = {name: (root / name).read_bytes() for name in ("params.yaml", "dvc.lock")
            if (root / name).exists()}
    stand_in = _base_files(root, base) if base else _profile_files(root, profile)
    if api := start_run_api():
        api.wait_until_healthy()
    for name, data in stand_in.items():
        files.write_bytes(root / name, data)
    try:
        for name, overrides in runs:
            subprocess.run(["dvc", "exp", "remove", name], cwd=root, capture_output=True)  # may not exist
            cmd = ["dvc", "exp", "run", "--temp", "-n", name]
            for item in overrides:
                cmd += ["-S", item]
            subprocess.run(cmd, cwd=root, check=True)
    finally:
        for name, data in kept.items():
            files.write_bytes(root / name, data)
        if api:
            api.stop()


def _profile_files(root: Path, profile: str) -> dict[str, bytes]:
    """params.yaml as ``params/<profile>.yaml`` has it (none for ``active``), validated first so a
    bad profile runs nothing."""
    if profile == "active":
        return {}
    source = profile_path(profile, root)
    load_params(source)
    return {"params.yaml": source.read_bytes()}


def _base_files(root: Path, experiment: str) -> dict[str, bytes]:
    """params.yaml and dvc.lock as experiment ``experiment`` has them."""
    import dvc.api

    return {name: dvc.api.read(name, repo=str(root), rev=experiment, mode="rb")
            for name in ("params.yaml", "dvc.lock")}
