"""``vfmtok-pipeline rar-vs-raster``: a RAR against the raster GPT of the same size, trained for
the same steps, written to ``reports/rar_vs_raster.md`` (``pipeline/experiments/rar_vs_raster.py``).
``--gpt`` and ``--rar`` name a size of each of the two generator families."""

from __future__ import annotations

import argparse

from pipeline.commands import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", action="store_true",
                        help="run the two DVC experiments first (otherwise read existing ones)")
    parser.add_argument("--gpt", default="GPT-Tiny", help="the raster GPT (default: GPT-Tiny)")
    parser.add_argument("--rar", default="RAR-Tiny", help="the RAR of the same size (default: RAR-Tiny)")


def main(args: argparse.Namespace) -> None:
    from pipeline.experiments.rar_vs_raster import rar_vs_raster

    print(f"wrote {rar_vs_raster(args.root, args.gpt, args.rar, run_first=args.run)}")


COMMAND = Command("rar-vs-raster", "RAR vs the raster GPT, equal size and steps -> reports/rar_vs_raster.md",
                  add_arguments, main)
