"""Prefect + DVC overhead of the orchestrated pipeline, and the wall time of no-op runs.

    .venv/bin/python benchmarks/overhead.py                   # the demo profile (~15+ min on 2 cores)
    .venv/bin/python benchmarks/overhead.py --profile smoke   # a few minutes
    .venv/bin/python benchmarks/overhead.py --plain           # also time plain `dvc repro --force`

The repository (tracked and new files; no data/, no reports/) is copied to a temporary folder as a
fresh git repo on the chosen profile, so nothing is cached. Then:

1. ``vfmtok-pipeline reproduce`` from scratch, once. Its wall time is split with what every stage
   process reports about itself (``reports/stage_times.csv``, written from the line each stage
   prints: ``pipeline/orchestration/stage_process.py``): ``work`` (the stage flow's body: what the
   stage does, Prefect or not), ``imports`` (importing the stage's own module: torch and the model
   stack where the stage uses them, nothing for ``prepare``) and ``prefect`` (importing Prefect and
   the flow run around the body). Overhead = total - work - imports: Prefect (the orchestrating
   flow, its API, the stages' flow runs) + DVC (one ``dvc repro --single-item`` per stage: start,
   hashing, committing outputs) + process starts. Goal: <= 5% of the total (demo profile).
2. No-op runs, everything current, ``--repeats`` times each (median, min-max): ``dvc repro``,
   ``vfmtok-pipeline reproduce`` (DVC's in-process status says nothing is stale: no flow starts)
   and ``vfmtok-pipeline reproduce --record`` (the whole flow, every stage task finding its stage
   current without a ``dvc`` process).
3. With ``--plain``: ``dvc repro --force`` of the same pipeline, where every stage process starts
   its own ephemeral Prefect API, for comparison.

A stage process that reports no times counts wholly as overhead and is flagged.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL" and not k.startswith("PREFECT__")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env["PREFECT_HOME"] = str(root / ".prefect")
    return env


def _timed(root: Path, *cmd: str) -> float:
    """Wall seconds of ``cmd`` in ``root``; its output goes to ``root/.bench.log``."""
    t0 = time.perf_counter()
    with open(root / ".bench.log", "ab") as log:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        log.flush()
        rc = subprocess.run(cmd, cwd=root, env=_env(root), stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    if rc != 0:
        tail = (root / ".bench.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"{' '.join(cmd)} exited with {rc}:\n{tail}")
    return seconds


def copy_repo(dst: Path, profile: str) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if (REPO / rel).is_file() and not rel.startswith(("data/", "reports/")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dst / rel)
    _timed(dst, "git", "init", "-q")
    _timed(dst, str(BIN / "vfmtok-pipeline"), "profile", profile)
    _timed(dst, "git", "add", "-A")
    _timed(dst, "git", "-c", "user.name=bench", "-c", "user.email=b@b", "commit", "-qm", profile)
    return dst


def _median(values: list[float]) -> dict:
    v = sorted(values)
    return {"median_s": round(v[len(v) // 2], 2), "min_s": round(v[0], 2), "max_s": round(v[-1], 2),
            "n": len(v)}


def orchestrated(root: Path) -> dict:
    from pipeline.reporting import stage_times

    total = _timed(root, str(BIN / "vfmtok-pipeline"), "reproduce", "--retries", "0")
    rows = stage_times.read(root)
    stages = [{"stage": r.stage, "status": r.status, "wall_s": round(r.seconds, 2),
               "work_s": _round(r.work_seconds), "imports_s": _round(r.import_seconds),
               "prefect_s": _round(r.prefect_seconds)} for r in rows]
    work = sum(r.work_seconds or 0.0 for r in rows)
    imports = sum(r.import_seconds or 0.0 for r in rows)
    prefect_in_stages = sum(r.prefect_seconds or 0.0 for r in rows)
    stage_wall = sum(r.seconds for r in rows)
    overhead = total - work - imports
    return {"total_s": round(total, 2), "work_s": round(work, 2), "imports_s": round(imports, 2),
            "overhead_s": round(overhead, 2), "overhead_share": round(overhead / total, 4),
            "outside_stages_s": round(total - stage_wall, 2),
            "prefect_in_stages_s": round(prefect_in_stages, 2),
            "dvc_and_process_starts_s": round(stage_wall - work - imports - prefect_in_stages, 2),
            "stages": stages,
            "stages_without_times": [r.stage for r in rows if r.status == "ran" and r.import_seconds is None]}


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def noop(root: Path, repeats: int) -> dict:
    runs = {"dvc repro": ["dvc", "repro"],
            "vfmtok-pipeline reproduce": [str(BIN / "vfmtok-pipeline"), "reproduce"],
            "vfmtok-pipeline reproduce --record": [str(BIN / "vfmtok-pipeline"), "reproduce", "--record"]}
    return {name: _median([_timed(root, *cmd) for _ in range(repeats)]) for name, cmd in runs.items()}


def plain(root: Path) -> dict:
    from pipeline.orchestration import dag, dvc_stages

    total = _timed(root, "dvc", "repro", "--force")
    work = sum(dvc_stages.reported_work_seconds(root, s) or 0.0 for s in dag.dag_stages(root))
    return {"total_s": round(total, 2), "work_s": round(work, 2), "overhead_s": round(total - work, 2),
            "overhead_share": round((total - work) / total, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="demo", help="params/NAME.yaml to run (default: demo)")
    parser.add_argument("--plain", action="store_true", help="also time plain `dvc repro --force`")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each no-op run (default 3)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix=f"vfmtok-overhead-{args.profile}-"))
    os.environ.update(_env(root))  # before prefect is imported by the helpers below
    from pipeline.orchestration import prefect_env

    prefect_env.configure(root)
    try:
        copy_repo(root, args.profile)
        run = orchestrated(root)
        figures = {"profile": args.profile, "cpus": os.cpu_count(), "reproduce": run,
                   "noop": noop(root, args.repeats)}
        if args.plain:
            try:
                figures["plain_dvc_repro"] = plain(root)
            except SystemExit as e:  # keep the orchestrated figures
                figures["plain_dvc_repro"] = {"error": str(e)[-2000:]}
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


def report(f: dict) -> None:
    run = f["reproduce"]
    print(f"profile {f['profile']}, {f['cpus']} CPUs")
    print(f"{'stage':<18}{'status':<12}{'wall s':>9}{'work s':>9}{'imports s':>11}{'prefect s':>11}")
    for s in run["stages"]:
        cells = ["-" if s[k] is None else f"{s[k]:.1f}" for k in ("work_s", "imports_s", "prefect_s")]
        print(f"{s['stage']:<18}{s['status']:<12}{s['wall_s']:>9.1f}{cells[0]:>9}{cells[1]:>11}{cells[2]:>11}")
    print(f"vfmtok-pipeline reproduce: {run['total_s']:.1f} s total = {run['work_s']:.1f} s stage work"
          f" + {run['imports_s']:.1f} s stage imports (torch, ... where used)"
          f" + {run['overhead_s']:.1f} s Prefect + DVC overhead"
          f" ({100 * run['overhead_share']:.1f}%, goal <= 5%)")
    print(f"  overhead: {run['outside_stages_s']:.1f} s outside the stages (flow start, API, artifacts),"
          f" {run['prefect_in_stages_s']:.1f} s Prefect inside the stage processes,"
          f" {run['dvc_and_process_starts_s']:.1f} s DVC and process starts")
    if run["stages_without_times"]:
        print(f"  no times reported (counted as overhead): {', '.join(run['stages_without_times'])}")
    for name, t in f["noop"].items():
        print(f"no-op {name}: {t['median_s']:.2f} s (median of {t['n']}, {t['min_s']:.2f}-{t['max_s']:.2f})")
    if (p := f.get("plain_dvc_repro")) and "error" in p:
        print(f"plain dvc repro --force failed:\n{p['error']}")
    elif p:
        print(f"plain dvc repro --force: {p['total_s']:.1f} s total, {p['work_s']:.1f} s work, "
              f"overhead {p['overhead_s']:.1f} s = {100 * p['overhead_share']:.1f}%")


if __name__ == "__main__":
    main()
