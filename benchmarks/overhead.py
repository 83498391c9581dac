"""Prefect + DVC overhead of the orchestrated pipeline, and the wall time of a no-op ``dvc repro``.

    .venv/bin/python benchmarks/overhead.py                   # the demo profile (~15+ min on 2 cores)
    .venv/bin/python benchmarks/overhead.py --profile smoke   # a couple of minutes
    .venv/bin/python benchmarks/overhead.py --plain           # also time plain `dvc repro --force`

The repository (tracked and new files; no data/, no reports/) is copied to a temporary folder as a
fresh git repo on the chosen profile, so nothing is cached. Then:

1. ``vfmtok-pipeline reproduce`` from scratch. Total wall time of the command (process start, the
   Prefect API, every ``dvc repro --single-item``, the artifacts) against the stages' own work time
   (``work_seconds`` in ``reports/stage_times.csv``: what each stage reports for its work) and the
   import of torch/timm that every stage process pays with or without Prefect and DVC (timed
   apart). Overhead = total - work - imports; its share of the total has a goal of < 10% (demo).
2. ``dvc repro`` with everything current: the no-op time (goal < 5 s).
3. ``vfmtok-pipeline reproduce`` with everything current: the orchestrated no-op time.
4. With ``--plain``: ``dvc repro --force`` of the same pipeline, where every stage process starts
   its own ephemeral Prefect API, for comparison.

A stage that reports no time of its own counts wholly as overhead and is flagged.
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


def model_import_seconds(root: Path, repeats: int = 3) -> float:
    """What every stage process pays to import the model stack, Prefect and DVC or not (median)."""
    cmd = (sys.executable, "-c", "import torch, torchvision, timm")
    times = sorted(_timed(root, *cmd) for _ in range(repeats))
    return times[len(times) // 2]


def orchestrated(root: Path) -> dict:
    from pipeline.reporting import stage_times

    total = _timed(root, str(BIN / "vfmtok-pipeline"), "reproduce", "--retries", "0")
    rows = stage_times.read(root)
    stages = [{"stage": r.stage, "status": r.status, "wall_s": round(r.seconds, 2),
               "work_s": None if r.work_seconds is None else round(r.work_seconds, 2)} for r in rows]
    work = sum(r.work_seconds or 0.0 for r in rows)
    imports = model_import_seconds(root) * sum(r.status == "ran" for r in rows)
    overhead = total - work - imports
    return {"total_s": round(total, 2), "work_s": round(work, 2), "model_imports_s": round(imports, 2),
            "outside_stages_s": round(total - sum(r.seconds for r in rows), 2),
            "overhead_s": round(overhead, 2), "overhead_share": round(overhead / total, 4), "stages": stages,
            "stages_without_work_time": [r.stage for r in rows if r.work_seconds is None]}


def plain(root: Path) -> dict:
    from pipeline.orchestration import dvc_stages

    total = _timed(root, "dvc", "repro", "--force")
    work = sum(dvc_stages._work_seconds(root, s) or 0.0 for s in dvc_stages.dag_stages(root))
    return {"total_s": round(total, 2), "work_s": round(work, 2), "overhead_s": round(total - work, 2),
            "overhead_share": round((total - work) / total, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="demo", help="params/NAME.yaml to run (default: demo)")
    parser.add_argument("--plain", action="store_true", help="also time plain `dvc repro --force`")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix=f"vfmtok-overhead-{args.profile}-"))
    os.environ.update(_env(root))  # before prefect is imported by the helpers below
    from pipeline import prefect_env

    prefect_env.configure(root)
    try:
        copy_repo(root, args.profile)
        run = orchestrated(root)
        figures = {"profile": args.profile, "cpus": os.cpu_count(), "reproduce": run,
                   "noop_dvc_repro_s": round(_timed(root, "dvc", "repro"), 2),
                   "noop_reproduce_s": round(_timed(root, str(BIN / "vfmtok-pipeline"), "reproduce"), 2)}
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
    print(f"{'stage':<18}{'status':<12}{'wall s':>9}{'work s':>9}")
    for s in run["stages"]:
        work = "-" if s["work_s"] is None else f"{s['work_s']:.1f}"
        print(f"{s['stage']:<18}{s['status']:<12}{s['wall_s']:>9.1f}{work:>9}")
    print(f"vfmtok-pipeline reproduce: {run['total_s']:.1f} s total = {run['work_s']:.1f} s stage work"
          f" + {run['model_imports_s']:.1f} s importing torch/timm in the stage processes"
          f" + {run['overhead_s']:.1f} s Prefect + DVC overhead"
          f" ({100 * run['overhead_share']:.1f}%, goal < 10%)")
    print(f"  of which {run['outside_stages_s']:.1f} s outside the stages (flow start, API, artifacts)")
    if run["stages_without_work_time"]:
        missing = ", ".join(run["stages_without_work_time"])
        print(f"  counted wholly as overhead (the stage reports no time of its own): {missing}")
    print(f"no-op dvc repro: {f['noop_dvc_repro_s']:.2f} s (goal < 5 s)")
    print(f"no-op vfmtok-pipeline reproduce: {f['noop_reproduce_s']:.2f} s")
    if (p := f.get("plain_dvc_repro")) and "error" in p:
        print(f"plain dvc repro --force failed:\n{p['error']}")
    elif p:
        print(f"plain dvc repro --force: {p['total_s']:.1f} s total, {p['work_s']:.1f} s work, "
              f"overhead {p['overhead_s']:.1f} s = {100 * p['overhead_share']:.1f}%")


if __name__ == "__main__":
    main()
