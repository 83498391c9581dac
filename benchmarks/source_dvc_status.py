"""How long DVC takes to notice (or rule out) a change of the image source: the source tree as a
stage dependency, against the listing that ``list_source`` writes.

    python benchmarks/source_dvc_status.py   # 100,000 files -> reports/benchmarks/source_dvc_status.{json,md}
    python benchmarks/source_dvc_status.py --files 20000 --repeats 3

Generates an ILSVRC-like tree of tiny files (``train/<wnid>/<wnid>_<i>.JPEG``, 100 per class;
DVC's cost is per file, not per byte) under the system temp folder, and two throw-away DVC
projects beside it:

- ``tree``: one stage whose dependency is the source folder itself (what ``prepare`` had);
- ``listing``: ``list_source`` (the real stage, ``python -m pipeline.stage list_source``) writes
  ``data/source_listing.tsv``; one stage depends on that file instead.

- ``empty``: a stage with no dependency: what ``dvc status`` costs on this machine anyway.

For each: the first ``dvc repro`` (DVC hashes every dependency file once), then ``dvc status``
(nothing changed) ``--repeats`` times, the three projects in turn so that they share the load
of a busy machine alike; wall clock, median and min-max. For the listing also the time to list
the tree again (``vfmtok-pipeline list_source``, what a user runs after editing the source;
in-process, without the Prefect start-up; wall and CPU time). The tree is deleted afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from bench_report import command_line  # noqa: E402

from pipeline import sources  # noqa: E402
from pipeline.formats import source_listing  # noqa: E402
from pipeline.params.profiles import profile_data  # noqa: E402

PER_CLASS = 100
CONSUME = "python -c \"open('out.txt', 'w').write('ok')\""


def make_tree(root: Path, n_files: int) -> None:
    for k in range(n_files // PER_CLASS):
        folder = root / "train" / f"n{k:08d}"
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            (folder / f"n{k:08d}_{i}.JPEG").write_bytes(b"%d" % i)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def _wall(cwd: Path, *cmd: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def project(folder: Path, stages: dict, params: dict | None = None) -> Path:
    folder.mkdir()
    (folder / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    if params:
        (folder / "params.yaml").write_text(yaml.safe_dump(params))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        _wall(folder, *cmd)
    return folder


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2)}


def measure(projects: dict[str, Path], repeats: int) -> dict:
    out = {name: {"first_repro_s": round(_wall(folder, "dvc", "repro", "-q"), 1)}
           for name, folder in projects.items()}
    status: dict[str, list[float]] = {name: [] for name in projects}
    for _ in range(repeats):
        for name, folder in projects.items():
            status[name].append(_wall(folder, "dvc", "status", "-q"))
    for name in projects:
        out[name]["status_s"] = spread(status[name])
    return out


def relist(src: Path, out: Path, repeats: int) -> dict:
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        source_listing.write(out, sources.scan("imagenet", src), "imagenet", src)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return {"relist_s": spread(wall), "relist_cpu_s": spread(cpu)}


def main() -> None:
    parser = command_line(__doc__, "source_dvc_status")
    parser.add_argument("--files", type=int, default=100_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vfmtok-dvc-status-"))
    try:
        src = work / "imagenet"
        make_tree(src, args.files)
        tree = project(work / "tree", {"consume": {"cmd": CONSUME, "deps": [str(src)], "outs": ["out.txt"]}})
        params = profile_data("smoke", ROOT)
        params["prepare"].update(source="imagenet", path=str(src))
        listing = project(work / "listing", {
            "list_source": {"cmd": f"{sys.executable} -m pipeline.stage list_source",
                            "params": ["prepare.source", "prepare.path", "prepare.devkit"],
                            "outs": ["data/source_listing.tsv"]},
            "consume": {"cmd": CONSUME, "deps": ["data/source_listing.tsv"], "outs": ["out.txt"]},
        }, params)  # fmt: skip
        empty = project(work / "empty", {"consume": {"cmd": CONSUME, "outs": ["out.txt"]}})
        result = {"files": args.files, "repeats": args.repeats,
                  **measure({"tree_dependency": tree, "listing_dependency": listing, "no_dependency": empty},
                            args.repeats)}
        result["listing_dependency"].update(relist(src, work / "again.tsv", args.repeats))
        result["listing_bytes"] = (listing / "data" / "source_listing.tsv").stat().st_size
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    t, li, e = result["tree_dependency"], result["listing_dependency"], result["no_dependency"]

    def f(d: dict) -> str:
        return f"{d['median']} s ({d['min']}-{d['max']})"

    table = (f"{args.files:,} files; wall clock, median (min-max) of {args.repeats}.\n\n"
             "| dependency | first `dvc repro` | `dvc status`, nothing changed | list the source again |\n"
             "|---|---|---|---|\n"
             f"| the source tree | {t['first_repro_s']} s | {f(t['status_s'])} | - |\n"
             f"| `data/source_listing.tsv` | {li['first_repro_s']} s | {f(li['status_s'])} | "
             f"{f(li['relist_s'])}; CPU {f(li['relist_cpu_s'])} |\n"
             f"| none (DVC's own start-up) | {e['first_repro_s']} s | {f(e['status_s'])} | - |\n")
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
