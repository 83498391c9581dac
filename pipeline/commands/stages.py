"""``vfmtok-pipeline STAGE [--params FILE]``: one command per ``dvc.yaml`` stage.

The same run as ``dvc.yaml``'s ``python -m pipeline.stage STAGE`` (``pipeline/stage.py``): the
stage's Prefect flow, on the processes of its launch, its outputs where ``dvc.yaml`` says, no DVC
bookkeeping.
"""

from __future__ import annotations

import argparse
from functools import partial

from pipeline import stage
from pipeline.commands import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dry-run", action="store_true", help="print the launch (processes, nodes, "
                        "the torchrun command) and run nothing")


def main(name: str, args: argparse.Namespace) -> int:
    return stage.start(name, args.params, args.root, args.dry_run)


def commands() -> list[Command]:
    """A command per stage, in ``dvc.yaml``'s order (:func:`pipeline.stage.names`)."""
    return [Command(name, f"run the {name} stage", add_arguments, partial(main, name))
            for name in stage.names()]
