"""``vfmtok-pipeline reproduce``: ``dvc repro`` as one Prefect flow, and its exit status.

The run's own Prefect API (``run_api.py``) is started first, so it comes up while DVC's status,
Prefect and the flows load. When DVC says every stage is current, no flow starts (``record``
starts one anyway, to record a run of nothing stale). Exit status: 0 the flow completed, 2 a
stage's bad input (its one ``error:`` line, re-raised for ``pipeline.stage.guarded``), 1 any
other failure.
"""

from __future__ import annotations

from pipeline import errors

UP_TO_DATE = ("Data and pipelines are up to date (dvc status): no stage to run, no Prefect run started "
              "(--record starts one anyway).")


def stale(root: str, targets: list[str]) -> list[str] | None:
    """DVC's status, in-process: the stale stages (None when the check fails: e.g. an unknown
    target, which the flow then reports properly)."""
    from pipeline.orchestration.dag import stale_stages

    try:
        return stale_stages(root, targets or None)
    except Exception:  # noqa: BLE001
        return None


def announce_plan(root: str, stages: list[str] | None) -> None:
    """When the params put a stage on a GPU: the plan of each stage about to run, a line each
    (``vfmtok-pipeline plan``'s figures for this machine's GPUs and launch). A plan that cannot be
    made says why in one line and never stops the run."""
    import os
    from pathlib import Path

    from pipeline.orchestration.launch_plan import gpu_model, world_for
    from pipeline.params import load_params
    from pipeline.planning.costs import make_plan, one_line

    try:
        params = load_params(Path(root) / "params.yaml", check_paths=False)
        if not stages or not any(getattr(getattr(params, s, None), "device", "") == "cuda" for s in stages):
            return
        kind = gpu_model() or "GPU"
        plan = make_plan(params, "params.yaml", Path(root), world_for(params, "train_ar", os.environ), kind)
    except Exception as e:  # noqa: BLE001 (a plan is advice: the run goes on without it)
        print(f"[plan] no plan: {errors.one_line(e)}")
        return
    for line in plan.lines:
        if line.stage in stages:
            print(one_line(plan, line), flush=True)


def reproduce(root: str, targets: list[str], retries: int, retry_delay_s: float, record: bool = False) -> int:
    """Run the stale stages of ``targets`` (default: all) as one flow; the exit status."""
    from pipeline.orchestration import run_api

    api = run_api.start_run_api()  # comes up while DVC's status, Prefect and the flows load
    stale_now = stale(root, targets)
    if not record and stale_now == []:
        if api:
            api.stop()
        print(UP_TO_DATE)
        return 0
    announce_plan(root, stale_now)
    from pipeline.orchestration.flows import reproduce_flow

    if api:
        api.wait_until_healthy()
    state = reproduce_flow(root=root, targets=targets or None, retries=retries, retry_delay_s=retry_delay_s,
                           stale=stale_now, return_state=True)
    if state.is_completed():
        return 0
    if errors.is_user_error(failed := state.result(raise_on_failure=False)):
        raise failed  # a stage's bad input: its one error: line, exit 2 (stage.guarded)
    return 1
