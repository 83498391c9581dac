"""Data-parallel training on the engine every peer uses: torchrun + DDP, FSDP2 for big GPTs.

Launch any training entry point with ``torchrun --nproc_per_node N ...`` (one node) or
``torchrun --nnodes M --node_rank i --nproc_per_node N --rdzv-backend c10d
--rdzv-endpoint HOST:PORT ...`` (several nodes): torchrun sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``, and :func:`init_from_env` joins the process group they describe (NCCL on CUDA,
gloo on CPU). A plain ``python ...`` run is world 1 and nothing here changes its behaviour.

Conventions the training loops follow:

- ``batch_size`` in a train config is the **global** batch: each of the W ranks processes
  ``batch_size / W`` rows (:func:`per_rank_batch`), so a run's optimisation does not depend on W.
  The step's global batch is split in rank order (rank r takes rows [r*b, (r+1)*b)), DDP averages
  the gradients, and logged losses are averaged over ranks: W processes and one process on the same
  global batch give the same losses and weights (up to float summation order; trainable BatchNorm
  layers use SyncBatchNorm on CUDA, per-rank statistics on CPU, where torch has no SyncBatchNorm).
- Models are wrapped by :func:`wrap`: DDP, or FSDP2 (``fully_shard`` of each transformer block,
  then the root) for models of :data:`FSDP_MIN_PARAMS` parameters and more (GPT-XL and larger)
  under ``parallel="auto"``. FSDP2 shards in place, so the caller's module keeps working.
- Checkpoints hold full, unsharded, un-prefixed state dicts in the single-process format
  (:func:`model_state`, :func:`optimizer_state`), written by rank 0 only: a checkpoint of any
  run resumes any other, with any number of ranks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from vfmtok.checkpoint import rng_state, set_rng_state
from vfmtok.config import FSDP_MIN_PARAMS
from vfmtok.device import pick_device

Parallel = Literal["auto", "ddp", "fsdp"]


# ----------------------------------------------------------------------------- process group


def init_from_env(device: str = "auto", timeout_s: float = 1800.0) -> torch.device:
    """Join the process group that torchrun's environment describes; return this rank's device.

    ``device`` as in :func:`vfmtok.device.pick_device`. Under torchrun with CUDA each rank takes
    GPU ``LOCAL_RANK`` (made the current device, so plain "cuda" means it too) and NCCL; on CPU,
    gloo. Without torchrun (``WORLD_SIZE`` unset or 1) this only picks the device.
    """
    dev = pick_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if dev.type == "cuda" and world_size > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s),
                                device_id=dev if dev.type == "cuda" else None)
    return dev


def shutdown() -> None:
    """Leave the process group (a no-op for a plain run)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """True on the rank that writes artifacts, logs and checkpoints (rank 0)."""
    return rank() == 0


def barrier() -> None:
    if world() > 1:
        dist.barrier()


def per_rank_batch(global_batch: int, world_size: int | None = None) -> int:
    """Rows each rank processes per step: ``global_batch / world`` (it must divide)."""
    w = world() if world_size is None else world_size
    if global_batch % w:
        raise ValueError(f"global batch_size {global_batch} is not divisible by the {w} ranks")
    return global_batch // w


def rank_rows(x: Tensor, rank_: int | None = None, world_size: int | None = None) -> Tensor:
    """This rank's contiguous share of a global batch (B, ...) -> (B / W, ...)."""
    r, w = (rank() if rank_ is None else rank_), (world() if world_size is None else world_size)
    b = per_rank_batch(x.shape[0], w)
    return x[r * b:(r + 1) * b]


class RankSlice:
    """A step-addressed batch source (``batch(step) -> (tokens, labels)``) cut to this rank's rows.

    Every rank reads the whole global batch and keeps its share: the W-process run then sees
    exactly the batches of the one-process run, whatever W (a global batch of token rows is kilobytes).
    """

    def __init__(self, source: Any, rank_: int | None = None, world_size: int | None = None):
        self.source = source
        self.rank = rank() if rank_ is None else rank_
        self.world = world() if world_size is None else world_size

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        tokens, labels = self.source.batch(step)
        return rank_rows(tokens, self.rank, self.world), rank_rows(labels, self.rank, self.world)


def my_batches(n_items: int, batch_size: int) -> list[int]:
    """Start indices of the fixed-size batches this rank computes. Batch k holds items
    [k * B, (k + 1) * B) and goes to rank k % W: every batch is made of the same items whatever the
    number of ranks, so a per-item result (a sample drawn from its own seed) does not depend on W."""
    return list(range(0, n_items, batch_size))[rank()::world()]


def gather_batches(results: dict[int, Any]) -> dict[int, Any] | None:
    """``{batch start: result}`` of every rank, merged on rank 0 (None on the others)."""
    if world() == 1:
        return results
    parts: list[dict[int, Any]] | None = [{} for _ in range(world())] if is_main() else None
    dist.gather_object(results, parts, dst=0)
    return None if parts is None else {k: v for part in parts for k, v in part.items()}


def map_batches(fn: Callable[[Any], Any], n_items: int, batch_size: int) -> list[Any] | None:
    """``fn(indices)`` over fixed batches of ``range(n_items)``, split across ranks
    (:func:`my_batches`); the results in item order on rank 0, None on the others."""
    import numpy as np

    mine = {i: fn(np.arange(i, min(i + batch_size, n_items))) for i in my_batches(n_items, batch_size)}
    merged = gather_batches(mine)
    return None if merged is None else [merged[i] for i in sorted(merged)]


def rank_seed(seed: int, rank_: int | None = None) -> int:
    """Seed of a rank's own random stream: ``seed`` on rank 0 (a one-process run is unchanged),
    distinct per rank elsewhere (augmentation and dropout must differ between ranks)."""
    r = rank() if rank_ is None else rank_
    return seed + r * (1 << 32)


# ----------------------------------------------------------------------------- wrapping


def uses_fsdp(model: nn.Module, parallel: Parallel) -> bool:
    """Whether :func:`wrap` shards ``model`` (always False for a single process)."""
    if world() == 1 or parallel == "ddp":
        return False
    if parallel == "fsdp":
        return True
    return sum(p.numel() for p in model.parameters() if p.requires_grad) >= FSDP_MIN_PARAMS


def wrap(model: nn.Module, device: torch.device, parallel: Parallel = "ddp") -> nn.Module:
    """The module to run forward/backward through: ``model`` itself for one process, a DDP
    wrapper, or ``model`` sharded in place by FSDP2 (which is then also what is returned).

    ``model`` keeps owning the parameters in every case, so its ``state_dict`` keys never carry
    a ``module.`` prefix; frozen parameters (the tokenizer's backbone) are left out of DDP's
    gradient reduction, and buffers are not re-broadcast each step. On CUDA, trainable BatchNorm
    layers become SyncBatchNorm (global-batch statistics, as one process would compute them);
    torch has no CPU SyncBatchNorm, so on gloo they normalise with each rank's share.
    """
    if world() == 1:
        return model
    if uses_fsdp(model, parallel):
        return shard(model, device)
    from torch.nn.parallel import DistributedDataParallel as DDP

    if device.type == "cuda":
        sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids, forward_sync_buffers=False)


def sync_batchnorm(module: nn.Module) -> None:
    """Swap, in place, the BatchNorm layers outside frozen backbones for SyncBatchNorm (frozen ones
    stay in eval mode, where there is nothing to synchronise)."""
    from vfmtok.backbones import FrozenBackbone

    for name, child in list(module.named_children()):
        if isinstance(child, FrozenBackbone):
            continue
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            setattr(module, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        else:
            sync_batchnorm(child)


def shard(model: nn.Module, device: torch.device) -> nn.Module:
    """FSDP2: ``fully_shard`` each block of ``model.layers`` (one all-gather per block, overlapped
    with compute), then the root (embeddings, head). Ranks start from rank 0's weights."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    broadcast_module(model)
    mesh = init_device_mesh(device.type, (world(),))
    for block in getattr(model, "layers", []):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


@torch.no_grad()
def broadcast_module(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (DDP does this itself; FSDP does not)."""
    if world() == 1:
        return
    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, src=0)


def maybe_compile(module: nn.Module, enabled: bool) -> Callable[..., Any]:
    """``torch.compile(module)`` when asked: the compiled wrapper only runs the forward, the
    caller keeps using the plain module for state dicts (no ``_orig_mod.`` keys)."""
    return torch.compile(module) if enabled else module


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


# ----------------------------------------------------------------------------- collectives


def mean_logs(logs: dict[str, float]) -> dict[str, float]:
    """Each value averaged over ranks (one all-reduce): per-rank means of equal-size shares
    average to the global batch's mean."""
    if world() == 1 or not logs:
        return logs
    keys = sorted(logs)
    t = torch.tensor([float(logs[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return {k: float(v) / world() for k, v in zip(keys, t.tolist(), strict=True)}


def sum_(t: Tensor) -> None:
    """In place: ``t`` summed over ranks (a no-op in one process)."""
    if world() > 1:
        dist.all_reduce(t)


def broadcast_(t: Tensor) -> None:
    """In place: every rank gets rank 0's ``t`` (a no-op in one process)."""
    if world() > 1:
        dist.broadcast(t, src=0)


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """All-reduce-average the gradients of params that no DDP wrapper owns (the GAN's small
    discriminator heads, frozen and unfrozen around the generator step, which DDP's hooks do not
    fit). One flat buffer, one collective."""
    if world() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def gather_rng() -> list[dict[str, Tensor]]:
    """Every rank's torch RNG states, in rank order (a collective on every rank)."""
    state = rng_state()
    if world() == 1:
        return [state]
    out: list[Any] = [None] * world()
    dist.all_gather_object(out, state)
    return out


def restore_rng(checkpoint: dict[str, Any], seed: int) -> None:
    """Set this rank's RNG from a checkpoint: its own saved state when the checkpoint came from a
    run of the same size, rank 0's (shifted by rank, see :func:`rank_seed`) otherwise."""
    per_rank = checkpoint.get("rng_ranks")
    if per_rank and len(per_rank) == world():
        set_rng_state(per_rank[rank()])
        return
    set_rng_state(checkpoint["rng"])
    if rank() > 0:
        torch.manual_seed(rank_seed(seed + int(checkpoint.get("step", 0))))


# ----------------------------------------------------------------------------- checkpoints


def _full(t: Any) -> Any:
    """A DTensor shard -> the whole tensor on CPU (collective); anything else on CPU."""
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        t = t.full_tensor()
    return t.detach().cpu() if isinstance(t, Tensor) else t


def model_state(model: nn.Module) -> dict[str, Tensor]:
    """The full state dict in single-process form (CPU tensors, plain keys). For a sharded model
    this gathers (call it on every rank) and only rank 0 gets the tensors; others get {}."""
    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """``opt.state_dict()`` with every shard gathered: torch's own index-keyed format, the same a
    single process writes (collective for a sharded model; rank 0 gets the tensors)."""
    state = opt.state_dict()
    if not is_sharded(model):
        return state
    full = {i: {k: _full(v) for k, v in s.items()} for i, s in state["state"].items()}
    return {"state": full if is_main() else {}, "param_groups": state["param_groups"]}


def load_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a single-process-format optimizer state, sharding each tensor like its parameter."""
    if not is_sharded(model):
        opt.load_state_dict(state)
        return
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [p for g in opt.param_groups for p in g["params"]]
    local = {}
    for i, s in state["state"].items():
        p = params[int(i)]
        local[i] = {
            k: distribute_tensor(v.to(p.device, p.dtype), p.device_mesh, p.placements)
            if isinstance(p, DTensor) and isinstance(v, Tensor) and v.shape == p.shape else v
            for k, v in s.items()
        }  # fmt: skip
    opt.load_state_dict({"state": local, "param_groups": state["param_groups"]})
