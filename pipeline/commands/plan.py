"""``vfmtok-pipeline plan [--gpus N] [--gpu-kind NAME] [--report FILE]``: what the active params
would cost before a run starts. One line per stage: its work, the measured rate it assumes and
the benchmark report that rate comes from, its wall time on N GPUs and its GPU-hours, each training
stage's peak memory a GPU (measured, else estimated from the models on the meta device) and
whether it fits the GPU, and the total (``pipeline/planning/costs.py``). Reads no data and
initialises no CUDA."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from pipeline.commands import Command
from pipeline.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("--profile", default=None, help="plan profile NAME (params/NAME.yaml over the base) "
                        "instead of the params file")
    parser.add_argument("--set", dest="set_params", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param for this plan, as `dvc exp run -S` (repeatable), e.g. "
                        "ar_model.model=RAR-L")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs the stages run on (default: %(default)s)")
    parser.add_argument("--gpu-kind", default="H200", help="a word of the GPU's name, or cpu (default: "
                        "%(default)s): picks the newest benchmark report of that kind and the GPU's memory")
    parser.add_argument("--gpu-memory", type=float, default=None, metavar="GB",
                        help="the GPU's memory in GB, for a kind the table does not know")
    parser.add_argument("--report", default=None, help="the benchmark report to take the rates from")
    parser.add_argument("--refresh", action="store_true",
                        help="recompute pipeline/planning/footprints.json for every profile, then plan")


def overrides(pairs: list[str]) -> dict:
    """``["a.b=1", ...]`` as the nested dict ``{"a": {"b": 1}}`` (values read as YAML)."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise UserError(f"--set {pair!r}: expected SECTION.KEY=VALUE")
        *sections, last = key.split(".")
        node = out
        for part in sections:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    return out


def load(args: argparse.Namespace, root: Path):
    """(params, the name the plan shows) with the ``--set`` overrides applied and validated."""
    from pipeline.params import SAFE_LOADER, params_from_data
    from pipeline.params.profiles import merge, profile_data, profile_file

    if args.profile:
        data, path = profile_data(args.profile, root), profile_file(args.profile, root)
        name = f"profile `{args.profile}`"
    else:
        path = Path(args.params)
        if not path.is_file():
            raise UserError(f"{path}: params file not found (or name one with --params / --profile)")
        try:
            data, name = yaml.load(path.read_text(), Loader=SAFE_LOADER) or {}, f"`{path}`"
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if args.set_params:
        data = merge(data, overrides(args.set_params))
        name += " with " + ", ".join(f"`{s}`" for s in args.set_params)
    return params_from_data(data, path, check_paths=False), name


def main(args: argparse.Namespace) -> int:
    from pipeline.planning import footprints
    from pipeline.planning.costs import make_plan, markdown

    root = Path(args.root)
    if args.gpus < 1:
        raise UserError(f"--gpus {args.gpus}: must be 1 or more")
    if args.refresh:
        print(f"{footprints.FILE}: {footprints.refresh(root)} footprints")
    params, name = load(args, root)
    report = Path(args.report) if args.report else None
    if report is not None and not report.is_file():
        raise UserError(f"--report {report}: no such file")
    capacity = args.gpu_memory * 1e9 if args.gpu_memory else None
    print(markdown(make_plan(params, name, root, args.gpus, args.gpu_kind, report, capacity)))
    return 0


COMMAND = Command("plan", "GPU-hours, wall time and memory of the active params, before a run", add_arguments,
                  main)
