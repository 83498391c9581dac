"""The committed run that another run is compared with: its files at a git revision
(``git show REV:PATH``) and what its ``dvc.lock`` records of each stage's outputs.

``vfmtok-pipeline verify`` and ``benchmarks/tolerances.py`` read runs this way. The outputs
compared by their bytes are the data artifacts, the pictures and the training curves. The
reports of numbers (``dvc.yaml``'s ``metrics:`` files and the metrics tables) also record the
run's wall-clock times, so their bytes differ on every run; their numbers are compared by value
instead (``pipeline/evaluation/tolerances.py``). Git and YAML only: no torch, no DVC, fast.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.errors import UserError
from pipeline.layout import Layout


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def revision(root: Path, rev: str) -> str:
    """The commit ``rev`` names, as a full hash. A folder outside git, or a ``rev`` git does not
    know, is the user's to fix: one line naming it."""
    if not Path(root).is_dir():
        raise UserError(f"{root}: no such folder")
    inside = _git(root, "rev-parse", "--is-inside-work-tree")
    if inside.returncode != 0 or inside.stdout.strip() != "true":
        raise UserError(f"{root}: not a git repository (the committed run is read with git)")
    found = _git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if found.returncode != 0:
        raise UserError(f"{rev}: no such git revision in {root}")
    return found.stdout.strip()


def show(root: Path, commit: str, path: str) -> str | None:
    """``path`` (relative to ``root``) as committed at ``commit``; None where it is not there."""
    proc = _git(root, "show", f"{commit}:./{path}")
    return proc.stdout if proc.returncode == 0 else None


def commit_date(root: Path, commit: str) -> str:
    """The commit's date, ``YYYY-MM-DD`` (a committed run's reports are committed after it ran)."""
    return _git(root, "log", "-1", "--format=%cs", commit).stdout.strip()


def metrics(text: str, source: str) -> dict:
    """A run's ``metrics.json`` text as a dict; anything else is one line naming ``source``."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise UserError(f"{source}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{source}: not a JSON object of metrics")
    return data


def number_reports(dvc_yaml: str) -> set[str]:
    """The outputs that are reports of numbers: every stage's ``metrics:`` files in ``dvc.yaml``
    and the metrics tables, which ``evaluate`` declares as plain outputs."""
    try:
        stages = (yaml.safe_load(dvc_yaml) or {}).get("stages") or {}
    except yaml.YAMLError as e:
        raise UserError(f"dvc.yaml: not YAML ({' '.join(str(e).split())})") from None
    paths = {next(iter(entry)) if isinstance(entry, dict) else str(entry)
             for stage in stages.values() if isinstance(stage, dict) for entry in stage.get("metrics") or []}
    tables = Layout(Path("."))
    return paths | {str(tables.metrics_table(suffix)) for suffix in ("json", "md", "csv")}


@dataclass(frozen=True)
class Outputs:
    """One ``dvc.lock``: the hash of each output compared by bytes, the stage that writes it, a
    digest of what each stage ran on (its dependencies' hashes and its params) and, for each
    stage, the stages whose outputs it reads."""

    hashes: dict[str, str]
    stage_of: dict[str, str]
    inputs: dict[str, str]
    upstream: dict[str, set[str]]
    order: list[str] = field(default_factory=list)  # the stages, each after those it reads


def _upstream(stages: dict, outs: dict[str, str]) -> dict[str, set[str]]:
    """For each stage, the stages that write a path it depends on (or a folder holding it)."""
    found: dict[str, set[str]] = {}
    for name, entry in stages.items():
        deps = [d.get("path", "") for d in entry.get("deps") or []]
        found[name] = {outs[o] for o in outs for d in deps
                       if outs[o] != name and (d == o or d.startswith(o.rstrip("/") + "/"))}
    return found


def _order(names: list[str], upstream: dict[str, set[str]]) -> list[str]:
    """The stages upstream first; among stages free to go, the lock file's order."""
    done: list[str] = []
    while len(done) < len(names):
        ready = [n for n in names if n not in done and upstream[n] <= set(done)]
        done.append(ready[0] if ready else next(n for n in names if n not in done))  # a cycle: as listed
    return done


def outputs(lock_text: str, reports: set[str], source: str) -> Outputs:
    """``dvc.lock``'s record of a run (``source`` names the file in errors); the outputs in
    ``reports`` (:func:`number_reports`) are left out of ``hashes``."""
    try:
        stages = (yaml.safe_load(lock_text) or {}).get("stages")
    except (yaml.YAMLError, AttributeError):
        stages = None
    if not isinstance(stages, dict):
        raise UserError(f"{source}: not a dvc.lock (no stages: mapping)")
    hashes, stage_of, inputs, every_out = {}, {}, {}, {}
    for name, entry in stages.items():
        for out in entry.get("outs") or []:
            every_out[out["path"]] = name
            if out["path"] not in reports:
                hashes[out["path"]] = str(out.get("md5") or out.get(out.get("hash", ""), ""))
                stage_of[out["path"]] = name
        ran_on = ([(d.get("path"), d.get("md5")) for d in entry.get("deps") or []], entry.get("params"))
        inputs[name] = json.dumps(ran_on, sort_keys=True, default=str)
    upstream = _upstream(stages, every_out)
    return Outputs(hashes, stage_of, inputs, upstream, _order(list(stages), upstream))


@dataclass(frozen=True)
class ByteComparison:
    """Two runs' outputs side by side: how many are byte-identical, and where they part."""

    identical: list[str]  # this run's paths (an output that moved keeps its bytes: ``moved``)
    moved: dict[str, str]  # this run's path -> the other run's, for the same bytes elsewhere
    differing: list[str]  # in both, other bytes
    only_here: list[str]
    only_there: list[str]
    first: list[str]  # differing stages whose upstream stages' outputs are all identical
    same_inputs: dict[str, bool]  # of each first stage: the same code, params and inputs there
    downstream: list[str]  # the other differing stages, upstream first

    @property
    def total(self) -> int:
        return len(self.identical) + len(self.differing) + len(self.only_here) + len(self.only_there)


def compare(here: Outputs, there: Outputs) -> ByteComparison:
    """``here``'s outputs against ``there``'s, path by path; an output found under another path
    with the same hash (a renamed folder) counts as identical."""
    both = [p for p in here.hashes if p in there.hashes]
    unmatched = {there.hashes[p]: p for p in there.hashes if p not in here.hashes}
    moved = {p: unmatched.pop(here.hashes[p]) for p in here.hashes
             if p not in there.hashes and here.hashes[p] in unmatched}
    identical = [p for p in here.hashes if p in moved or (p in both and here.hashes[p] == there.hashes[p])]
    differing = [p for p in both if here.hashes[p] != there.hashes[p]]
    only_here = [p for p in here.hashes if p not in there.hashes and p not in moved]
    only_there = list(unmatched.values())
    changed = {here.stage_of[p] for p in differing + only_here}
    stages = [s for s in here.order if s in changed]
    first = [s for s in stages if not here.upstream.get(s, set()) & changed]
    same = {s: s in there.inputs and here.inputs[s] == there.inputs[s] for s in first}
    return ByteComparison(identical, moved, differing, only_here, only_there, first, same,
                          [s for s in stages if s not in first])
