"""Run one DVC stage: ``python -m pipeline.stage NAME [--params FILE] [--debug] [--dry-run]`` (what
``dvc.yaml`` calls; ``vfmtok-pipeline NAME`` is the same).

A stage that shares its work runs on every process its launch has (the ``launch`` section, the
scheduler's environment, the machine's GPUs: ``pipeline/orchestration/launch_plan.py``),
re-executing itself through torchrun when that is more than one; ``--dry-run`` prints the plan.

The stages are the ``stages:`` of ``dvc.yaml`` (:func:`names`); stage ``NAME``'s code is the
module ``pipeline.stages.NAME``. This entry imports only that module, so a stage process loads
exactly the code listed as its ``deps`` in ``dvc.yaml`` (``pipeline/commands/deps.py`` checks
that). A user error prints one ``error:`` line and exits with 2; ``--debug`` (or
``VFMTOK_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline import errors
from pipeline.orchestration import prefect_env
from pipeline.orchestration.lazy_prefect import folded

DVC_YAML = Path(__file__).resolve().parent.parent / "dvc.yaml"


def names(dvc_yaml: Path = DVC_YAML) -> list[str]:
    """The stage names, in ``dvc.yaml``'s order: the keys of its ``stages:``.

    The ``dvc.yaml`` is the one next to this package, not ``--root``'s: it is the file that
    names this code's stage modules (``pipeline/stages/NAME.py``, tests/test_cli.py checks
    the pairs), and the command line is built before ``--root`` is parsed. A project folder
    given with ``--root`` runs the same stages, from its own ``dvc.yaml``'s paths.
    """
    import yaml

    try:
        text = dvc_yaml.read_text()
    except OSError as e:
        raise errors.UserError(f"{dvc_yaml}: cannot read the pipeline's stages ({e.strerror})") from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml where PyYAML has it: 10x faster
    return list(yaml.load(text, Loader=loader)["stages"])


def module_name(stage: str) -> str:
    return f"pipeline.stages.{stage}"


def guarded(fn: Callable[[], int | None]) -> int:
    """Run ``fn``; a user error becomes one ``error:`` line on stderr and exit status 2."""
    try:
        return fn() or 0
    except errors.USER_ERRORS as e:
        if errors.debug_enabled():
            raise
        print(f"error: {errors.one_line(e)}", file=sys.stderr)
        return 2


def pin_cpu_threads(n: int) -> None:
    """``n`` torch CPU threads in this process (``launch.cpu_threads``; 0 leaves them alone).

    Set through the environment before torch is imported (torch sizes its thread pool from
    ``OMP_NUM_THREADS``, never above the machine's cores; torchrun sets it to 1), and directly,
    with the same cap, if torch is loaded already."""
    if n <= 0:
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(min(n, os.cpu_count() or n))


def run(stage: str, params_file: str = "params.yaml", root: str = ".") -> dict:
    """The stage's Prefect flow, in this process (a subflow of the orchestrating run, if any:
    ``pipeline/orchestration/stage_process.py``). The params file is validated first, so a bad
    one fails in milliseconds, before Prefect or torch is even imported."""
    from pipeline.orchestration.stage_process import run_stage_flow
    from pipeline.orchestration.torchrun_launch import as_worker
    from pipeline.params import load_params

    as_worker()  # a rank of start()'s torchrun: dies with it; rank > 0 runs without Prefect
    prefect_env.configure(root)
    pin_cpu_threads(load_params(params_file).launch.cpu_threads)
    return run_stage_flow(stage, module_name(stage), {"params_file": params_file, "root": root},
                          after_import=errors.quiet_prefect)  # after Prefect has set up its loggers


def start(stage: str, params_file: str = "params.yaml", root: str = ".", dry_run: bool = False) -> int:
    """Run the stage on its launch's processes: here, or, when ``launch`` (or the scheduler, or the
    machine's GPUs) says more than one, re-executed through torchrun
    (``pipeline/orchestration/launch_plan.py``). ``dry_run``: print the launch, run nothing."""
    from pipeline.orchestration import launch_plan
    from pipeline.params import load_params
    from vfmtok.config_schema import ConfigError

    if launch_plan.inside_torchrun(os.environ):  # a worker: its share of the work
        if not dry_run:
            run(stage, params_file, root)
        return 0
    params = load_params(params_file, check_paths=not dry_run)
    try:
        plan = launch_plan.plan(params, stage, os.environ)
        if stage in ("train_tokenizer", "train_ar"):
            params.check_launch(plan.world, (stage,))  # before any process starts
    except ConfigError as e:
        raise e.in_file(params_file) if e.file is None else e from None
    stage_args = ["--params", params_file, "--root", root]
    if dry_run:
        print(plan.describe())
        print(launch_plan.command(plan, stage_args, root) if plan.world > 1 else
              f"python -m pipeline.stage {stage} (one process)")
        return 0
    if plan.world == 1:
        run(stage, params_file, root)
        return 0
    from pipeline.orchestration.torchrun_launch import launch

    return launch(plan, stage_args, root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.stage", description=__doc__)
    parser.add_argument("stage", choices=names())
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--root", default=".")
    parser.add_argument("--debug", action="store_true", help="full tracebacks for user errors")
    parser.add_argument("--dry-run", action="store_true", help="print the launch (processes, nodes, the "
                        "torchrun command) and run nothing")
    args = parser.parse_args(argv)
    if args.debug:
        os.environ[errors.DEBUG_ENV] = "1"
    return guarded(lambda: start(args.stage, args.params, args.root, args.dry_run))


def exit_process(code: int) -> None:
    """Exit; a folded stage skips the interpreter's teardown.

    A folded stage (``pipeline/orchestration/lazy_prefect.py``) has written everything it makes by now (atomic
    writes, DVCLive ended, no Prefect workers to drain), so tearing down torch and its tensors
    (~1.2 s a process on 2 cores, paid before DVC can commit the outputs) is skipped. Alone, as a
    Prefect flow, the normal exit lets Prefect ship its last log records.
    """
    if folded():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    exit_process(main())
