"""DVC's view of the pipeline, in-process and without Prefect: the stage order and what is stale.

:func:`dag_stages` reads the stage list and its order from ``dvc.yaml`` (DVC's own graph and
plan, never a hard-coded list). :func:`stale_stages` asks DVC's own ``status`` (the check ``dvc
repro`` makes before running a stage) in this process, which costs a fraction of a ``dvc``
process start: the orchestrator uses it to skip current stages without a subprocess, and
``vfmtok-pipeline reproduce`` uses it to return at once, like ``dvc repro``, when nothing is stale.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Stage:
    name: str  # DVC's address, what `dvc repro --single-item` takes
    metrics: list[str]  # the stage's metrics files, relative to the project root


def dag_stages(root: str | Path = ".", targets: list[str] | None = None) -> list[Stage]:
    """The stages with a command, in the order DVC itself would reproduce them.

    With ``targets``, only those stages and everything upstream of them (like ``dvc repro T``).
    """
    from dvc.repo import Repo
    from dvc.repo.reproduce import get_active_graph, plan_repro

    root = Path(root).resolve()
    with Repo(str(root)) as repo:
        graph = get_active_graph(repo.index.graph)
        by_address = {_address(s): s for s in graph if s.cmd}
        if unknown := sorted(set(targets or []) - set(by_address)):
            raise ValueError(f"no stage {', '.join(unknown)} in {root} (stages: {', '.join(by_address)})")
        sources = [by_address[t] for t in targets] if targets else None
        return [
            Stage(_address(s), [os.path.relpath(o.fs_path, root) for o in s.outs if o.metric])
            for s in plan_repro(graph, sources) if s.cmd
        ]  # fmt: skip


def _address(stage) -> str:
    """The stage's address from the project root (``Stage.addressing`` is relative to the cwd)."""
    if stage.path_in_repo == "dvc.yaml":
        return stage.name
    return f"{stage.path_in_repo}:{stage.name}"


def _target(root: Path, address: str) -> str:
    """An absolute DVC target for a stage address (DVC resolves targets against the cwd)."""
    file, _, name = address.rpartition(":")
    return f"{root / (file or 'dvc.yaml')}:{name}"


def stale_stages(root: str | Path, targets: list[str] | None = None, upstream: bool = True) -> list[str]:
    """The stages (of ``targets`` and, with ``upstream``, everything they depend on; default all)
    that DVC's ``status`` reports as changed: what ``dvc repro`` would run or restore."""
    from dvc.repo import Repo

    root = Path(root).resolve()
    with contextlib.chdir(root), Repo(str(root)) as repo:  # DVC names stages relative to the cwd
        changes = repo.status(targets=[_target(root, t) for t in targets] if targets else None,
                              with_deps=upstream and bool(targets))
    return sorted(changes)


def is_stale(root: str | Path, stage: str) -> bool:
    """Whether DVC's ``status`` reports this one stage as changed (its upstream not checked)."""
    return bool(stale_stages(root, [stage], upstream=False))
