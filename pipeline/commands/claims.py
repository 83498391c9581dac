"""``vfmtok-pipeline claims``: VFMTok vs VQGAN vs a random-init backbone over seeds, written to
``reports/claims.md`` (``pipeline/experiments/claims.py``)."""

from __future__ import annotations

import argparse

from pipeline.commands import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", action="store_true",
                        help="run the DVC experiments this repository does not hold yet first (each "
                             "configuration and seed in a temp dir; the CFG resamples in the workspace, "
                             "which must be clean); otherwise read existing ones")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 of each configuration "
                        "(default: %(default)s)")
    parser.add_argument("--profile", default="claims",
                        help="params/NAME.yaml for the runs (default: claims; active: params.yaml)")


def main(args: argparse.Namespace) -> None:
    from pipeline.errors import UserError
    from pipeline.experiments.claims import claims

    if args.seeds < 1:
        raise UserError(f"--seeds {args.seeds}: must be at least 1")
    print(f"wrote {claims(args.root, run=args.run, profile=args.profile, seeds=args.seeds)}")


COMMAND = Command("claims", "VFMTok vs VQGAN vs a random-init backbone -> reports/claims.md", add_arguments,
                  main)
