"""Run a stage on the processes of its launch plan: torchrun's elastic agent, in this process.

The agent (``torch.distributed.run``, what the ``torchrun`` command runs) is driven from here
rather than as a ``torchrun`` child so that its outcome arrives as data: a failing launch raises
``ChildFailedError`` with every failed rank's exit code and log files, and the stage ends with the
one-line ``error:`` of the rank that failed first (named), not torch's 60-line traceback, in which
that rank's own error is easy to lose. The agent's own records go to ``launcher.log`` beside the
ranks' logs.

Every rank writes its stdout and stderr to files under the stage's log folder
(``logs/STAGE/nodeK``: torchrun's ``--log-dir`` layout, kept after the run). Local rank 0's files
are copied to this process's stdout and stderr as they grow, unprefixed, so a stage on 8 GPUs
prints what it prints on one (its progress, its log records, its times line), and DVC, the
orchestrator's relay and a user's terminal read it the same way.

Workers die with this process (:func:`as_worker`: Linux's parent-death signal), so a launcher
killed with ``kill -9`` leaves no rank behind; when one rank fails the agent stops the others.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.orchestration.launch_plan import LaunchPlan

LAUNCHER_ENV = "VFMTOK_LAUNCHER_PID"  # set for the workers: the process they must die with
ERROR_PREFIX = b"error: "  # pipeline/stage.py's user-error line
# An error that only reports another rank's end (a collective whose peer is gone): never the cause.
KNOCK_ON = re.compile(r"Connection closed by peer|Connection reset by peer|Broken pipe|DistBackendError|"
                      r"NCCL|[Gg]loo|timed out|Timeout|ProcessGroup")


# ----------------------------------------------------------------------------- the workers' side


def as_worker() -> None:
    """In a worker this module started: receive SIGKILL when the launcher dies (Linux), and run
    rank > 0 folded, without Prefect (rank 0 alone reports the stage's flow run)."""
    launcher = os.environ.get(LAUNCHER_ENV)
    if launcher is None:
        return
    if os.environ.get("RANK", "0") != "0":
        from pipeline.orchestration.lazy_prefect import FOLD_ENV

        os.environ[FOLD_ENV] = "1"
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != int(launcher):  # the launcher died before the call: follow it now
            os._exit(1)


# ----------------------------------------------------------------------------- failures


@dataclass(frozen=True)
class RankFailure:
    rank: int
    local_rank: int
    exitcode: int
    timestamp: float
    stderr: Path | None

    def message(self) -> str:
        """What the rank said last: its ``error:`` line, else the last line of its stderr (a
        traceback's exception), else how it ended."""
        lines = []
        if self.stderr is not None and self.stderr.is_file():
            lines = [ln.strip() for ln in self.stderr.read_text(errors="replace").splitlines() if ln.strip()]
        said = [ln for ln in lines if ln.startswith("error: ")]
        if said:
            return said[-1][len("error: "):]
        if self.exitcode < 0:
            return f"killed by {signal.Signals(-self.exitcode).name}"
        return lines[-1] if lines else f"exit {self.exitcode}, nothing on its stderr"

    def knock_on(self) -> bool:
        """Whether this failure is the consequence of another rank's (stopped by the agent, or a
        collective whose peer is gone)."""
        if self.exitcode in (-signal.SIGTERM, -signal.SIGINT):
            return True
        return self.exitcode > 0 and bool(KNOCK_ON.search(self.message()))


def rank_failures(failures: dict[int, Any], log_dir: Path) -> list[RankFailure]:
    """torch's ``ChildFailedError.failures`` ({global rank: ProcessFailure}) as :class:`RankFailure`
    s, the cause first: the earliest, and among failures of the same moment one that is no
    knock-on of another. A rank's stderr is in torch's ``--log-dir`` layout under ``log_dir``
    (``RUN/attempt_K/LOCAL_RANK/stderr.log``: one run a folder, the launch clears it)."""
    out = []
    for rank, f in failures.items():
        stderr = next(iter(sorted(log_dir.glob(f"*/attempt_*/{f.local_rank}/stderr.log"))), None)
        out.append(RankFailure(rank, f.local_rank, f.exitcode, float(f.timestamp), stderr))
    return sorted(out, key=lambda f: (f.knock_on(), f.timestamp, f.rank))


def failure_line(plan: LaunchPlan, failures: list[RankFailure], log_dir: Path) -> str:
    first = failures[0]
    what = first.message()
    ended = "was killed" if what.startswith("killed by") else f"failed (exit {first.exitcode})"
    others = f" ({len(failures) - 1} other rank{'s' if len(failures) > 2 else ''} failed too)" \
        if len(failures) > 1 else ""
    what = what[len("killed by "):] if ended == "was killed" else what
    return (f"{plan.stage}: rank {first.rank} of {plan.world} (node {plan.node_rank.value}, local rank "
            f"{first.local_rank}) {ended}{' by ' if ended == 'was killed' else ': '}{what}{others}; "
            f"every rank's log: {log_dir}")


# ----------------------------------------------------------------------------- rank 0's output


class Tail(threading.Thread):
    """Copies a growing log file (local rank 0's ``name`` under ``log_dir``) to ``out`` as it
    grows; the ``error:`` lines are held back from stderr: the launcher's own line repeats the
    failing rank's, with the rank."""

    def __init__(self, log_dir: Path, name: str, out: BinaryIO, drop_errors: bool):
        super().__init__(daemon=True)
        self.log_dir, self.name, self.out, self.drop_errors = log_dir, name, out, drop_errors
        self.done = threading.Event()
        self.pending, self.mid_line = b"", False

    def run(self) -> None:
        path, pos = None, 0
        while True:
            finished = self.done.is_set()  # read before the file: the last bytes are copied too
            path = path or next(iter(sorted(self.log_dir.glob(f"*/attempt_*/0/{self.name}"))), None)
            data = b""
            if path is not None:
                with open(path, "rb") as f:
                    f.seek(pos)
                    data = f.read()
                pos += len(data)
                self._write(self._filter(data) if self.drop_errors else data)
            if finished:
                self._write(b"" if self.pending.startswith(ERROR_PREFIX) else self.pending)
                return
            if not data:
                self.done.wait(0.1)

    def _write(self, data: bytes) -> None:
        if data:
            self.out.write(data)
            self.out.flush()

    def _filter(self, data: bytes) -> bytes:
        """``data`` less its ``error:`` lines; a line start that may still become one waits."""
        out, buf, self.pending = bytearray(), self.pending + data, b""
        while buf:
            end = buf.find(b"\n")
            line = buf if end < 0 else buf[:end + 1]
            if not self.mid_line:
                if end < 0 and (line.startswith(ERROR_PREFIX) or ERROR_PREFIX.startswith(line)):
                    self.pending = buf
                    break
                if line.startswith(ERROR_PREFIX):
                    buf = buf[end + 1:]
                    continue
            out += line
            self.mid_line = end < 0
            buf = b"" if end < 0 else buf[end + 1:]
        return bytes(out)


# ----------------------------------------------------------------------------- the launch


class AgentLog:
    """torch's elastic agent logs to ``launcher.log``, not to the terminal: for the launch, the
    ``torch.distributed`` logger's handlers (torch's own console one) are swapped for the file."""

    def __init__(self, log_dir: Path):
        self.handler = logging.FileHandler(log_dir / "launcher.log")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.logger = logging.getLogger("torch.distributed")

    def __enter__(self) -> AgentLog:
        self.saved = (self.logger.handlers[:], self.logger.propagate)
        self.logger.handlers, self.logger.propagate = [self.handler], False
        return self

    def __exit__(self, *exc) -> None:
        self.logger.handlers, self.logger.propagate = self.saved
        self.handler.close()


def launch(plan: LaunchPlan, stage_args: list[str], root: str | Path) -> int:
    """Run the stage on ``plan``'s processes of this node; 0, or the failing rank's one line on
    stderr and 2 for its user error (1 otherwise)."""
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    log_dir = plan.log_dir(root)
    shutil.rmtree(log_dir, ignore_errors=True)  # this node's logs of the last run
    log_dir.mkdir(parents=True)
    os.environ[LAUNCHER_ENV] = str(os.getpid())
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default (a stage pins launch.cpu_threads)
    print(f"[vfmtok] {plan.describe()}; logs: {log_dir}", flush=True)
    tails = [Tail(log_dir, "stdout.log", sys.stdout.buffer, False),
             Tail(log_dir, "stderr.log", sys.stderr.buffer, True)]
    with AgentLog(log_dir):
        config, entry, entry_args = torchrun.config_from_args(torchrun.parse_args(
            plan.torchrun_args(stage_args, log_dir)))
        for t in tails:
            t.start()
        try:
            elastic_launch(config, entry)(*entry_args)
            return 0
        except ChildFailedError as e:
            failures = rank_failures(e.failures, log_dir)
            _stop(tails)
            print(f"error: {failure_line(plan, failures, log_dir)}", file=sys.stderr, flush=True)
            return 2 if failures[0].exitcode == 2 else 1
        except SignalException as e:  # SIGTERM/SIGINT to the launcher: the agent stopped every rank
            _stop(tails)
            print(f"error: {plan.stage}: stopped by {signal.Signals(e.sigval).name}; every rank's log: "
                  f"{log_dir}", file=sys.stderr, flush=True)
            return 128 + int(e.sigval)
        finally:
            _stop(tails)


def _stop(tails: list[Tail]) -> None:
    for t in tails:
        t.done.set()
    for t in tails:
        if t.is_alive():
            t.join(timeout=5)
