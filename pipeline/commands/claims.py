"""``vfmtok-pipeline claims``: VFMTok vs VQGAN vs a random-init backbone, written to
``reports/claims.md`` (``pipeline/experiments/claims.py``)."""

from __future__ import annotations

import argparse

from pipeline.commands import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", action="store_true",
                        help="run the DVC experiments first (three in temp dirs; the CFG sweep in the "
                             "workspace, which must be clean); otherwise read existing ones")
    parser.add_argument("--profile", default="claims",
                        help="params/NAME.yaml for the runs (default: claims; active: params.yaml)")


def main(args: argparse.Namespace) -> None:
    from pipeline.experiments.claims import claims

    print(f"wrote {claims(args.root, run=args.run, profile=args.profile)}")


COMMAND = Command("claims", "VFMTok vs VQGAN vs a random-init backbone -> reports/claims.md", add_arguments,
                  main)
