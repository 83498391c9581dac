"""``vfmtok-pipeline reproduce [STAGE...]``: ``dvc repro`` as one Prefect flow, a task per stage.

The run itself (its Prefect API, DVC's status, the flow, the exit status) is
``pipeline/orchestration/reproduce.py``.
"""

from __future__ import annotations

import argparse

from pipeline.commands import Command, add_retry_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("targets", nargs="*", help="stages to update, with their upstream (default: all)")
    parser.add_argument("--record", action="store_true",
                        help="run (and record) the Prefect flow even when DVC says every stage is current")
    add_retry_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from pipeline.orchestration.reproduce import reproduce

    return reproduce(args.root, args.targets, args.retries, args.retry_delay, record=args.record)


COMMAND = Command("reproduce", "dvc repro as one Prefect flow, a task per stage", add_arguments, main)
