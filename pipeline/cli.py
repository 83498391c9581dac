"""``vfmtok-pipeline`` (or ``python -m pipeline``): run one stage's Prefect flow, and the tools
around the pipeline.

``vfmtok-pipeline STAGE`` runs a stage of ``dvc.yaml`` exactly as its ``python -m pipeline.stage
STAGE`` does (``pipeline/stage.py``). A user error (bad params, source, token file, missing
model) prints one ``error:`` line and exits with 2; ``--debug`` (or ``VFMTOK_DEBUG=1``) shows the
traceback instead. Each command is a module of ``pipeline/commands/``. ``check`` builds the
params' models on torch's meta device (``--no-build``: no torch); ``profile``, ``deps``,
``summary`` and ``docs`` import no torch and no Prefect; ``generate`` and ``reconstruct`` use the trained
model folders; ``reproduce`` and ``serve`` are the Prefect orchestration
(``pipeline/orchestration/``).
"""

from __future__ import annotations

import argparse
import os
import sys

from pipeline import errors, stage
from pipeline.commands import (
    Command,
    check,
    claims,
    compare,
    deps,
    docs,
    generate,
    import_weights,
    plan,
    profile,
    rar_vs_raster,
    reconstruct,
    reproduce,
    serve,
    stages,
    summary,
    verify,
)
from pipeline.orchestration import prefect_env


def commands() -> list[Command]:
    """Every command, in the order ``--help`` lists them: the stages first."""
    tools = [profile, check, plan, deps, compare, claims, rar_vs_raster, import_weights, reproduce, generate,
             reconstruct, summary, verify, docs, serve]
    return [*stages.commands(), *(module.COMMAND for module in tools)]


def parser(known: list[Command]) -> argparse.ArgumentParser:
    out = argparse.ArgumentParser(prog="vfmtok-pipeline", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    out.add_argument("--root", default=".", help="project root (default: .)")
    out.add_argument("--debug", action="store_true", help="full tracebacks for user errors")
    sub = out.add_subparsers(dest="command", required=True)
    for command in known:
        command.add_arguments(sub.add_parser(command.name, help=command.help))
    return out


def main(argv: list[str] | None = None) -> int:
    known = commands()
    args = parser(known).parse_args(argv)
    if args.debug:
        os.environ[errors.DEBUG_ENV] = "1"
    prefect_env.configure(args.root)
    run = next(c.run for c in known if c.name == args.command)
    return stage.guarded(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
