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
    "train_tokenizer": ("pipeline.train_tokenizer", "train_tokenizer_flow"),
    "tokenize": ("pipeline.tokenize", "tokenize_flow"),
    "train_ar": ("pipeline.train_ar", "train_ar_flow"),
    "sample": ("pipeline.sample", "sample_flow"),
    "evaluate": ("pipeline.evaluate", "evaluate_flow"),
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
    cmp = sub.add_parser("compare", help="Markdown table of two revisions' params and metrics")
    cmp.add_argument("rev_a", help="a commit, branch or DVC experiment name")
    cmp.add_argument("rev_b")
    clm = sub.add_parser("claims", help="VFMTok vs the VQGAN baseline -> reports/claims.md")
    clm.add_argument("--run", action="store_true",
                     help="run the two DVC experiments first (otherwise read existing ones)")
    rep = sub.add_parser("reproduce", help="dvc repro as one Prefect flow, a task per stage")
    rep.add_argument("targets", nargs="*", help="stages to update, with their upstream (default: all)")
    srv = sub.add_parser("serve", help="serve the scheduled retrain (a named `dvc exp run` per run)")
    srv.add_argument("--cron", default="0 3 * * 0", help='schedule (default: "0 3 * * 0", Sundays 03:00)')
    srv.add_argument("--name", default="vfmtok-retrain", help="deployment name")
    srv.add_argument("--set", dest="set_params", action="append", default=[], metavar="KEY=VALUE",
                     help="params override for every scheduled run, as `dvc exp run -S` (repeatable)")
    srv.add_argument("--start-server", action="store_true", help="also run `prefect server` on 127.0.0.1")
    srv.add_argument("--port", type=int, default=4200, help="Prefect server port on 127.0.0.1")
    for s in (rep, srv):
        s.add_argument("--retries", type=int, default=2, help="retries of a failing stage")
        s.add_argument("--retry-delay", type=float, default=10.0, help="first retry delay, doubling after")
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
        elif args.command in ("compare", "claims"):
            from pipeline import experiments

            out = (experiments.compare(args.rev_a, args.rev_b, args.root) if args.command == "compare"
                   else experiments.claims(args.root, run=args.run))
            print(f"wrote {out}")
        elif args.command in ("reproduce", "serve"):
            from pipeline import orchestrate

            return orchestrate.cli(args)
        else:
            _run_stage(args.command, args.params, args.root)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
