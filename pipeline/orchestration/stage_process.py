"""A stage process under an orchestrating run: its flow is a subflow, and it says where its time went.

``dvc.yaml`` runs each stage as its own process (``python -m pipeline.stage NAME``), so Prefect
cannot see that the stage's flow belongs to the ``reproduce``/``retrain`` run that asked DVC for
it: left alone it is one more top-level run. The orchestrating task passes its own task-run id in
:data:`PARENT_ENV`; the stage then creates its flow run with that ``parent_task_run_id``, which is
exactly how Prefect links a subflow to its parent (the UI then shows the stage inside the run, and
"Hide subflows" hides it from the list). Without the variable (a plain ``dvc repro``) the flow
runs as usual.

Every stage process also prints one :data:`TIMES_LINE` at the end: the time of the flow's own body
(the stage's work), of importing the stage module (torch and the model stack, paid with or
without an orchestrator) and of Prefect (its import plus the flow run around the body). The
orchestrator reads it from the output to split a stage's wall time into work and overhead.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

PARENT_ENV = "VFMTOK_PARENT_TASK_RUN_ID"
TIMES_LINE = "[vfmtok] stage {stage}: work {work:.3f} s, imports {imports:.3f} s, prefect {prefect:.3f} s"
TIMES_RE = re.compile(r"\[vfmtok\] stage (?P<stage>\S+): work (?P<work>[\d.]+) s, "
                      r"imports (?P<imports>[\d.]+) s, prefect (?P<prefect>[\d.]+) s")


@dataclass
class ProcessTimes:
    stage: str
    work: float  # the flow function's body
    imports: float  # importing the stage's module (torch, numpy, ... : what the stage uses)
    prefect: float  # importing Prefect + the flow run around the body (creation, states, logs)


def parse_times(line: str) -> ProcessTimes | None:
    if (m := TIMES_RE.search(line)) is None:
        return None
    return ProcessTimes(m["stage"], float(m["work"]), float(m["imports"]), float(m["prefect"]))


def _timed_body(flow_obj, clock: dict[str, float]):
    """A copy of ``flow_obj`` whose function records how long its body took."""
    fn = flow_obj.fn

    @functools.wraps(fn)
    def body(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            clock["body"] = time.perf_counter() - t0

    timed = flow_obj.with_options()
    timed.fn = body
    return timed


def _as_subflow(flow_obj, parameters: dict[str, Any], parent_task_run_id: str) -> Any:
    """Run ``flow_obj`` as a subflow of task run ``parent_task_run_id`` (of another process)."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.states import Pending

    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(flow=flow_obj, parameters=flow_obj.serialize_parameters(parameters),
                                          state=Pending(), parent_task_run_id=UUID(parent_task_run_id))
    return run_flow(flow_obj, flow_run=flow_run, parameters=parameters)


def run_stage_flow(stage: str, module_name: str, parameters: dict[str, Any],
                   after_import: Callable[[], None] = lambda: None) -> Any:
    """Import the stage's module, run its ``<stage>_flow`` (as a subflow when a parent is given),
    then print the :data:`TIMES_LINE`."""
    t0 = time.perf_counter()
    import prefect  # noqa: F401 - timed apart from the stage's own imports

    t_prefect = time.perf_counter()
    module = importlib.import_module(module_name)
    t_module = time.perf_counter()
    after_import()
    clock: dict[str, float] = {}
    flow_obj = _timed_body(getattr(module, f"{stage}_flow"), clock)
    parent = os.environ.get(PARENT_ENV, "")
    result = _as_subflow(flow_obj, parameters, parent) if parent else flow_obj(**parameters)
    t_end = time.perf_counter()
    work = clock.get("body", 0.0)
    prefect_s = (t_prefect - t0) + (t_end - t_module - work)
    line = TIMES_LINE.format(stage=stage, work=work, imports=t_module - t_prefect, prefect=prefect_s)
    print(line, flush=True)
    return result
