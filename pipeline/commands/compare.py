"""``vfmtok-pipeline compare A B``: a Markdown table of two revisions' params and metrics
(``pipeline/experiments/compare.py``)."""

from __future__ import annotations

import argparse

from pipeline.commands import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rev_a", help="a commit, branch or DVC experiment name")
    parser.add_argument("rev_b")


def main(args: argparse.Namespace) -> None:
    from pipeline.experiments.compare import compare

    print(f"wrote {compare(args.rev_a, args.rev_b, args.root)}")


COMMAND = Command("compare", "Markdown table of two revisions' params and metrics", add_arguments, main)
