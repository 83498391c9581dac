"""The whole DVC pipeline as one Prefect flow (``reproduce``) and the scheduled retrain.

``reproduce`` is ``dvc repro`` in the workspace: the stages as tasks (``dvc_stages``), then the
metrics artifacts. ``retrain`` is what the schedule runs, and leaves the checkout alone: in an
isolated clone that shares the DVC cache (``workspace``) it applies the params overrides with
DVC's own ``-S`` grammar, runs the same per-stage tasks, saves the result as a named DVC
experiment in the checkout's repository, then promotes the models only when they beat the
current ones (``promotion``). Each stage's flow is a subflow of its task, so a run is one row in
the UI with its stages inside.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from pipeline.errors import quiet_prefect
from pipeline.orchestration import promotion, workspace
from pipeline.orchestration.dvc_stages import run_stages, verbose_run_logs
from pipeline.orchestration.metrics_artifacts import publish_metrics
from pipeline.params import load_promote
from vfmtok.config_schema import ConfigError


@flow(name="reproduce")
def reproduce_flow(root: str = ".", targets: list[str] | None = None, retries: int = 2,
                   retry_delay_s: float = 10.0, stale: list[str] | None = None) -> dict:
    """``dvc repro`` as one task per stage, then the metrics and diff artifacts. ``stale``: the
    stale stages when the caller has just asked DVC (``vfmtok-pipeline reproduce`` does, while
    the run's API starts); None: asked here. A stage's user error ends the run with its one line
    (``dvc_stages.StageUserError``), its tracebacks dropped (``quiet_prefect``)."""
    verbose_run_logs()
    quiet_prefect()
    path = Path(root).resolve()
    times = run_stages(path, targets, retries, retry_delay_s, stale=stale)
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
        try:
            if ours:
                load_params(path)
            elif rel == "params.yaml":
                load_promote(path)
        except ConfigError:
            path.write_text(before)
            raise


@task(cache_policy=NO_CACHE)
def prepare_workspace(root: str, clone: str, set_params: list[str]) -> None:
    """Say what the clone is made of; apply the params overrides there."""
    log = get_run_logger()
    log.info("isolated workspace %s: HEAD %s of %s, sharing its DVC cache", clone,
             workspace.head_commit(Path(root))[:7], root)
    if dirty := workspace.dirty_files(Path(root)):
        log.warning("uncommitted changes in the checkout are not part of this retrain: %s", ", ".join(dirty))
    if set_params:
        log.info("params overrides: %s", " ".join(set_params))
        apply_params(Path(clone), set_params)


@task(cache_policy=NO_CACHE)
def record_experiment(clone: str, name: str) -> str:
    """``dvc exp save -n NAME`` in the clone, pushed into the checkout's repository."""
    commit = workspace.save_experiment(Path(clone), name)
    get_run_logger().info("recorded DVC experiment %s (commit %s): `dvc exp show` lists it", name, commit[:7])
    return commit


@task(cache_policy=NO_CACHE)
def promote(root: str, clone: str, name: str, commit: str) -> promotion.Decision:
    """The gate: the retrain against the current model on ``promote.metric``; register if better."""
    path, ws = Path(root), Path(clone)
    cfg = load_promote(ws / "params.yaml")
    decision = promotion.decide(path, ws, workspace.head_commit(path), cfg)
    if decision.promoted and (artifacts := promotion.model_artifacts(ws)):
        decision.versions = promotion.register(path, artifacts, commit, f"retrain {name}: {decision.reason}")
    log = get_run_logger()
    verdict = "promoted" if decision.promoted else "not promoted"
    log.info("%s: %s", verdict, decision.reason)
    create_markdown_artifact(promotion.markdown(decision, name), key=promotion.PROMOTION_KEY,
                             description=f"retrain {name}: {verdict}")
    return decision


@flow(name="retrain")
def retrain_flow(root: str = ".", exp_name: str = "", set_params: list[str] | None = None,
                 targets: list[str] | None = None, retries: int = 2, retry_delay_s: float = 10.0,
                 keep_workspace: bool = False) -> dict:
    """A scheduled retrain in an isolated clone: params overrides, the stages (``targets`` and
    upstream; default all), a named DVC experiment, then the promotion gate."""
    verbose_run_logs()
    quiet_prefect()
    path = Path(root).resolve()
    name = exp_name or dt.datetime.now(dt.UTC).strftime("retrain-%Y%m%d-%H%M%S")
    with workspace.isolated(path, name, keep=keep_workspace) as clone:
        prepare_workspace(str(path), str(clone), list(set_params or []))
        times = run_stages(clone, targets, retries, retry_delay_s)
        commit = record_experiment(str(clone), name)
        decision = promote(str(path), str(clone), name, commit)
        metrics = publish_metrics(clone, note=f"experiment {name}", state_root=path)
    return {"experiment": name, "commit": commit, "stages": [asdict(t) for t in times],
            "metrics": metrics, "promotion": asdict(decision)}
