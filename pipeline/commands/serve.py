"""``vfmtok-pipeline serve``: the scheduled retrain, a named ``dvc exp run`` per run, served by
Prefect (``pipeline/orchestration/server.py``) until interrupted."""

from __future__ import annotations

import argparse

from pipeline.commands import Command, add_retry_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cron", default="0 3 * * 0", help='schedule (default: "0 3 * * 0", Sundays 03:00)')
    parser.add_argument("--name", default="vfmtok-retrain", help="deployment name")
    parser.add_argument("--set", dest="set_params", action="append", default=[], metavar="KEY=VALUE",
                        help="params override for every scheduled run, as `dvc exp run -S` (repeatable)")
    parser.add_argument("--start-server", action="store_true", help="also run `prefect server` on 127.0.0.1")
    parser.add_argument("--port", type=int, default=4200, help="Prefect server port on 127.0.0.1")
    add_retry_arguments(parser)


def main(args: argparse.Namespace) -> None:
    from pipeline.orchestration.server import serve

    serve(args.root, args.cron, args.name, args.set_params, args.start_server, args.port, args.retries,
          args.retry_delay)


COMMAND = Command("serve", "serve the scheduled retrain (a named `dvc exp run` per run)", add_arguments, main)
