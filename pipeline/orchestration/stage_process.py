"""A stage process: run its flow (Prefect, or folded into an orchestrating task), and say where its
time went.

``dvc.yaml`` runs each stage as its own process (``python -m pipeline.stage NAME``). Alone, the
stage's flow is a Prefect flow. Under ``reproduce``/``retrain`` the orchestrating task sets
:data:`~pipeline.orchestration.lazy_prefect.FOLD_ENV`: the stage is folded into that task (one row
in the UI, its output in the task's log) and its process never imports Prefect
(``pipeline/orchestration/lazy_prefect.py``).

Every stage process also prints one :data:`TIMES_LINE` at the end: the time of the flow's own body
(the stage's work), of importing the stage module (torch and the model stack, paid with or
without an orchestrator) and of Prefect (its import plus the flow run around the body; 0 when
folded). The orchestrator reads it from the output to split a stage's wall time into work and
overhead.

Alone, the stage also starts the throw-away Prefect API its flow run needs (:func:`start_run_api`),
as ``vfmtok-pipeline reproduce`` does for its run: early, so it comes up while Prefect and the
stage's module are imported, and tied to this process, so it dies with the stage even when the
stage is killed with ``kill -9`` (Prefect's own ephemeral server would live on).
"""

from __future__ import annotations

import functools
import importlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.orchestration.lazy_prefect import StageFlow, folded, log_to_stdout, show_run_records
from pipeline.orchestration.run_api import start_run_api

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


def _timed(fn: Callable[..., Any], clock: dict[str, float]) -> Callable[..., Any]:
    """``fn``, recording in ``clock["body"]`` how long its body took."""

    @functools.wraps(fn)
    def body(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            clock["body"] = time.perf_counter() - t0

    return body


def run_stage_flow(stage: str, module_name: str, parameters: dict[str, Any],
                   after_import: Callable[[], None] = lambda: None) -> Any:
    """Import the stage's module, run its ``<stage>_flow`` (a Prefect flow, or folded: a plain
    call), then print the :data:`TIMES_LINE`. Alone, against this process's own throw-away API
    unless ``PREFECT_API_URL`` names one (an orchestrating run's, a shared one, the user's)."""
    t0 = time.perf_counter()
    api = None
    if not folded():
        api = start_run_api()  # comes up while Prefect and the stage's module are imported
        import prefect  # noqa: F401 - timed apart from the stage's own imports
    t_prefect = time.perf_counter()
    module = importlib.import_module(module_name)
    t_module = time.perf_counter()
    stage_flow = getattr(module, f"{stage}_flow")  # a StageFlow, or any Prefect flow
    clock: dict[str, float] = {}
    if folded():
        log_to_stdout()
        result = _timed(stage_flow.fn, clock)(**parameters)
    else:
        timed = (stage_flow.as_prefect() if isinstance(stage_flow, StageFlow) else stage_flow).with_options()
        timed.fn = _timed(timed.fn, clock)
        after_import()  # Prefect has set up its loggers by now (prefect.main, imported just above)
        show_run_records()
        if api:
            api.wait_until_healthy()
        result = timed(**parameters)
    t_end = time.perf_counter()
    work = clock.get("body", 0.0)
    prefect_s = (t_prefect - t0) + (t_end - t_module - work)
    line = TIMES_LINE.format(stage=stage, work=work, imports=t_module - t_prefect, prefect=prefect_s)
    print(line, flush=True)
    return result
