"""How long ``vfmtok-pipeline plan`` takes, per profile, in a fresh interpreter each time (what a user
waits for): wall clock of ``python -m pipeline plan --profile NAME --gpus 8``, the profiles in turn
so that they share a busy machine's load alike, median and min-max of ``--repeats`` runs. Also
once per profile with the footprints file unread (``--no-cache`` case): the meta-device pass that
an edited configuration costs.

    python benchmarks/plan_speed.py             # -> reports/benchmarks/plan_speed.{json,md}
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from bench_report import command_line, device_name, write_report  # noqa: E402

from pipeline.params.profiles import profile_names  # noqa: E402


def wall(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def uncached(name: str, env: dict[str, str]) -> float:
    """One plan with an empty footprints table (patched in the child): every footprint computed."""
    code = ("import sys; from pipeline.planning import footprints; footprints.read = lambda path=None: {}; "
            f"from pipeline.cli import main; sys.exit(main(['plan', '--profile', {name!r}, '--gpus', '8']))")
    return wall([sys.executable, "-c", code], env)


def main() -> None:
    args = command_line(__doc__, "plan_speed").parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    names = profile_names(ROOT)
    runs: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.repeats):
        for name in names:
            argv = [sys.executable, "-m", "pipeline", "plan", "--profile", name, "--gpus", "8"]
            runs[name].append(wall(argv, env))
    cold = {name: uncached(name, env) for name in names}
    import torch

    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": device_name(torch.device("cpu")),
              "repeats": args.repeats,
              "plan_s": {n: {"median": statistics.median(v), "min": min(v), "max": max(v)}
                         for n, v in runs.items()},
              "uncached_s": cold}
    rows = [f"| `{n}` | {s['median']:.2f} | {s['min']:.2f}-{s['max']:.2f} | {cold[n]:.1f} |"
            for n, s in report["plan_s"].items()]
    md = "\n".join([f"`vfmtok-pipeline plan --profile NAME --gpus 8`, {args.repeats} runs a profile in fresh "
                    f"interpreters, {report['machine']}, {report['date']}:", "",
                    "| profile | median s | min-max s | footprints computed (one run), s |",
                    "|---|---|---|---|",
                    *rows]) + "\n"
    write_report(args.out, report, md)


if __name__ == "__main__":
    main()
