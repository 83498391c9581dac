"""``vfmtok-pipeline check [FILE]``: would the stages accept this params file?

First the params rules (``load_params``: every key, value and cross-section rule, and with the
machine's paths: the input files and folders exist) and the launch's (each training stage's batch
splits over the processes its launch plan runs: ``pipeline/orchestration/launch_plan.py``);
then, unless ``--no-build``, every model built on torch's meta device
(``model_check.py``: the rules only a built model knows). ``--no-build`` imports no torch and
takes milliseconds. A refused file is one ``error:`` line naming the key (exit 2).
"""

from __future__ import annotations

import argparse

from pipeline.commands import Command

HELP = ("validate a params file and build its models on the meta device "
        "(and its training batches against the processes its launch runs)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", default="params.yaml")
    parser.add_argument("--no-paths", action="store_true", help="skip what this machine must have "
                        "(input files and folders, CUDA): a profile written for another machine")
    parser.add_argument("--no-build", action="store_true",
                        help="the params rules only: build no model, import no torch (milliseconds)")


def main(args: argparse.Namespace) -> None:
    import os

    from pipeline.orchestration.launch_plan import world_for
    from pipeline.params import load_params
    from vfmtok.config_schema import ConfigError

    params = load_params(args.file, check_paths=not args.no_paths)
    try:
        for stage in ("train_tokenizer", "train_ar"):  # each for the processes its launch runs
            params.check_launch(world_for(params, stage, os.environ), (stage,))
    except ConfigError as e:
        raise (e if e.file else e.in_file(args.file)) from None
    if not args.no_build:  # the rules only a built model knows
        from pipeline.commands.model_check import check_models

        check_models(params, machine=not args.no_paths)
    print(f"{args.file}: ok")


COMMAND = Command("check", HELP, add_arguments, main)
