"""Stages on several processes, end to end, through the committed stage command with only the
``launch`` section changed (gloo on CPU): outputs byte-identical for 1, 2 and 3 processes, the same
training batches, two "nodes" meeting at an endpoint, a killed rank or launcher. The plans and the
failure lines themselves: tests/test_launch.py."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import FASHION_MNIST
from tests.smoke_project import make_project
from tests.smoke_project import project_env as _env
from tests.smoke_project import run_in as _run
from tests.smoke_project import stale as _stale

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed"),
]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The smoke project, reproduced once (stages folded: no Prefect)."""
    dst = make_project(tmp_path_factory.mktemp("repo"))
    _run(dst, "dvc", "repro", folded=True)
    return dst


def _launch(project: Path, nproc: int) -> None:
    """``launch.nproc_per_node``: what a user sets for N processes a node (auto = the GPUs)."""
    path = project / "params.yaml"
    data = yaml.safe_load(path.read_text())
    data["launch"]["nproc_per_node"] = nproc
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _stage(project: Path, stage: str, **popen) -> subprocess.Popen:
    """The committed ``dvc.yaml`` command of ``stage``, as DVC runs it (folded, as under reproduce)."""
    return subprocess.Popen([sys.executable, "-m", "pipeline.stage", stage], cwd=project,
                            env=_env(project, folded=True), text=True, **popen)


def _launched(project: Path, nproc: int, stage: str) -> None:
    """``python -m pipeline.stage STAGE`` on ``nproc`` gloo processes (it re-executes itself through
    torchrun). A failure shows every rank's log, whole: the launcher's line names the rank."""
    proc = _stage(project, stage, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=600)
    assert f"[vfmtok] {stage}: {nproc} processes" in out, out + err
    if proc.returncode != 0:
        logs = project / "logs" / stage
        ranks = "\n".join(f"----- {f.relative_to(logs)}\n{f.read_text(errors='replace')}"
                          for f in sorted(logs.rglob("*.log")))
        pytest.fail(f"{nproc}-process {stage} exit {proc.returncode}\n{out}{err}\n{ranks}")


def test_outputs_do_not_depend_on_the_number_of_processes(project, tmp_path):
    """extract_features, tokenize and sample on 2 and 3 processes, through the committed stage
    command with only ``launch.nproc_per_node`` changed (which leaves ``dvc status`` clean), write
    byte-identical files to the one-process run: fixed batches (or shards) split across ranks, one
    seed per sample, rank 0 writes, and every process runs ``launch.cpu_threads`` threads
    (torchrun's OMP_NUM_THREADS=1 would change the CPU's rounding). The 2-process tokenize and
    sample twice over: a race between ranks showed up one run in several."""
    _run(project, "dvc", "repro", folded=True)  # whatever the tests before left, current again
    features = sorted(str(f.relative_to(project)) for f in (project / "data/features").iterdir())
    files = {"extract_features": features,
             "sample": ["data/samples/samples.npz"],
             "tokenize": ["data/tokens/train.parquet", "data/tokens/val.parquet"]}
    one = {f: (project / f).read_bytes() for fs in files.values() for f in fs}
    runs = [(n, stage) for n in (2, 3) for stage in files] + [(2, "tokenize"), (2, "sample")]
    try:
        for nproc in (2, 3):  # (a stage run outside DVC rewrites its timed report: checked first)
            _launch(project, nproc)
            assert _stale(project) == [], "launch is not what the stages compute: DVC must not see it"
        for nproc, stage in runs:
            _launch(project, nproc)
            for f in files[stage]:
                (project / f).unlink()
            _launched(project, nproc, stage)
            for f in files[stage]:
                assert (project / f).read_bytes() == one[f], (f, nproc, stage)
            ranks = list((project / "logs" / stage / "node0").glob("*/attempt_0/*/stderr.log"))
            assert len(ranks) == nproc  # every rank's log kept
    finally:
        _launch(project, "auto")


def _first_losses(project: Path) -> list[float]:
    rows = (project / "reports/train_ar/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]
    return [float(r.split("\t")[1]) for r in rows]


def test_train_ar_trains_on_the_same_batches_on_any_number_of_processes(project):
    """train_ar through the stage command on 1 and 2 processes, dropout off: each rank takes its
    contiguous rows of the one-process global batch, so step 0 (same initial weights, same rows)
    has the same loss to the fp32 rounding of a mean over ranks (64 ulps). The later steps differ
    by the rounding DDP's gradient averaging adds, which tests/test_distributed.py bounds."""
    path = project / "params.yaml"
    data = yaml.safe_load(path.read_text())
    saved = yaml.safe_dump(data, sort_keys=False)
    data["ar_model"].update(class_dropout=0.0, token_dropout=0.0, resid_dropout=0.0, attn_dropout=0.0)
    runs = {}
    try:
        for nproc in (1, 2):
            data["launch"]["nproc_per_node"] = nproc
            path.write_text(yaml.safe_dump(data, sort_keys=False))
            shutil.rmtree(project / "data/checkpoints/generator", ignore_errors=True)  # no resume
            if nproc == 1:
                _run(project, sys.executable, "-m", "pipeline.stage", "train_ar", folded=True)
            else:
                _launched(project, nproc, "train_ar")
            runs[nproc] = _first_losses(project)
    finally:
        path.write_text(saved)
        shutil.rmtree(project / "data/checkpoints/generator", ignore_errors=True)
    one, two = runs[1], runs[2]
    assert len(one) == len(two) >= 2
    assert abs(one[0] - two[0]) <= 64 * 2.0**-23 * abs(one[0]), (one, two)


def test_two_nodes_meet_at_the_endpoint_and_write_the_same_samples(project):
    """The several-node launch (static rendezvous by node rank), as two "nodes" on this machine:
    ``launch.nnodes: 2`` and node 0's endpoint in params, each node's rank from ``NODE_RANK``, one
    process a node. Global rank 0 runs on node 0 and writes ``samples.npz``, byte-identical to the
    one-process file; each node keeps its ranks' logs apart."""
    import socket

    _run(project, "dvc", "repro", folded=True)
    npz = project / "data/samples/samples.npz"
    one = npz.read_bytes()
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    path = project / "params.yaml"
    data = yaml.safe_load(path.read_text())
    data["launch"].update(nproc_per_node=1, nnodes=2, rdzv_endpoint=f"localhost:{port}")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    npz.unlink()
    try:
        nodes = [subprocess.Popen([sys.executable, "-m", "pipeline.stage", "sample"], cwd=project, text=True,
                                  env={**_env(project, folded=True), "NODE_RANK": str(k)},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for k in (1, 0)]
        outs = [n.communicate(timeout=300)[0] for n in nodes]
        assert [n.returncode for n in nodes] == [0, 0], outs
    finally:
        data["launch"].update(nproc_per_node="auto", nnodes="auto", rdzv_endpoint="auto")
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert "this node 1 (NODE_RANK)" in outs[0] and "this node 0 (NODE_RANK)" in outs[1]
    assert npz.read_bytes() == one
    for k in (0, 1):
        assert len(list((project / "logs/sample" / f"node{k}").glob("*/attempt_0/0/stdout.log"))) == 1


def _ranks(launcher: int) -> dict[int, int]:
    """{global rank: pid} of the workers a launcher started (they carry its pid)."""
    found = {}
    for d in Path("/proc").iterdir():
        try:
            env = (d / "environ").read_bytes().split(b"\0") if d.name.isdigit() else []
        except OSError:
            continue
        if f"VFMTOK_LAUNCHER_PID={launcher}".encode() in env:
            found[int(next(v for v in env if v.startswith(b"RANK="))[5:])] = int(d.name)
    return found


def _alive(pids) -> list[int]:
    def running(pid: int) -> bool:
        try:
            return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
    return [pid for pid in pids if running(pid)]


def _kill_while_training(project: Path, target: str) -> tuple[subprocess.Popen, str, dict[int, int]]:
    """train_ar on 2 processes; once both ranks run, SIGKILL ``target`` ("rank 1" or "launcher")."""
    _launch(project, 2)
    proc = _stage(project, "train_ar", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(ranks := _ranks(proc.pid)) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    time.sleep(3)  # into the stage's work (the ranks import torch and meet first)
    os.kill(ranks[1] if target == "rank 1" else proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    return proc, err, ranks


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_rank_ends_the_stage_with_its_line_and_leaves_no_process(project):
    """One rank killed mid-stage: the launcher ends with one ``error:`` line naming it and exit 1,
    the other rank is stopped, every rank's log is kept. The launcher itself killed: its ranks die
    with it (no orphan trains on). Neither run leaves an output or changes the model DVC has."""
    _run(project, "dvc", "repro", folded=True)
    model = (project / "data/generator/model.safetensors").read_bytes()
    try:
        proc, err, ranks = _kill_while_training(project, "rank 1")
        lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert proc.returncode == 1 and len(lines) == 1, err[-3000:]
        assert lines[0].startswith("error: train_ar: rank 1 of 2 (node 0, local rank 1) was killed by "
                                   "SIGKILL")
        assert not _alive(ranks.values())
        logs = project / "logs" / "train_ar" / "node0"
        assert lines[0].endswith(f"every rank's log: {logs.relative_to(project)}")
        assert len(list(logs.glob("*/attempt_0/[01]/stdout.log"))) == 2
        assert (logs / "launcher.log").is_file()

        proc, _, ranks = _kill_while_training(project, "launcher")
        time.sleep(1)  # the kernel's parent-death signal, then the ranks' exit
        assert proc.returncode == -signal.SIGKILL and not _alive(ranks.values()), ranks
    finally:
        _launch(project, "auto")
    assert (project / "data/generator/model.safetensors").read_bytes() == model
    assert _stale(project) == []
