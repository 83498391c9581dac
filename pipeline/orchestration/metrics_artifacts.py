"""The metrics of a run as Prefect artifacts: a table of every metric (``dvc metrics show``) and
a Markdown diff against the previous orchestrated run, whose metrics are kept in
``.prefect/last_metrics.json`` (git-ignored, per checkout)."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from pipeline.experiments.revisions import workspace_metrics
from pipeline.layout import Layout
from vfmtok import files

METRICS_KEY = "vfmtok-metrics"
DIFF_KEY = "vfmtok-metrics-diff"


def metrics_rows(metrics: dict[str, dict]) -> list[dict]:
    """Rows of the table artifact; NaN and infinities as text (the API takes strict JSON only)."""
    rows = []
    for file, values in metrics.items():
        for k, v in sorted(values.items()):
            rows.append({"file": file, "metric": k,
                         "value": str(v) if isinstance(v, float) and not math.isfinite(v) else v})
    return rows


def _fmt(v) -> str:
    return "" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)


def diff_markdown(previous: dict | None, current: dict[str, dict], title: str) -> str:
    """The metrics that changed since the previous run, as a Markdown table."""
    lines = [f"# {title}", ""]
    if previous is None:
        return "\n".join(lines + ["First run: no previous metrics to compare with.", ""])
    old = previous["metrics"]
    lines.append(f"Against run `{previous['run']}` finished {previous['finished_utc']} UTC.")
    lines += ["", "| file | metric | previous | current | change |", "|---|---|---|---|---|"]
    keys = sorted({(f, k) for m in (old, current) for f in m for k in m[f]})
    changed = 0
    for f, k in keys:
        a, b = old.get(f, {}).get(k), current.get(f, {}).get(k)
        if a == b:
            continue
        changed += 1
        numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b))
        delta = f"{b - a:+.6g}" if numeric else ""
        lines.append(f"| {f} | {k} | {_fmt(a)} | {_fmt(b)} | {delta} |")
    lines += ["", f"{changed} changed, {len(keys) - changed} unchanged."]
    return "\n".join(lines) + "\n"


def publish_metrics(root: Path, note: str = "", state_root: Path | None = None) -> dict[str, dict]:
    """The table and diff artifacts of the metrics in ``root``; then this run becomes the
    'previous run' of ``state_root`` (default ``root``: a retrain's workspace is temporary)."""
    metrics = workspace_metrics(root)
    run_name = flow_run.name or "manual"
    last = Layout(state_root or root).last_metrics
    previous = json.loads(last.read_text()) if last.is_file() else None
    suffix = f" ({note})" if note else ""
    create_table_artifact(metrics_rows(metrics), key=METRICS_KEY,
                          description=f"`dvc metrics show` after run {run_name}{suffix}")
    create_markdown_artifact(diff_markdown(previous, metrics, f"Metrics diff, run {run_name}{suffix}"),
                             key=DIFF_KEY, description="metrics changed since the previous run")
    files.write_json(last, {"run": run_name, "metrics": metrics,
                                "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
    return metrics
