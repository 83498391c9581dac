"""DVCLive logging that survives a resume: the curves continue from the checkpoint's step
instead of repeating the steps a killed run logged after its last checkpoint.

A DVCLive step (``log_metric`` ... ``next_step``: it rewrites the summary and appends every curve)
costs ~45 ms on 2 cores, 5% of a demo training step, so the loops log a curve point every
:func:`curve_every` steps (about :data:`CURVE_POINTS` a run), and always the steps that carry a
validation or sample-quality figure and the last one.
"""

from __future__ import annotations

import csv
from pathlib import Path

from dvclive import Live


def _truncate_history(live_dir: Path, start_step: int) -> None:
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        with open(tsv, newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        if not rows:
            continue
        header, body = rows[0], rows[1:]
        step_col = header.index("step") if "step" in header else None
        kept = [r for r in body if step_col is None or int(r[step_col]) < start_step]
        with open(tsv, "w", newline="") as f:
            csv.writer(f, delimiter="\t").writerows([header, *kept])


def open_live(live_dir: Path, start_step: int) -> Live:
    """A DVCLive logger in ``live_dir`` whose next logged step is ``start_step``."""
    if start_step > 0 and live_dir.is_dir():
        _truncate_history(live_dir, start_step)
        live = Live(str(live_dir), resume=True, save_dvc_exp=False, dvcyaml=None)
    else:
        live = Live(str(live_dir), resume=False, save_dvc_exp=False, dvcyaml=None)
    live.step = start_step
    return live


CURVE_POINTS = 200


def curve_every(total_steps: int, points: int = CURVE_POINTS) -> int:
    """Log a curve point every this many steps: about ``points`` points a run."""
    return max(1, total_steps // points)


def log_step(live: Live, step: int, metrics: dict[str, float]) -> None:
    """One curve point at the 0-based ``step``."""
    live.step = step
    for name, value in metrics.items():
        live.log_metric(name, value)
    live.next_step()


def read_curve(live_dir: Path, metric: str) -> list[tuple[int, float]]:
    """``(steps done, value)`` of a logged metric (e.g. "val/loss"), the whole history on disk: a
    resumed run's curve includes what the killed run logged before its last checkpoint."""
    tsv = live_dir / "plots" / "metrics" / f"{metric}.tsv"
    if not tsv.is_file():
        return []
    with open(tsv, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    name = metric.rsplit("/", 1)[-1]
    return [(int(r["step"]) + 1, float(r[name])) for r in rows]  # logged at the 0-based step
