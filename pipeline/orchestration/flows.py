"""The whole DVC pipeline as one Prefect flow (``reproduce``) and the scheduled retrain.

``reproduce`` runs the stages as tasks (``dvc_stages``), then publishes the metrics artifacts.
``retrain`` is what the schedule runs: it applies parameter overrides with DVC's own ``-S``
grammar, runs the same per-stage tasks, then ``dvc exp run -n NAME``, which finds every stage
current and records the run as a named DVC experiment with its params and metrics (the same
result as one ``dvc exp run -n NAME -S ...``, with per-stage tasks, retries and timings).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipeline.orchestration.dvc_stages import _api_url, _dvc, _verbose_run_logs, run_stages
from pipeline.orchestration.metrics_artifacts import publish_metrics
from vfmtok.typed import ConfigError

DEPLOYMENT = "vfmtok-retrain"


@flow(name="reproduce")
def reproduce_flow(root: str = ".", targets: list[str] | None = None, retries: int = 2,
                   retry_delay_s: float = 10.0) -> dict:
    """``dvc repro`` as one task per stage, then the metrics and diff artifacts."""
    _verbose_run_logs()
    path = Path(root).resolve()
    times = run_stages(path, targets, retries, retry_delay_s)
    return {"stages": [asdict(t) for t in times], "metrics": publish_metrics(path)}


def apply_params(root: Path, overrides: list[str]) -> None:
    """``dvc exp run -S`` semantics (``[file:]key=value``, Hydra grammar), validated.

    A value the project's params loader rejects leaves the file as it was and raises, so a bad
    override fails the run at once instead of after every retry of the first stage.
    """
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides

    from pipeline.params import load_params

    for rel, items in to_path_overrides(overrides).items():
        path = root / rel
        before = path.read_text()
        try:
            load_params(path)
            ours = True
        except ConfigError:
            ours = False  # not this project's params file (or already broken): DVC's rules only
        apply_overrides(path, items)
        if ours:
            try:
                load_params(path)
            except ConfigError:
                path.write_text(before)
                raise


@task(cache_policy=NO_CACHE)
def record_experiment(root: str, name: str, targets: list[str] | None, api_url: str | None) -> None:
    """``dvc exp run -n NAME``: DVC checks that every stage is current and saves the experiment."""
    _dvc(root, ["exp", "run", "-n", name, *(targets or [])], api_url)


@flow(name="retrain")
def retrain_flow(root: str = ".", exp_name: str = "", set_params: list[str] | None = None,
                 targets: list[str] | None = None, retries: int = 2, retry_delay_s: float = 10.0) -> dict:
    """A scheduled retrain: params overrides, the stages (``targets`` and upstream; default all),
    then a named DVC experiment."""
    _verbose_run_logs()
    path = Path(root).resolve()
    name = exp_name or dt.datetime.now(dt.UTC).strftime("retrain-%Y%m%d-%H%M%S")
    if set_params:
        get_run_logger().info("params overrides: %s", " ".join(set_params))
        apply_params(path, set_params)
    times = run_stages(path, targets, retries, retry_delay_s)
    record_experiment(str(path), name, targets, _api_url())
    metrics = publish_metrics(path, note=f"experiment {name}")
    return {"experiment": name, "stages": [asdict(t) for t in times], "metrics": metrics}
