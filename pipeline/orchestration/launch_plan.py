"""How many processes run a stage, and the torchrun command that starts them.

``python -m pipeline.stage NAME`` (what ``dvc.yaml`` runs) asks :func:`plan` before it starts: a
stage that shares its work (:data:`SHARED_STAGES`) on more than one process re-executes itself
through torchrun (``pipeline/orchestration/torchrun_launch.py``), so one committed ``dvc.yaml``
uses every GPU of a laptop, a node or several nodes. The numbers come, in this order, from the
``launch`` section of the params file (an explicit value), the cluster scheduler's environment
(Slurm's ``SLURM_*``, or ``MASTER_ADDR``/``MASTER_PORT``/``NODE_RANK``), and the machine (its visible CUDA
devices). Each value carries where it came from, so ``--dry-run`` can say why.

Torch-free: the plan of a Slurm node is checked (and printed) on a login node or a laptop, and a
stage that runs as one process pays nothing for it. Inside a torchrun worker (an enclosing
``torchrun``, or our own re-execution) there is nothing to plan: the worker runs its share.
"""

from __future__ import annotations

import shlex
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.params import LaunchParams, Params
from vfmtok.config_schema import ConfigError

# The stages whose work splits over processes: data-parallel training, or fixed batches shared by
# rank (every output byte-identical for any number of processes). list_source and prepare are I/O.
SHARED_STAGES = ("extract_features", "train_tokenizer", "tokenize", "train_ar", "sample", "evaluate")
DEFAULT_PORT = 29500  # torchrun's own default master port
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one folder per GPU the driver sees (Linux)


@dataclass(frozen=True)
class Setting:
    """One launch value and where it came from (``launch.nnodes``, ``SLURM_NNODES``, ...)."""

    value: int | str
    source: str


@dataclass(frozen=True)
class LaunchPlan:
    stage: str
    nproc_per_node: Setting
    nnodes: Setting
    node_rank: Setting
    rdzv_endpoint: Setting  # "" on one node: torchrun picks a free local port
    rdzv_id: str

    @property
    def world(self) -> int:
        return int(self.nproc_per_node.value) * int(self.nnodes.value)

    def log_dir(self, root: str | Path) -> Path:
        """Where every rank of this node writes its stdout and stderr (torchrun's ``--log-dir``)."""
        return Path(root) / "logs" / self.stage / f"node{self.node_rank.value}"

    def torchrun_args(self, stage_args: list[str], log_dir: str | Path) -> list[str]:
        """torchrun's arguments: one node meets on a free local port (c10d); several nodes use the
        static rendezvous, which gives node ``node_rank`` the global ranks ``node_rank * nproc ..``,
        so global rank 0 (the one that writes) runs on node 0, where DVC waits for it."""
        if int(self.nnodes.value) == 1:
            where = ["--nnodes", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0"]
        else:
            where = ["--nnodes", str(self.nnodes.value), "--node-rank", str(self.node_rank.value),
                     "--rdzv-backend", "static", "--rdzv-endpoint", str(self.rdzv_endpoint.value)]
        return [*where, "--nproc-per-node", str(self.nproc_per_node.value), "--rdzv-id", self.rdzv_id,
                "--max-restarts", "0", "--log-dir", str(log_dir), "--redirects", "3",
                "--module", "pipeline.stage", self.stage, *stage_args]

    def describe(self) -> str:
        """One line: the processes and where each number came from."""
        n, nodes = self.nproc_per_node, self.nnodes
        text = (f"{self.stage}: {self.world} process{'es' if self.world > 1 else ''}, {n.value} a node "
                f"({n.source}) x {nodes.value} node{'s' if int(nodes.value) > 1 else ''} ({nodes.source})")
        if int(nodes.value) > 1:
            text += (f", this node {self.node_rank.value} ({self.node_rank.source}), rendezvous at "
                     f"{self.rdzv_endpoint.value} ({self.rdzv_endpoint.source})")
        return text


def inside_torchrun(env: Mapping[str, str]) -> bool:
    """Whether this process is a torchrun worker already (torchrun sets all three)."""
    return all(k in env for k in ("LOCAL_RANK", "WORLD_SIZE", "RANK"))


def visible_gpus(env: Mapping[str, str], driver: Path | None = None) -> int:
    """The CUDA devices a process here would see, without importing torch: the GPUs the NVIDIA
    driver lists, cut to ``CUDA_VISIBLE_DEVICES`` (which CUDA reads up to its first invalid entry)."""
    driver = NVIDIA_GPUS if driver is None else driver
    machine = len(list(driver.iterdir())) if driver.is_dir() else 0
    if machine == 0 or "CUDA_VISIBLE_DEVICES" not in env:
        return machine
    listed = 0
    for item in env["CUDA_VISIBLE_DEVICES"].split(","):
        if not item.strip() or item.strip().startswith("-"):
            break
        listed += 1
    return min(listed, machine)


def gpu_model(driver: Path | None = None) -> str | None:
    """The first GPU's model name as the NVIDIA driver gives it ("NVIDIA H200"), torch-free; None
    without a driver."""
    driver = NVIDIA_GPUS if driver is None else driver
    for info in sorted(driver.glob("*/information")) if driver.is_dir() else []:
        for line in info.read_text(errors="replace").splitlines():
            if line.startswith("Model:"):
                return line.split(":", 1)[1].strip()
    return None


def expand_nodelist(nodelist: str) -> list[str]:
    """Slurm's compact host list as names: ``gpu[01-03,07],cpu5`` -> gpu01, gpu02, gpu03, gpu07,
    cpu5 (what ``scontrol show hostnames`` prints; one bracket group a name, as Slurm writes them)."""
    hosts, i = [], 0
    while i < len(nodelist):
        j = i
        while j < len(nodelist) and nodelist[j] not in ",[":
            j += 1
        prefix = nodelist[i:j]
        if j < len(nodelist) and nodelist[j] == "[":
            close = nodelist.index("]", j)
            for part in nodelist[j + 1:close].split(","):
                lo, _, hi = part.partition("-")
                hosts += [f"{prefix}{k:0{len(lo)}d}" for k in range(int(lo), int(hi or lo) + 1)]
            j = close + 1
        elif prefix:
            hosts.append(prefix)
        i = j + 1  # past the comma
    return hosts


def _int_env(env: Mapping[str, str], *names: str) -> Setting | None:
    """The first of ``names`` set to an integer (Slurm's GPU counts may read ``h100:8``)."""
    for name in names:
        raw = env.get(name, "").strip().rpartition(":")[2]
        if raw.isdigit():
            return Setting(int(raw), name)
    return None


def _nproc(launch: LaunchParams, device: str, env: Mapping[str, str]) -> Setting:
    if launch.nproc_per_node != "auto":
        return Setting(launch.nproc_per_node, "launch.nproc_per_node")
    if device == "cpu":
        return Setting(1, "the stage's device is cpu")
    if "SLURM_JOB_ID" in env and (slurm := _int_env(env, "SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE")):
        return slurm
    gpus = visible_gpus(env)
    return Setting(gpus, "the visible CUDA devices") if gpus else Setting(1, "no CUDA device")


def _nodes(launch: LaunchParams, env: Mapping[str, str]) -> tuple[Setting, Setting]:
    slurm = "SLURM_JOB_ID" in env
    if launch.nnodes != "auto":
        nnodes = Setting(launch.nnodes, "launch.nnodes")
    else:
        names = ("SLURM_STEP_NUM_NODES", "SLURM_JOB_NUM_NODES", "SLURM_NNODES")
        found = _int_env(env, *names) if slurm else None
        nnodes = found or Setting(1, "default")
    if launch.node_rank != "auto":
        node_rank = Setting(launch.node_rank, "launch.node_rank")
    else:
        node_rank = (_int_env(env, "SLURM_NODEID") if slurm else None) or _int_env(env, "NODE_RANK") \
            or Setting(0, "default")
    return nnodes, node_rank


def _endpoint(launch: LaunchParams, nnodes: int, env: Mapping[str, str]) -> Setting:
    if nnodes == 1:
        return Setting("", "one node")
    if launch.rdzv_endpoint not in ("auto", ""):
        return Setting(launch.rdzv_endpoint, "launch.rdzv_endpoint")
    port = env.get("MASTER_PORT", "").strip() or str(DEFAULT_PORT)
    if env.get("MASTER_ADDR", "").strip():
        return Setting(f"{env['MASTER_ADDR'].strip()}:{port}", "MASTER_ADDR")
    for name in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        if env.get(name, "").strip():
            return Setting(f"{expand_nodelist(env[name].strip())[0]}:{port}", f"{name}'s first node")
    raise ConfigError("launch.rdzv_endpoint", launch.rdzv_endpoint, f"must be node 0's HOST:PORT for "
                      f"{nnodes} nodes: no scheduler's environment names it (SLURM_JOB_NODELIST, "
                      "MASTER_ADDR)")


def plan(params: Params, stage: str, env: Mapping[str, str]) -> LaunchPlan:
    """The launch of ``stage`` on this node (one process for a stage that does not share work)."""
    launch = params.launch
    if stage not in SHARED_STAGES:
        one = Setting(1, "a stage that does not share its work")
        return LaunchPlan(stage, one, Setting(1, "default"), Setting(0, "default"), Setting("", "one node"),
                          "")
    nproc = _nproc(launch, getattr(params, stage).device, env)
    nnodes, node_rank = _nodes(launch, env)
    if int(node_rank.value) >= int(nnodes.value):
        raise ConfigError("launch.node_rank", node_rank.value, f"from {node_rank.source}, must be below "
                          f"the {nnodes.value} nodes (from {nnodes.source})")
    endpoint = _endpoint(launch, int(nnodes.value), env)
    run_id = env.get("SLURM_JOB_ID", "").strip() or (f"vfmtok-{stage}" if int(nnodes.value) > 1 else
                                                       uuid.uuid4().hex[:12])
    return LaunchPlan(stage, nproc, nnodes, node_rank, endpoint, f"{run_id}-{stage}")


def world_for(params: Params, stage: str, env: Mapping[str, str]) -> int:
    """The processes ``stage`` runs on: an enclosing torchrun's ``WORLD_SIZE``, else its plan's."""
    if inside_torchrun(env):
        return int(env["WORLD_SIZE"])
    return plan(params, stage, env).world


def command(plan_: LaunchPlan, stage_args: list[str], root: str | Path) -> str:
    """The torchrun command line the launcher runs (``--dry-run`` prints it)."""
    return shlex.join(["torchrun", *plan_.torchrun_args(stage_args, plan_.log_dir(root))])
