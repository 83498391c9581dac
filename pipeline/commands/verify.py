"""``vfmtok-pipeline verify [--reference REV] [--reports DIR]``: does this run reproduce the
committed one?

Two answers. The bytes: on the machine kind and thread count the committed run was made with,
every output is byte-identical, so ``dvc.lock``'s hashes are compared output by output, and the
first stage whose outputs differ is named. Another CPU kind computes with other float kernels,
so its bytes differ from the first float computation on; then the metrics decide: each one is
compared with the committed value within the limit ``reports/tolerances.json`` gives it (limits
measured from re-runs: ``benchmarks/tolerances.py``). A run's settings (``fid_images``, ...) must
be equal. Exit 0: every metric agrees; 1: one differs or is missing; 2: bad input (one line).
Git and JSON only: no torch, no DVC (``pipeline/experiments/reference_run.py``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands import Command
from pipeline.errors import UserError
from pipeline.evaluation import tolerances as tol
from pipeline.evaluation.metrics import declared
from pipeline.experiments import reference_run as ref
from pipeline.layout import Layout

METRICS = "reports/metrics.json"
TOLERANCES = "reports/tolerances.json"
NEW_KERNELS = ("Another CPU kind (or thread count) computes with other float kernels, so the bytes differ "
               "from there on; the metrics below decide whether this run reproduces the committed one.")


def _this_run(reports: Path) -> dict:
    path = reports / "metrics.json"
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"{path}: cannot read this run's metrics ({e.strerror}); run the pipeline first") \
            from None
    return ref.metrics(text, str(path))


def _tolerances(reports: Path, root: Path, commit: str, rev: str) -> tuple[tol.Tolerances, str]:
    """The workspace's limits, else the committed ones."""
    path = reports / "tolerances.json"
    if path.is_file():
        return tol.read(path), str(path)
    text = ref.show(root, commit, TOLERANCES)
    if text is None:
        raise UserError(f"{path}: no tolerances here, nor at {rev} (benchmarks/tolerances.py writes them)")
    return tol.parse(text, f"{rev}:{TOLERANCES}"), f"{rev}:{TOLERANCES}"


def byte_lines(here: ref.Outputs, there: ref.Outputs, rev: str) -> list[str]:
    """How many outputs are byte-identical to ``rev``'s and, if not all, where they part."""
    c = ref.compare(here, there)
    lines = [f"outputs: {len(c.identical)} of {c.total} byte-identical to {rev} (the reports of numbers "
             f"record times: their numbers are compared below)"]
    lines += [f"  {path} holds the bytes of {rev}'s {old}" for path, old in c.moved.items()]
    for stage in c.first:
        paths = [p for p in c.differing + c.only_here if here.stage_of[p] == stage]
        why = ("from the same code, params and inputs" if c.same_inputs[stage]
               else f"its code, params or inputs differ from {rev}'s")
        lines.append(f"  differs first: {stage} ({', '.join(paths)}), {why}")
    if c.downstream:
        lines.append(f"  and downstream of it: {', '.join(c.downstream)}")
    if c.only_there:
        lines.append(f"  not written here: {', '.join(c.only_there)}")
    if any(c.same_inputs.values()):
        lines.append(f"  {NEW_KERNELS}")
    elif c.first:
        lines.append(f"  Other code or params compute other bytes; the metrics below decide whether this "
                     f"run reproduces {rev}'s.")
    return lines


def _bytes(root: Path, reports: Path, default_reports: bool, commit: str, rev: str) -> list[str]:
    """The byte comparison, or the line saying why there is none (it informs; the metrics decide).
    The run's ``dvc.lock`` is the one beside its metrics, else the project's."""
    beside = reports / "dvc.lock"
    lock = beside if beside.is_file() or not default_reports else root / "dvc.lock"
    committed = ref.show(root, commit, "dvc.lock")
    if not lock.is_file() or committed is None:
        where = f"at {rev}" if lock.is_file() else f"in {lock.parent}"
        return [f"outputs: not compared (no dvc.lock {where})"]
    dvc_yaml = root / "dvc.yaml"
    reports_of_numbers = ref.number_reports(dvc_yaml.read_text() if dvc_yaml.is_file()
                                            else ref.show(root, commit, "dvc.yaml") or "")
    here = ref.outputs(lock.read_text(), reports_of_numbers, str(lock))
    return byte_lines(here, ref.outputs(committed, reports_of_numbers, f"{rev}:dvc.lock"), rev)


def _fmt(value: object, key: str) -> str:
    places = tol.digits(key)
    if isinstance(value, float) and places is not None:
        return f"{value:.{places}f}"
    return "null" if value is None else str(value)


def _row_line(row: tol.Row, committed: object, value: object, rev: str) -> tuple[str, bool]:
    """One toleranced metric's line, and whether it agrees."""
    head = f"  {row.key:<24}{_fmt(committed, row.key):>12}{_fmt(value, row.key):>12}"
    if committed is None and value is None:
        return f"{head}  absent in both  agrees", True
    if not (tol.is_number(committed) and tol.is_number(value)):
        where = "here" if not tol.is_number(value) else f"at {rev}"
        return f"{head}  not a number {where}  DIFFERS", False
    diff, limit = row.difference(committed, value), row.limit(committed)
    rel = f" ({row.tolerance:g} x committed)" if row.kind == "rel" else ""
    ok = row.agrees(committed, value)
    return f"{head}{_fmt(float(diff), row.key):>12}{limit:>12.6g}{rel}  {'agrees' if ok else 'DIFFERS'}", ok


def _missing(key: str, committed: dict, here: dict, rev: str) -> str:
    where = "here" if key in committed else f"at {rev}" if key in here else "in both"
    return f"  {key:<24}missing {where}  DIFFERS"


def _untoleranced(key: str, committed: object, value: object) -> tuple[str | None, bool]:
    """A key without a tolerance row: a setting must be equal; a measured metric or a key this
    code does not declare is shown, not judged; the time is left out."""
    try:
        metric = declared(key)
    except KeyError:
        metric = None
    if metric is not None and tol.is_setting(metric):
        if committed == value:
            return None, True
        return (f"  {key:<24}{committed!s:>12}{value!s:>12}  another setting: not the committed run's "
                f"params  DIFFERS"), False
    if (metric is None or tol.toleranced(metric)) and committed != value:
        return (f"  {key:<24}{_fmt(committed, key):>12}{_fmt(value, key):>12}  no tolerance for it in the "
                f"tolerances file: not judged"), True
    return None, True


def metric_lines(committed: dict, here: dict, limits: tol.Tolerances,
                 rev: str) -> tuple[list[str], list[str]]:
    """One line per metric, and the keys that differ (out of tolerance, missing, another setting)."""
    lines = [f"  {'metric':<24}{'committed':>12}{'this run':>12}{'|diff|':>12}{'tolerance':>12}"]
    bad: list[str] = []
    for row in limits.metrics:
        if row.key in committed and row.key in here:
            line, ok = _row_line(row, committed[row.key], here[row.key], rev)
        else:
            line, ok = _missing(row.key, committed, here, rev), False
        lines.append(line)
        bad += [] if ok else [row.key]
    for key in [*committed, *(k for k in here if k not in committed)]:
        if limits.row(key) is not None:
            continue
        if key in committed and key in here:
            line, ok = _untoleranced(key, committed[key], here[key])
        else:
            line, ok = _missing(key, committed, here, rev), False
        lines += [line] if line else []
        bad += [] if ok else [key]
    return lines, bad


def verify(root: Path, rev: str = "HEAD", reports: Path | None = None) -> tuple[str, int]:
    """The report and the exit status (0 all agree, 1 any differs); bad input raises a UserError."""
    commit = ref.revision(root, rev)
    reports_dir = reports if reports is not None else Layout(root).reports
    here = _this_run(reports_dir)
    committed_text = ref.show(root, commit, METRICS)
    if committed_text is None:
        raise UserError(f"{rev}:{METRICS}: not in that commit (nothing to compare with)")
    committed = ref.metrics(committed_text, f"{rev}:{METRICS}")
    limits, source = _tolerances(reports_dir, root, commit, rev)
    named = rev if commit.startswith(rev) else f"{rev} ({commit[:7]})"
    lines = [f"this run: {reports_dir / 'metrics.json'}; committed: {named}; tolerances: "
             f"{source} ({len(limits.runs)} runs, margin {limits.margin:g})",
             *_bytes(root, reports_dir, reports is None, commit, rev), ""]
    rows, bad = metric_lines(committed, here, limits, rev)
    lines += rows
    judged = len(limits.metrics)
    if bad:
        lines.append(f"{len(bad)} DIFFER from {rev}: {', '.join(bad)}")
    else:
        lines.append(f"all {judged} metrics agree with {rev} within tolerance")
    return "\n".join(lines), 1 if bad else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", default="HEAD", metavar="REV",
                        help="the git revision whose committed run to compare with (default: HEAD)")
    parser.add_argument("--reports", type=Path, metavar="DIR",
                        help="this run's reports folder: metrics.json, tolerances.json, a dvc.lock "
                             "(default: ROOT/reports, with ROOT/dvc.lock)")


def main(args: argparse.Namespace) -> int:
    text, status = verify(Path(args.root), args.reference, args.reports)
    print(text)
    return status


COMMAND = Command("verify", "this run's metrics and outputs against the committed run's, within tolerances",
                  add_arguments, main)
