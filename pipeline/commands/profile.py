"""``vfmtok-pipeline profile NAME``: make profile NAME (``params/NAME.yaml`` over
``params/base.yaml``: ``pipeline/params/profiles.py``) the project's complete ``params.yaml``.

The profile is validated first, so a profile that cannot run here is refused and
``params.yaml`` stays as it was. Imports no torch and no Prefect.
"""

from __future__ import annotations

import argparse

from pipeline.commands import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")


def main(args: argparse.Namespace) -> None:
    from pipeline.params.profiles import profile_file, write_profile

    write_profile(args.name, args.root)
    print(f"params.yaml is now the {args.name!r} profile ({profile_file(args.name, args.root)})")


COMMAND = Command("profile", "make params/NAME.yaml (over params/base.yaml) the complete params.yaml",
                  add_arguments, main)
