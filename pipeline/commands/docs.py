"""``vfmtok-pipeline docs``: rewrite the generated tables of README.md and docs/*.md from ``reports/``
(``--check``: rewrite nothing, exit 1 listing each block that disagrees).

The pages' measured figures live in marked blocks (``pipeline/reporting/doc_tables.py``), so after
a run that changes ``reports/``, one command brings every page in line, and the test suite fails
while a committed page says something the committed reports do not. Torch-free: it reads JSON,
CSV and Markdown only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.commands import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true",
                        help="rewrite nothing; exit 1 listing each block that disagrees with reports/")


def main(args: argparse.Namespace) -> int:
    from pipeline.reporting.doc_tables import run

    status, out, err = run(Path(args.root), args.check)
    for line in out:
        print(line)
    for line in err:
        print(line, file=sys.stderr)
    return status


COMMAND = Command("docs", "rewrite the measured tables of README.md and docs/ from reports/ (--check)",
                  add_arguments, main)
