"""A stage's launch: how many processes, from where (params, Slurm, the machine), the torchrun
command it runs, and how a failed rank is reported. No process is started here: the launches
themselves run in tests/test_dvc_smoke.py (outputs, a killed rank, a killed launcher)."""

from __future__ import annotations

import io
import os
import shlex
import signal
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import stage
from pipeline.orchestration import launch_plan as lp
from pipeline.orchestration.torchrun_launch import RankFailure, Tail, failure_line, rank_failures
from pipeline.params import params_from_data
from pipeline.params.profiles import profile_data
from vfmtok.config_schema import ConfigError

REPO = Path(__file__).resolve().parents[1]
SLURM = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "4", "SLURM_NODEID": "2",
         "SLURM_JOB_NODELIST": "gpu-a[07-08,11],gpu-b3", "SLURM_GPUS_ON_NODE": "8"}


def _params(**launch):
    data = profile_data("smoke", REPO)
    data["launch"].update(launch)
    return params_from_data(data, "params.yaml", check_paths=False)


def test_a_slurm_node_plans_its_share_of_a_several_node_launch():
    plan = lp.plan(_params(), "train_ar", SLURM)
    assert (plan.nproc_per_node.value, plan.nnodes.value, plan.node_rank.value) == (8, 4, 2)
    assert plan.rdzv_endpoint.value == "gpu-a07:29500" and plan.world == 32
    assert plan.nproc_per_node.source == "SLURM_GPUS_ON_NODE" and plan.rdzv_id == "4242-train_ar"
    # an explicit value wins over the scheduler's; MASTER_ADDR/PORT over the node list
    plan = lp.plan(_params(nproc_per_node=2, nnodes=4), "sample", {**SLURM, "MASTER_ADDR": "10.0.0.9",
                                                                    "MASTER_PORT": "6000"})
    assert (plan.world, plan.rdzv_endpoint.value, plan.nnodes.source) == (8, "10.0.0.9:6000", "launch.nnodes")


def _dry_run(root: Path, monkeypatch, capsys) -> tuple[int, str, str]:
    """``python -m pipeline.stage train_ar --dry-run`` on a Slurm node, in this process."""
    for var in [v for v in os.environ if v.startswith(("SLURM_", "MASTER_"))]:
        monkeypatch.delenv(var)
    for var, value in SLURM.items():
        monkeypatch.setenv(var, value)
    monkeypatch.chdir(root)
    rc = stage.main(["train_ar", "--dry-run"])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_the_dry_run_prints_the_torchrun_command_torch_itself_reads_as_the_plan(tmp_path, monkeypatch,
                                                                                capsys):
    """The stage command, fed a Slurm node's environment, prints the command it would run; torch's
    own torchrun parser reads that command back as 4 nodes x 8 processes, this node 2, static
    rendezvous at the first node."""
    import torch.distributed.run as torchrun

    data = profile_data("smoke", REPO)
    data["train_ar"]["batch_size"] = 64  # splits over 32 processes
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    rc, out, err = _dry_run(tmp_path, monkeypatch, capsys)
    assert rc == 0, err
    described, command = out.strip().splitlines()
    assert described.startswith("train_ar: 32 processes, 8 a node (SLURM_GPUS_ON_NODE) x 4 nodes")
    argv = shlex.split(command)
    assert argv[0] == "torchrun" and argv[-5:] == ["train_ar", "--params", "params.yaml", "--root", "."]
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # config_from_args sets it when unset
    config, entry, args = torchrun.config_from_args(torchrun.parse_args(argv[1:]))
    assert (config.min_nodes, config.max_nodes, config.nproc_per_node) == (4, 4, 8)
    assert (config.rdzv_backend, config.rdzv_endpoint) == ("static", "gpu-a07:29500")
    assert config.rdzv_configs["rank"] == 2 and config.max_restarts == 0
    assert entry == sys.executable and args[:4] == ["-u", "-m", "pipeline.stage", "train_ar"]


def test_a_batch_that_does_not_split_over_the_slurm_launch_is_refused_in_the_dry_run(tmp_path, monkeypatch,
                                                                                     capsys):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(profile_data("smoke", REPO)))  # batch 8
    rc, out, err = _dry_run(tmp_path, monkeypatch, capsys)
    assert rc == 2 and out == ""
    assert err.strip().startswith("error: params.yaml: train_ar.batch_size = 8: must be divisible by "
                                          "the 32"), err


def test_auto_counts_the_visible_gpus_and_a_cpu_stage_stays_one_process(tmp_path, monkeypatch):
    driver = tmp_path / "gpus"
    for i in range(4):
        (driver / f"0000:0{i}:00.0").mkdir(parents=True)
    monkeypatch.setattr(lp, "NVIDIA_GPUS", driver)
    assert lp.visible_gpus({}, driver) == 4
    assert lp.visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}, driver) == 2
    assert lp.visible_gpus({"CUDA_VISIBLE_DEVICES": "0,-1,2"}, driver) == 1  # CUDA stops at -1
    assert lp.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, driver) == 0
    assert lp.visible_gpus({}, tmp_path / "no-driver") == 0
    assert lp.plan(_params(), "tokenize", {}).world == 4
    data = profile_data("smoke", REPO)
    data["tokenize"]["device"] = "cpu"
    assert lp.plan(params_from_data(data, "p.yaml", check_paths=False), "tokenize", {}).world == 1
    assert lp.plan(_params(), "prepare", {}).world == 1  # I/O: one process whatever the machine
    monkeypatch.setattr(lp, "NVIDIA_GPUS", tmp_path / "no-driver")
    plan = lp.plan(_params(), "sample", {})
    assert plan.world == 1 and plan.nproc_per_node.source == "no CUDA device"


def test_inside_torchrun_there_is_nothing_to_plan():
    assert lp.inside_torchrun({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"})
    assert not lp.inside_torchrun({"WORLD_SIZE": "2"})
    assert lp.world_for(_params(nproc_per_node=4), "train_ar",
                        {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}) == 2
    assert lp.world_for(_params(nproc_per_node=4), "train_ar", {}) == 4


@pytest.mark.parametrize("nodelist,hosts", [
    ("node7", ["node7"]),
    ("gpu[01-03,07]", ["gpu01", "gpu02", "gpu03", "gpu07"]),
    ("a[8-10],b1,c[099-100]", ["a8", "a9", "a10", "b1", "c099", "c100"]),
])
def test_slurm_node_lists_expand_as_scontrol_prints_them(nodelist, hosts):
    assert lp.expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("launch,env,key", [
    ({"rdzv_endpoint": "node0"}, {}, "launch.rdzv_endpoint"),
    ({"rdzv_endpoint": "node0:99999"}, {}, "launch.rdzv_endpoint"),
    ({"nnodes": 2, "node_rank": 2}, {}, "launch.node_rank"),
    ({"nproc_per_node": 0}, {}, "launch.nproc_per_node"),
    ({"nnodes": "many"}, {}, "launch.nnodes"),
    ({"nnodes": 2}, {}, "launch.rdzv_endpoint"),  # two nodes, and nothing names node 0
    ({}, {**SLURM, "SLURM_NODEID": "4"}, "launch.node_rank"),
])
def test_a_bad_launch_names_its_key(launch, env, key):
    with pytest.raises(ConfigError) as info:
        lp.plan(_params(**launch), "train_ar", env)
    assert info.value.key == key, info.value


# ----------------------------------------------------------------------------- a failed launch


class _Failure:
    """What torch's ProcessFailure carries, of what rank_failures reads; its stderr is written
    where torch's ``--log-dir`` puts it."""

    def __init__(self, local_rank, exitcode, timestamp, log_dir: Path, stderr: str):
        self.local_rank, self.exitcode, self.timestamp = local_rank, exitcode, timestamp
        folder = log_dir / "run_x" / "attempt_0" / str(local_rank)
        folder.mkdir(parents=True)
        (folder / "stderr.log").write_text(stderr)


def test_the_cause_is_named_not_the_ranks_that_lost_their_peer(tmp_path):
    """Rank 0 failed only because rank 1's error ended their collective: rank 1's user error is the
    cause (exit 2), though both failures were seen at the same moment."""
    failures = rank_failures({
        0: _Failure(0, 1, 100.0, tmp_path, ("Traceback ...\nRuntimeError: [../gloo/transport/"
                                           "tcp/pair.cc:534] Connection closed by peer [10.0.0.1]:1234\n")),
        1: _Failure(1, 2, 100.0, tmp_path, "loading\nerror: data/generator: no model here\n"),
    }, tmp_path)
    assert [f.rank for f in failures] == [1, 0]
    plan = lp.plan(_params(nproc_per_node=2), "sample", {})
    line = failure_line(plan, failures, tmp_path)
    assert line == (f"sample: rank 1 of 2 (node 0, local rank 1) failed (exit 2): data/generator: no model "
                    f"here (1 other rank failed too); every rank's log: {tmp_path}")


def test_a_killed_rank_is_named_with_its_signal(tmp_path):
    failures = rank_failures({
        1: _Failure(1, -signal.SIGKILL, 50.0, tmp_path, ""),
        0: _Failure(0, -signal.SIGTERM, 49.0, tmp_path, ""),  # stopped by the agent
    }, tmp_path)
    assert failures[0] == RankFailure(1, 1, -signal.SIGKILL, 50.0, tmp_path / "run_x/attempt_0/1/stderr.log")
    assert "rank 1 of 3 (node 0, local rank 1) was killed by SIGKILL (1 other rank" in failure_line(
        lp.plan(_params(nproc_per_node=3), "sample", {}), failures, tmp_path)
    assert RankFailure(0, 0, 1, 0.0, None).message() == "exit 1, nothing on its stderr"


def test_rank_zeros_output_is_copied_whole_but_its_error_lines(tmp_path):
    """What the launcher prints of local rank 0: everything, progress redraws included, but the
    ``error:`` lines, even when a line arrives in pieces (the launcher's own line repeats it)."""
    log = tmp_path / "run_x" / "attempt_0" / "0" / "stderr.log"
    log.parent.mkdir(parents=True)
    out = io.BytesIO()
    tail = Tail(tmp_path, "stderr.log", out, drop_errors=True)
    pieces = [b"step 1\r", b"step 2\rINFO | ok\ner", b"ror: bad", b" thing\nnot error: kept\nerr",
              b"or? kept\nerror: cut at the end"]
    for piece in pieces:
        out.write(tail._filter(piece))
    assert out.getvalue() == b"step 1\rstep 2\rINFO | ok\nnot error: kept\nerror? kept\n"
    assert tail.pending == b"error: cut at the end"  # left out at the end
    log.write_bytes(b"a\nerror: x\nb")
    again = io.BytesIO()
    tail = Tail(tmp_path, "stderr.log", again, drop_errors=True)
    tail.done.set()
    tail.run()  # drains the file once, then stops
    assert again.getvalue() == b"a\nb"
