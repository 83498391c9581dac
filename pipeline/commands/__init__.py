"""The ``vfmtok-pipeline`` commands: one module per command, each declaring its :class:`Command`.

A command module's ``COMMAND`` (``stages.py``: ``commands()``, one per ``dvc.yaml`` stage) says
what ``--help`` lists and what runs; ``pipeline/cli.py`` only collects them. ``--help`` imports
every command module, so a module's top level stays cheap (no torch, no Prefect, no pandas): the
heavy imports sit inside the functions that need them. ``model_check.py`` is not a command:
it is ``check``'s torch half, imported only when ``check`` builds the models.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Command:
    """One ``vfmtok-pipeline NAME``: the line ``--help`` shows, its arguments, and what it runs.

    ``run`` gets the parsed arguments (``args.root`` and ``args.debug`` included) and returns the
    exit status; None is 0. A user error it raises becomes one ``error:`` line and status 2."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


def add_retry_arguments(parser: argparse.ArgumentParser) -> None:
    """How often the orchestration retries a failing stage (``reproduce``, ``serve``)."""
    parser.add_argument("--retries", type=int, default=2, help="retries of a failing stage")
    parser.add_argument("--retry-delay", type=float, default=10.0, help="first retry delay, doubling after")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The tokenizer folder and the device of the commands that use the trained models."""
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: data/tokenizer)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
