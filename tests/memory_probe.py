"""A CPU training step's measured peak memory, the reference the meta-device estimates are tested
against: torch's profiler records every CPU allocation and free of the step; their running sum's
maximum is the step's peak above what existed before it (the weights and optimizer state, which
are counted exactly from their tensors)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile


def peak_above_start(step: Callable[[], None]) -> int:
    """Bytes: the highest the CPU allocations of one ``step()`` rise above where they started."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        current += event.nbytes()  # + allocated, - freed
        peak = max(peak, current)
    return peak


def tensor_bytes(tensors) -> int:
    """Bytes of ``tensors``' distinct storages."""
    seen = {}
    for t in tensors:
        seen[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
    return sum(seen.values())


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    return tensor_bytes(v for state in opt.state.values() for v in state.values() if torch.is_tensor(v))
