"""``vfmtok-pipeline check [FILE]``: would the stages accept this params file?

First the params rules (``load_params``: every key, value and cross-section rule, and with the
machine's paths: the input files and folders exist) and the launch's (``WORLD_SIZE`` processes
for both training stages); then, unless ``--no-build``, every model built on torch's meta device
(``model_check.py``: the rules only a built model knows). ``--no-build`` imports no torch and
takes milliseconds. A refused file is one ``error:`` line naming the key (exit 2).
"""

from __future__ import annotations

import argparse

from pipeline.commands import Command

HELP = ("validate a params file and build its models on the meta device "
        "(for a torchrun launch of N processes: WORLD_SIZE=N vfmtok-pipeline check)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", default="params.yaml")
    parser.add_argument("--no-paths", action="store_true", help="skip what this machine must have "
                        "(input files and folders, CUDA): a profile written for another machine")
    parser.add_argument("--no-build", action="store_true",
                        help="the params rules only: build no model, import no torch (milliseconds)")


def main(args: argparse.Namespace) -> None:
    from pipeline.params import launch_world_size, load_params

    params = load_params(args.file, check_paths=not args.no_paths)
    params.check_launch(launch_world_size())  # both training stages, for this launch's processes
    if not args.no_build:  # the rules only a built model knows
        from pipeline.commands.model_check import check_models

        check_models(params, machine=not args.no_paths)
    print(f"{args.file}: ok")


COMMAND = Command("check", HELP, add_arguments, main)
