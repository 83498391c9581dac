"""Params and metrics of the workspace or of any DVC revision (a commit, a branch, an experiment),
as flat ``{dotted.key: value}`` dicts: what ``compare``, ``claims`` and the metrics artifacts read."""

from __future__ import annotations

import json
from pathlib import Path


def flatten(data: dict, prefix: str = "", scalars_only: bool = False) -> dict[str, object]:
    """Nested dicts -> dotted keys. ``scalars_only`` drops lists (curves, skipped files: details,
    not metrics)."""
    out: dict[str, object] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}.", scalars_only))
        elif not scalars_only or value is None or isinstance(value, int | float | str | bool):
            out[name] = value
    return out


def workspace_metrics(root: str | Path, rev: str | None = None) -> dict[str, dict]:
    """``{metrics file: {dotted key: scalar}}`` of the workspace (or of commit ``rev``), as
    ``dvc metrics show`` has them, asked in-process (a ``dvc`` process costs seconds)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        shown = repo.metrics.show(revs=[rev] if rev else None)
    found = shown.get(rev, {}) if rev else shown.get("workspace", shown.get("", {}))  # DVC's keys
    files = found.get("data", {})
    return {f: flatten(v["data"], scalars_only=True) for f, v in sorted(files.items()) if "data" in v}


def read_rev(rev: str | None, root: str | Path = ".") -> tuple[dict, dict]:
    """(flattened params, flattened metrics) of the workspace (None) or a revision."""
    import dvc.api

    params = dvc.api.params_show(repo=str(root), rev=rev)
    metrics = dvc.api.metrics_show(repo=str(root), rev=rev)
    return flatten(params), flatten(metrics)


def read_json(rev: str, path: str, root: str | Path = ".") -> dict:
    """A JSON file (e.g. ``reports/train_ar.json``) as revision ``rev`` has it."""
    import dvc.api

    return json.loads(dvc.api.read(path, repo=str(root), rev=rev))
