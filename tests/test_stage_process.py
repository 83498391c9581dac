"""A stage run alone, as ``dvc repro`` runs it (``python -m pipeline.stage NAME``, output in a pipe):
the throw-away Prefect API it starts dies with it, even under ``kill -9``, and its progress and
resume lines reach its output.

The processes of one stage are found by a PREFECT_HOME of their own (the stage's API server
inherits it), so other tests' servers running at the same time are never counted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

from pipeline.layout import Layout
from pipeline.orchestration import lazy_prefect, run_api
from pipeline.orchestration.lazy_prefect import FOLD_ENV
from pipeline.params.profiles import profile_data
from tests.conftest import FASHION_MNIST, REPO
from vfmtok.checkpoint import CHECKPOINT_NAME, load_checkpoint

LINUX = sys.platform.startswith("linux") and Path("/proc/self/environ").is_file()
pytestmark = pytest.mark.skipif(not LINUX, reason="Linux only: the parent-death signal, /proc")
STEPS = 4  # a progress line every step (LINES_PER_RUN > STEPS), a checkpoint every step


def _env(home: Path) -> dict[str, str]:
    """A stage alone: not folded, no API to use but its own, a PREFECT_HOME that names its processes."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", FOLD_ENV)}
    env["PREFECT_HOME"] = str(home)
    return env


def processes_with(home: Path) -> set[int]:
    """The live processes whose environment holds ``PREFECT_HOME=home`` (a zombie's is empty)."""
    needle = f"PREFECT_HOME={home}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if needle in environ.split(b"\0"):
            found.add(int(entry.name))
    return found


def wait_until_gone(home: Path, timeout: float = 60.0) -> set[int]:
    """Poll until no process of ``home`` is left; returns those still there after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (left := processes_with(home)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def kill_all(home: Path) -> None:
    for pid in processes_with(home):
        with contextlib.suppress(OSError):  # gone meanwhile
            os.kill(pid, signal.SIGKILL)


class Alone:
    """``python -m pipeline.stage STAGE`` with its stdout and stderr in one pipe, read line by line."""

    def __init__(self, cmd: list[str], home: Path) -> None:
        self.home = home
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=_env(home), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 300.0) -> str:
        """The first output line that matches ``pattern``, once it has come."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := [line for line in list(self.lines) if re.search(pattern, line)]:
                return found[0]
            if self.proc.poll() is not None:
                self._reader.join(10)
                break
            time.sleep(0.05)
        if found := [line for line in self.lines if re.search(pattern, line)]:
            return found[0]
        pytest.fail(f"no line matching {pattern!r} (exit status {self.proc.poll()}):\n{self.output[-4000:]}")

    def finish(self, timeout: float = 300.0) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        return rc

    def close(self) -> None:
        """Nothing of this stage outlives the test, whatever the test found."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(10)
        kill_all(self.home)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A smoke project's prepared images, and a tokenizer run of ``STEPS`` steps that needs no
    cached features (the backbone runs on the fly): ``prepare`` only, folded, in this process."""
    root = tmp_path_factory.mktemp("alone")
    params = profile_data("smoke", REPO)
    params["extract_features"]["splits"] = []
    params["train_tokenizer"].update(steps=STEPS, checkpoint_every=1)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(FOLD_ENV, "1")
        from pipeline.stages.prepare import prepare_flow

        prepare_flow(params_file=str(root / "params.yaml"), root=str(root))
    return root


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
@pytest.mark.slow
def test_a_killed_stage_takes_its_api_along_and_resumes_with_its_lines_in_a_pipe(prepared, tmp_path):
    """One training run, killed (``kill -9``) after its step-1 checkpoint, then run again: its API
    is gone within a bounded wait, the progress lines and then the resume line reach the pipe, and
    the run that ends normally leaves no process either."""
    home = tmp_path / "prefect"
    cmd = [sys.executable, "-m", "pipeline.stage", "train_tokenizer",
           "--params", str(prepared / "params.yaml"), "--root", str(prepared)]
    first = Alone(cmd, home)
    try:
        first.wait_for(rf"train_tokenizer step 2/{STEPS} \(50%\): total \d")  # after the step-1 checkpoint
        api = processes_with(home) - {first.proc.pid}
        assert api, "the stage runs against an API server of its own"
        first.proc.send_signal(signal.SIGKILL)
        assert first.finish() == -signal.SIGKILL, "killed mid-run, not finished"
        assert not wait_until_gone(home), "the killed stage's API server lives on"
    finally:
        first.close()
    resumed_from = load_checkpoint(Layout(prepared).checkpoints("tokenizer") / CHECKPOINT_NAME)["step"]
    assert 1 <= resumed_from < STEPS

    second = Alone(cmd, home)
    try:
        assert second.finish() == 0, second.output[-4000:]
        out = second.output
        assert f"trained {STEPS - resumed_from} steps (resumed from step {resumed_from})" in out
        assert re.search(rf"train_tokenizer step {STEPS}/{STEPS} \(100%\): total \d", out)
        assert "tokenizer val PSNR" in out  # the stage's summary, also at INFO
        assert "Finished in state" not in out, "Prefect's INFO chatter stays off the console"
        assert not wait_until_gone(home), "a stage that ended normally left a process behind"
    finally:
        second.close()


ORPHAN = textwrap.dedent("""
    import sys, time
    from pipeline.orchestration.run_api import start_run_api
    api = start_run_api()
    print(api.proc.pid, flush=True)
    time.sleep(600)
""")


@pytest.mark.slow
def test_a_run_api_dies_with_the_process_that_started_it(tmp_path):
    """Every throw-away API (``reproduce``, a stage alone, ``claims``) gets the parent-death signal:
    its starter killed with SIGKILL, the server goes too, whatever it was doing (here: starting)."""
    home = tmp_path / "prefect"
    starter = subprocess.Popen([sys.executable, "-c", ORPHAN], cwd=REPO, env=_env(home),
                               stdout=subprocess.PIPE, text=True)
    try:
        assert starter.stdout is not None
        server = int(starter.stdout.readline())
        assert server in processes_with(home)
        starter.kill()
        starter.wait()
        assert not wait_until_gone(home), "the API server outlived the process that started it"
    finally:
        if starter.poll() is None:
            starter.kill()
        starter.wait()
        kill_all(home)


def test_no_parent_death_signal_from_a_thread_that_may_end_first():
    """PR_SET_PDEATHSIG fires when the forking *thread* ends: only the main thread sets it."""
    assert run_api.dies_with_this_process() is not None
    got = []
    worker = threading.Thread(target=lambda: got.append(run_api.dies_with_this_process()))
    worker.start()
    worker.join()
    assert got == [None]


def test_only_prefects_own_run_records_below_the_level_stay_off_the_console():
    """What a stage writes through its run logger shows at INFO; Prefect's engine's INFO does not."""
    hide = lazy_prefect._HidePrefectChatter(logging.WARNING, "/venv/site-packages/prefect/")

    def shown(name: str, level: int, path: str) -> bool:
        return hide.filter(logging.LogRecord(name, level, path, 1, "m", None, None))

    assert shown("prefect.task_runs", logging.INFO, "/repo/pipeline/reporting/progress.py")
    assert not shown("prefect.task_runs", logging.INFO, "/venv/site-packages/prefect/task_engine.py")
    assert not shown("prefect.flow_runs", logging.INFO, "/venv/site-packages/prefect/flow_engine.py")
    assert shown("prefect.flow_runs", logging.ERROR, "/venv/site-packages/prefect/flow_engine.py")
    assert shown("vfmtok.stage", logging.INFO, "/venv/site-packages/prefect/x.py")
