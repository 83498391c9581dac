"""``vfmtok-pipeline STAGE`` (or ``python -m pipeline STAGE``): run one stage's Prefect flow.

Also ``profile NAME`` (make ``params/NAME.yaml`` the active ``params.yaml``) and ``check``
(validate a params file). ``dvc.yaml`` calls this, so a stage runs the same by hand or under DVC.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
from pathlib import Path

from pipeline import prefect_env

STAGES = {
    "prepare": ("pipeline.prepare", "prepare_flow"),
    "extract_features": ("pipeline.extract_features", "extract_features_flow"),
}


def _run_stage(name: str, params_file: str, root: str) -> None:
    module, attr = STAGES[name]
    flow = getattr(importlib.import_module(module), attr)
    flow(params_file=params_file, root=root)


def _use_profile(name: str, root: str) -> None:
    from pipeline.params import load_params, profile_path

    src = profile_path(name, root)
    if not src.is_file():
        known = sorted(p.stem for p in src.parent.glob("*.yaml"))
        raise SystemExit(f"{src}: no such profile (known: {', '.join(known)})")
    load_params(src)  # refuse to activate a profile that does not validate here
    shutil.copyfile(src, Path(root) / "params.yaml")
    print(f"params.yaml is now the {name!r} profile ({src})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vfmtok-pipeline", description=__doc__)
    parser.add_argument("--root", default=".", help="project root (default: .)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in STAGES:
        s = sub.add_parser(name, help=f"run the {name} stage")
        s.add_argument("--params", default="params.yaml")
    sub.add_parser("profile", help="activate params/NAME.yaml").add_argument("name")
    sub.add_parser("check", help="validate a params file").add_argument(
        "file", nargs="?", default="params.yaml")
    args = parser.parse_args(argv)

    prefect_env.configure(args.root)
    from pipeline.config import ParamsError

    try:
        if args.command == "profile":
            _use_profile(args.name, args.root)
        elif args.command == "check":
            from pipeline.params import load_params

            load_params(args.file)
            print(f"{args.file}: ok")
        else:
            _run_stage(args.command, args.params, args.root)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
