"""The limits ``vfmtok-pipeline verify`` judges a run's metrics by, from re-runs of the same
params: ``reports/tolerances.json`` (``pipeline/evaluation/tolerances.py`` reads it).

    python benchmarks/tolerances.py amd=runs/amd intel=runs/intel committed=git:HEAD \\
        --cpu committed="Intel Xeon (2 cores)" --out reports/tolerances.json

Each RUN is ``LABEL=PATH``: PATH a folder holding a run's ``metrics.json`` (a copy of its
``reports/``; put the run's ``dvc.lock`` beside it to have its bytes compared, and a ``run.json``
``{"cpu": ..., "threads": ..., "date": ...}`` to record where and when it ran), or ``git:REV``
(the metrics committed at REV; its date is the commit's, its threads ``launch.cpu_threads`` of
its ``params.yaml``). ``--cpu``, ``--threads`` and ``--date LABEL=VALUE`` say what a run's files
do not; what nobody says is written as null.

For each measured metric (a row per key the declarations call measured): ``observed_spread``
is the largest difference between two of the runs (max - min); the tolerance is ``--margin``
(default 2) x that spread, but at least one unit of the metric's last digit (its ``digits``), so
that rounding never fails a run. The runs must share their settings (``fid_images``, ...): runs
of other params measure something else. The table is printed; ``how`` in the file says how many
runs, on which CPU kinds, thread settings and dates, with which margin, and whether their data
outputs differ in bytes (runs with byte-identical outputs show no spread: their rows are floors).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from pipeline import stage  # noqa: E402
from pipeline.errors import UserError  # noqa: E402
from pipeline.evaluation import tolerances as tol  # noqa: E402
from pipeline.evaluation.metrics import METRICS, Metric, declared  # noqa: E402
from pipeline.experiments import reference_run as ref  # noqa: E402


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        label, sep, value = item.partition("=")
        if not sep or not label:
            raise UserError(f"{flag} {item!r}: give LABEL=VALUE")
        out[label] = value
    return out


def _git_run(root: Path, label: str, rev: str, reports: set[str]) -> dict:
    commit = ref.revision(root, rev)
    text = ref.show(root, commit, "reports/metrics.json")
    if text is None:
        raise UserError(f"{label}: git:{rev} has no reports/metrics.json")
    params = yaml.safe_load(ref.show(root, commit, "params.yaml") or "") or {}
    lock = ref.show(root, commit, "dvc.lock")
    return {"label": label, "cpu": None, "threads": (params.get("launch") or {}).get("cpu_threads"),
            "date": ref.commit_date(root, commit),
            "source": f"git:{rev}" if commit.startswith(rev) else f"git:{rev} ({commit[:7]})",
            "metrics": ref.metrics(text, f"{label}: git:{rev}:reports/metrics.json"),
            "outputs": ref.outputs(lock, reports, f"git:{rev}:dvc.lock") if lock else None}


def _folder_run(label: str, folder: Path, reports: set[str]) -> dict:
    path = folder / "metrics.json"
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"{label}: {path}: cannot read ({e.strerror})") from None
    info = json.loads((folder / "run.json").read_text()) if (folder / "run.json").is_file() else {}
    lock = folder / "dvc.lock"
    return {"label": label, "cpu": info.get("cpu"), "threads": info.get("threads"), "date": info.get("date"),
            "source": str(folder), "metrics": ref.metrics(text, f"{label}: {path}"),
            "outputs": ref.outputs(lock.read_text(), reports, str(lock)) if lock.is_file() else None}


def _threads(value: str, label: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"--threads {label}={value}: give a whole number") from None


def load_runs(root: Path, specs: list[str], said: dict[str, dict[str, str]]) -> list[dict]:
    """The runs ``specs`` name, with what ``said`` (``{"cpu": {label: value}, ...}``) adds."""
    reports = ref.number_reports((root / "dvc.yaml").read_text() if (root / "dvc.yaml").is_file() else "")
    runs = []
    for spec in specs:
        label, sep, where = spec.partition("=")
        label, where = (label, where) if sep else (spec, spec)
        run = (_git_run(root, label, where[4:], reports) if where.startswith("git:")
               else _folder_run(label, Path(where), reports))
        for name, values in said.items():
            if label in values:
                run[name] = _threads(values[label], label) if name == "threads" else values[label]
        runs.append(run)
    labels = [r["label"] for r in runs]
    if len(set(labels)) != len(labels):
        raise UserError(f"two runs are labelled {next(x for x in labels if labels.count(x) > 1)}")
    return runs


def _declared(runs: list[dict]) -> list[tuple[str, Metric]]:
    """The keys the runs have that this code declares (others are not judged), in declaration order."""
    found: dict[str, Metric] = {}
    for key in (k for r in runs for k in r["metrics"]):
        with contextlib.suppress(KeyError):
            found[key] = declared(key)
    return sorted(found.items(), key=lambda item: METRICS.index(item[1]))


def measured_keys(runs: list[dict]) -> list[str]:
    """The measured metrics the runs have, in declaration order; the runs' settings must agree."""
    measured = []
    for key, metric in _declared(runs):
        values = {r["label"]: r["metrics"].get(key, "absent") for r in runs}
        if tol.is_setting(metric) and len({json.dumps(v) for v in values.values()}) > 1:
            raise UserError(f"{key} differs between the runs ({values}): re-runs share their params")
        if tol.toleranced(metric) and any(v is not None for v in values.values()):
            if not all(tol.is_number(v) for v in values.values()):
                raise UserError(f"{key} is not a number in every run ({values})")
            measured.append(key)
    return measured


def row(key: str, values: list[float], margin: float, bytes_differ: bool | None) -> tol.Row:
    """One metric's limit: margin x the largest pairwise difference, at least one unit of the last digit."""
    places = declared(key).digits
    spread = round(max(abs(a - b) for a, b in itertools.combinations(values, 2)), places)
    floor = 10.0 ** -places
    tolerance = round(max(margin * spread, floor), places + 3)
    note = ""
    if margin * spread < floor:
        runs = {True: "runs that differ in bytes", False: "runs with byte-identical outputs"}.get(
            bytes_differ, "runs")
        why = f"no spread over {len(values)} {runs}" if spread == 0 else f"margin x spread < {floor:g}"
        note = f"{why}: the floor, one unit of the last digit ({floor:g})"
    return tol.Row(key, tolerance, "abs", spread, len(values), note)


def differing_outputs(runs: list[dict]) -> list[str] | None:
    """The compared outputs whose bytes are not the same in every run that has them (None: a run
    came without its dvc.lock, so it is not known)."""
    if any(r["outputs"] is None for r in runs):
        return None
    paths = [p for r in runs for p in r["outputs"].hashes]
    return [p for p in dict.fromkeys(paths)
            if len({r["outputs"].hashes[p] for r in runs if p in r["outputs"].hashes}) > 1]


def _said(runs: list[dict], name: str) -> str:
    """The distinct values of a run field, and for how many runs nobody recorded it."""
    values = ", ".join(sorted({str(r[name]) for r in runs if r[name] is not None}))
    unknown = sum(r[name] is None for r in runs)
    if unknown == len(runs):
        return "not recorded"
    return values + (f" (not recorded for {unknown})" if unknown else "")


def how(runs: list[dict], margin: float, differing: list[str] | None) -> str:
    """The sentences that say how the limits were measured."""
    if differing is None:
        outputs = "not every run came with its dvc.lock: whether their outputs differ in bytes is not known"
    elif differing:
        outputs = f"outputs that differ in bytes between them: {', '.join(differing)}"
    else:
        outputs = ("every output is byte-identical across them, so the spreads are 0 and every tolerance is "
                   "the floor: they say nothing of another CPU kind")
    dates = "; a git run's date is its commit's" if any(r["source"].startswith("git:") for r in runs) else ""
    return (f"{len(runs)} runs of the same params ({', '.join(r['label'] for r in runs)}); CPU: "
            f"{_said(runs, 'cpu')}; torch threads: {_said(runs, 'threads')}; dates: {_said(runs, 'date')}"
            f"{dates}; {outputs}. Tolerance = {margin:g} x the largest difference between two runs "
            f"(observed_spread), at least one unit of the metric's last digit.")


def build(runs: list[dict], margin: float) -> tol.Tolerances:
    if len(runs) < 2:
        raise UserError(f"{len(runs)} run given: a spread needs two runs or more")
    differing = differing_outputs(runs)
    differ = None if differing is None else bool(differing)
    rows = [row(k, [r["metrics"][k] for r in runs], margin, differ) for k in measured_keys(runs)]
    listed = [{k: r[k] for k in ("label", "cpu", "threads", "date", "source")} for r in runs]
    return tol.Tolerances(how(runs, margin, differing), margin, listed, rows)


def table(t: tol.Tolerances) -> str:
    lines = [f"{'metric':<24}{'runs':>5}{'spread':>12}{'tolerance':>12}  kind  note"]
    lines += [f"{r.key:<24}{r.runs:>5}{r.observed_spread:>12g}{r.tolerance:>12g}  {r.kind:<4}  {r.note}"
              for r in t.metrics]
    return "\n".join([*lines, "", t.how])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="LABEL=FOLDER or LABEL=git:REV")
    parser.add_argument("--out", type=Path, required=True, help="the tolerances file to write")
    parser.add_argument("--margin", type=float, default=2.0, help="tolerance = margin x spread (default 2)")
    for name in ("cpu", "threads", "date"):
        parser.add_argument(f"--{name}", action="append", default=[], metavar="LABEL=VALUE",
                            help=f"a run's {name}, where its files do not say it")
    parser.add_argument("--root", type=Path, default=ROOT, help="the git checkout of git:REV runs")
    args = parser.parse_args(argv)

    def run() -> None:
        if not args.margin > 0:
            raise UserError(f"--margin {args.margin:g}: give a number > 0")
        said = {name: _pairs(getattr(args, name), f"--{name}") for name in ("cpu", "threads", "date")}
        made = build(load_runs(args.root, args.runs, said), args.margin)
        tol.write(args.out, made)
        print(table(made))
        print(f"wrote {args.out}")

    return stage.guarded(run)


if __name__ == "__main__":
    sys.exit(main())
