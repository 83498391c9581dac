"""Per-run wall time of every DVC stage: ``reports/stage_times.csv`` (appended) and ``.md`` (rendered).

The orchestrating flow appends one row per stage per run, so the CSV is the history and the
Markdown is the readable view (runs as rows, stages as columns, newest last). ``seconds`` is the
wall time DVC took for the stage, retries and backoff included; ``work_seconds`` is the time the
stage wrote in its own metrics file when it actually ran (``seconds``, else its ``*_seconds``), so
the two columns together show what DVC + Prefect + process start cost around the stage's work.
A stage process of this project reports its own split (``pipeline/orchestration/stage_process.py``):
``work_seconds`` is then its flow's body, ``import_seconds`` its imports (torch and the rest of
what it uses) and ``prefect_seconds`` Prefect's share inside the process.
Plain Python, no Prefect.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from pipeline.layout import Layout
from vfmtok import files

MAX_RUNS_SHOWN = 50


@dataclass
class StageTime:
    run: str  # the Prefect flow run's name
    started_utc: str  # ISO 8601, when the run's first stage started
    stage: str  # DVC stage address, e.g. "prepare"
    status: str  # ran | restored (DVC run-cache) | up to date | frozen | failed
    attempts: int  # 1 + retries used
    seconds: float  # wall time of the stage inside the run, every attempt and backoff included
    work_seconds: float | None = None  # the stage's work when it ran (its flow's body, else its own metric)
    import_seconds: float | None = None  # the stage process importing what it uses (torch, ...)
    prefect_seconds: float | None = None  # the stage process's Prefect: its import and the flow run


COLUMNS = [f.name for f in fields(StageTime)]


def read(root: str | Path) -> list[StageTime]:
    """Every recorded row, oldest first (an absent file is an empty history)."""
    path = Layout(Path(root)).stage_times("csv")
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append(StageTime(
                run=r["run"], started_utc=r["started_utc"], stage=r["stage"], status=r["status"],
                attempts=int(r["attempts"]), seconds=float(r["seconds"]),
                work_seconds=_opt(r, "work_seconds"), import_seconds=_opt(r, "import_seconds"),
                prefect_seconds=_opt(r, "prefect_seconds"),
            ))  # fmt: skip
    return rows


def _opt(row: dict, key: str) -> float | None:
    """An optional number (empty, or a column that older files do not have: None)."""
    value = row.get(key) or ""
    return float(value) if value else None


def append(root: str | Path, new: list[StageTime]) -> None:
    """Add this run's rows to the CSV and re-render the Markdown view (both written atomically)."""
    rows = read(root) + new
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        d = asdict(r)
        d["seconds"] = f"{r.seconds:.3f}"
        for key in ("work_seconds", "import_seconds", "prefect_seconds"):
            d[key] = "" if d[key] is None else f"{d[key]:.3f}"
        writer.writerow(d)
    layout = Layout(Path(root))
    files.write_text(layout.stage_times("csv"), buf.getvalue())
    files.write_text(layout.stage_times("md"), render_markdown(rows))


def _cell(r: StageTime) -> str:
    text = f"{r.seconds:.1f} s"
    if r.work_seconds is not None:
        text += f" (work {r.work_seconds:.1f}" + ("" if r.import_seconds is None else
                                                  f", imports {r.import_seconds:.1f}") + ")"
    if r.status != "ran":
        text += f" {r.status}"
    if r.attempts > 1:
        text += f", {r.attempts} attempts"
    return text


def render_markdown(rows: list[StageTime], max_runs: int = MAX_RUNS_SHOWN) -> str:
    """One line per run (the latest ``max_runs``), one column per stage in first-seen order."""
    runs: dict[tuple[str, str], dict[str, StageTime]] = {}
    stages: list[str] = []
    for r in rows:
        runs.setdefault((r.run, r.started_utc), {})[r.stage] = r
        if r.stage not in stages:
            stages.append(r.stage)
    lines = [
        "# Stage wall times per run",
        "",
        "Written by `vfmtok-pipeline reproduce` / the `retrain` deployment from `stage_times.csv`. "
        "A cell is the stage's wall time under DVC (retries included); `work` is the time the stage "
        "reported for its own work and `imports` its imports (torch, ...); no suffix means the stage ran.",
        "",
        "| run | started (UTC) | " + " | ".join(stages) + " | total |",
        "|---|---|" + "---|" * len(stages) + "---|",
    ]
    for (run, started), by_stage in list(runs.items())[-max_runs:]:
        cells = [_cell(by_stage[s]) if s in by_stage else "" for s in stages]
        total = sum(r.seconds for r in by_stage.values())
        lines.append(f"| {run} | {started} | " + " | ".join(cells) + f" | {total:.1f} s |")
    return "\n".join(lines) + "\n"
