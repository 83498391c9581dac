"""Test-wide setup: offline, no analytics, a throw-away PREFECT_HOME (set before prefect loads), and
the guard that keeps end-to-end tests' processes out of the fast loop, `pytest -m "not slow"`."""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import tempfile
from pathlib import Path

import pytest

from pipeline.orchestration import prefect_env

os.environ["HF_HUB_OFFLINE"] = "1"
# Several torch processes share 2 cores in some tests (torchrun, dvc subprocesses, a Prefect
# server): spinning OpenMP threads then slow everything down manyfold. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="vfmtok-prefect-"))
prefect_env.configure()

REPO = Path(__file__).resolve().parents[1]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def one_thread():
    """One torch thread in this process for the test: what runs beside it (torchrun ranks) or what
    it runs (tiny tensors) gains nothing from a second, and a busy second thread only contends."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- The fast loop stays fast: a process only end-to-end tests may start -------------------------
# `pytest -m "not slow"` is the quick loop; a test that starts DVC, torchrun, a Prefect server or a
# stage process is end to end and carries `@pytest.mark.slow`. Any other test that starts one
# fails with SLOW_ONLY's line (checked where the process starts, so it cannot go stale).
SLOW_PROGRAMS = {"dvc": "dvc", "torchrun": "torchrun"}
SLOW_MODULES = {"dvc": "dvc", "torch.distributed.run": "torchrun", "torch.distributed.launch": "torchrun",
                "pipeline.stage": "a stage process"}
PREFECT_APP = "prefect.server.api.server:create_app"  # uvicorn's app: Prefect's and run_api's servers
SLOW_ONLY = ("{test} started {what} (`{cmd}`) without the slow marker: mark it @pytest.mark.slow "
             "(end to end; CI runs it, `pytest -m \"not slow\"` does not)")


def _python_module(args: list[str]) -> str | None:
    """The ``-m`` module of a Python command line's arguments (None for a script or ``-c``)."""
    it = iter(args)
    for arg in it:
        if arg == "-m":
            return next(it, None)
        if arg.startswith("-m"):
            return arg[2:]
        if arg in ("-X", "-W"):
            next(it, None)
        elif not arg.startswith("-") or arg in ("-c", "-"):
            return None
    return None


def argv_of(args, shell: bool = False) -> list[str]:
    """``Popen``'s ``args`` as a list of words (a shell command line split as the shell would)."""
    if isinstance(args, (str, bytes, os.PathLike)):
        if not shell:
            return [os.fsdecode(args)]
        try:
            return shlex.split(os.fsdecode(args))
        except ValueError:  # unbalanced quotes: the shell will say so; the words are enough here
            return os.fsdecode(args).split()
    return [os.fsdecode(a) for a in args]


def slow_process(argv: list[str], shell: bool = False) -> str | None:
    """What the command ``argv`` (of :func:`argv_of`) starts that only a slow test may, or None."""
    if shell:  # a command line: any of its words may be the program (`cd x && dvc repro`)
        return next((SLOW_PROGRAMS[w] for w in map(os.path.basename, argv) if w in SLOW_PROGRAMS), None)
    if not argv:
        return None
    program, rest = os.path.basename(argv[0]), argv[1:]
    module = _python_module(rest) if program.startswith("python") else None
    if program in SLOW_PROGRAMS or module in SLOW_MODULES:
        return SLOW_PROGRAMS.get(program) or SLOW_MODULES[module]
    if (module == "uvicorn" and PREFECT_APP in rest) or ("prefect" in (program, module) and "server" in rest):
        return "a Prefect server"
    return None


@contextlib.contextmanager
def _slow_processes_refused(item: pytest.Item):
    """Within it, starting a :func:`slow_process` raises; the lines said are collected in the list
    it yields, so a test that catches the error still fails."""
    said: list[str] = []
    start = subprocess.Popen.__init__

    def refusing(self, *args, **kwargs):
        __tracebackhide__ = True  # the test's own line is the one to see
        shell = kwargs.get("shell", False)
        argv = argv_of(args[0] if args else kwargs.get("args", ()), shell)
        if what := slow_process(argv, shell):
            said.append(SLOW_ONLY.format(test=item.nodeid, what=what, cmd=shlex.join(argv)[:200]))
            self._child_created = False  # what Popen's __del__ reads: nothing to wait for
            raise RuntimeError(said[-1])
        start(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess.Popen, "__init__", refusing)
        yield said


def _unless_slow(item: pytest.Item):
    """A test phase (its fixtures' setup included: a module's fixture starts with its first test)
    under :func:`_slow_processes_refused`, for a test without the slow marker."""
    if item.get_closest_marker("slow"):
        return (yield)
    with _slow_processes_refused(item) as said:
        result = yield
    if said:
        pytest.fail(said[0], pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _unless_slow(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _unless_slow(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    return (yield from _unless_slow(item))
