"""What a params file would cost before it runs: each stage's work over its measured rate on N GPUs
(wall time, GPU-hours), and each training stage's peak memory a GPU against the GPU's memory.

Time scales linearly with the GPUs (every timed stage is data-parallel), so a plan is a lower bound
for many GPUs. A stage without a matching measured rate gets no time: never a guess. Memory is the
benchmark's measured peak where it ran the same per-GPU batch, else the meta-device estimate
(``memory.py``). Nothing here imports torch when the footprints file holds the configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.params import Params
from pipeline.planning import footprints
from pipeline.planning.memory import GIB, estimate
from pipeline.planning.rates import Rate, find_rates
from pipeline.planning.work import Work, dag_stage_names, stage_work
from vfmtok.config import FSDP_MIN_PARAMS

# Each GPU's memory as its datasheet gives it (bytes); a kind names one by a word of its name.
GPU_MEMORY = {"h200": 141e9, "h100": 80e9, "a100": 80e9, "l40s": 48e9, "a10g": 24e9, "l4": 24e9}
NO_REPORT = "no matching benchmark report (`bash benchmarks/gpu.sh` on the GPU writes one)"
HEADROOM = 0.9  # what a step may use of a GPU's memory: the rest is the CUDA context, fragmentation


def gpu_bytes(kind: str) -> float | None:
    """The memory of GPU ``kind`` ("H200", "NVIDIA H100 80GB HBM3"); None for a CPU or an unknown one."""
    name = kind.lower()
    hits = [k for k in GPU_MEMORY if k in name]
    return GPU_MEMORY[max(hits, key=len)] if hits else None


@dataclass(frozen=True)
class Memory:
    peak_bytes: float
    measured: bool
    batch: int  # per GPU
    capacity: float | None  # the GPU's memory, if known
    fitting_batch: int | None = None  # when it does not fit: the largest per-GPU batch that does
    gpus_needed: int | None = None  # ... and the fewest GPUs the global batch then splits over


@dataclass(frozen=True)
class Line:
    stage: str
    work: Work | None
    rate: Rate | None
    memory: Memory | None
    note: str = ""  # why a stage has no time (or no memory)

    def wall_s(self, gpus: int) -> float | None:
        if self.work is None or self.work.amount is None or self.rate is None:
            return None
        return self.rate.seconds(self.work.amount, self.work.cached) / gpus


@dataclass(frozen=True)
class Plan:
    name: str  # "params.yaml", "profile imagenet"
    gpus: int
    kind: str
    capacity: float | None
    report: str | None
    lines: list[Line]

    @property
    def device(self) -> str:
        """What the plan's figures are "a" of: a GPU, or a CPU machine for ``--gpu-kind cpu``."""
        return "CPU" if self.kind.lower() == "cpu" else "GPU"

    def timed(self) -> list[tuple[Line, float]]:
        return [(ln, w) for ln in self.lines if (w := ln.wall_s(self.gpus)) is not None]

    @property
    def total_wall_s(self) -> float:
        return sum(w for _, w in self.timed())


def _fsdp(params: Params, stage: str, trainable: int, gpus: int) -> bool:
    if stage != "train_ar" or gpus == 1:
        return False
    mode = params.train_ar.parallel
    return mode == "fsdp" or (mode == "auto" and trainable >= FSDP_MIN_PARAMS)


def training_memory(params: Params, stage: str, gpus: int, kind: str, rate: Rate | None,
                    capacity: float | None, cache: dict) -> Memory:
    """``stage``'s peak a GPU at its global batch over ``gpus`` (which must divide it)."""
    cfg = getattr(params, stage)
    batch, cuda = cfg.batch_size // gpus, kind.lower() != "cpu"
    fp = footprints.footprint(params, stage, cuda, cache)
    ema = getattr(cfg, "ema_decay", 0.0) > 0

    def est(n: int):
        return estimate(fp, ema=ema, processes=n, fsdp=_fsdp(params, stage, fp.trainable, n), cuda=cuda)

    measured = rate is not None and rate.peak_bytes is not None and rate.batch == batch and cuda
    peak = rate.peak_bytes if measured else est(gpus).peak_bytes(batch)
    if capacity is None or peak <= HEADROOM * capacity:
        return Memory(peak, measured, batch, capacity)
    fitting = min(est(gpus).batch_that_fits(capacity, HEADROOM), batch - 1)  # a measured peak outranks it
    needed = next((n for n in range(gpus + 1, cfg.batch_size + 1) if cfg.batch_size % n == 0
                   and cfg.batch_size // n <= est(n).batch_that_fits(capacity, HEADROOM)), None)
    return Memory(peak, measured, batch, capacity, fitting, needed)


def make_plan(params: Params, name: str, root: Path, gpus: int, kind: str, report_file: Path | None = None,
              capacity: float | None = None) -> Plan:
    """The plan of ``params`` (called ``name``) on ``gpus`` GPUs of ``kind`` (or "cpu")."""
    rates, report = find_rates(params, root, kind, report_file)
    capacity = capacity or gpu_bytes(kind)
    work, cache, lines = stage_work(params), footprints.read(), []
    for stage in dag_stage_names(root):
        w, rate, memory, note = work.get(stage), rates.get(stage), None, ""
        if w is None:
            note = "not timed: no benchmark measures this stage"
        elif w.amount is None:
            note = "the data's size is unknown until it is listed"
        elif rate is None:
            note = "no measured rate for this configuration"
        if stage in footprints.TRAINING_STAGES:
            if getattr(params, stage).batch_size % gpus:
                note = f"batch_size {getattr(params, stage).batch_size} does not split over {gpus} GPUs"
            else:
                memory = training_memory(params, stage, gpus, kind, rate, capacity, cache)
        lines.append(Line(stage, w, rate, memory, note))
    return Plan(name, gpus, kind, capacity, report, lines)


# ----------------------------------------------------------------------------- text


def hms(seconds: float) -> str:
    h, rest = divmod(int(round(seconds)), 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


def memory_text(m: Memory, device: str = "GPU") -> str:
    how = "measured" if m.measured else "estimated"
    text = f"{m.peak_bytes / GIB:.1f} GiB {how} ({m.batch} a {device})"
    if m.capacity is not None and m.peak_bytes > HEADROOM * m.capacity:
        text += f"; **does not fit {m.capacity / 1e9:.0f} GB**: {m.fitting_batch} a GPU fits"
        text += f", i.e. {m.gpus_needed} GPUs" if m.gpus_needed else ", at no GPU count"
    return text


def markdown(plan: Plan) -> str:
    """The plan as a Markdown table with its rates' sources as numbered notes."""
    d, where = plan.device, f"{plan.gpus} x {plan.kind}"
    if plan.capacity:
        where += f" ({plan.capacity / 1e9:.0f} GB each)"
    out = [f"Plan of {plan.name} on {where}; rates from "
           f"{f'`{plan.report}`' if plan.report else NO_REPORT}.", "",
           f"| stage | work | rate a {d} | wall on {plan.gpus} | {d}-hours | peak a {d} |",
           "|---|---|---|---|---|---|"]
    sources: list[str] = []
    for ln in plan.lines:
        w = ln.wall_s(plan.gpus)
        work = "-" if ln.work is None else ln.work.text + (
            f" = {ln.work.amount:,.0f} {ln.work.unit}" if ln.work.amount is not None else "")
        if w is not None:
            sources.append(ln.rate.source)
            rate = f"{ln.rate.per_gpu_s:,.1f} {ln.work.unit}/s"
            if ln.work.cached and ln.rate.cached_per_gpu_s:
                rate += f" ({ln.work.cached:,.0f} from cached levels at {ln.rate.cached_per_gpu_s:,.1f}/s)"
            rate += f" [{len(sources)}]"
            times = [hms(w), f"{w * plan.gpus / 3600:,.1f}"]
        else:
            rate, times = ln.note or "-", ["-", "-"]
        if ln.memory is not None:
            mem = memory_text(ln.memory, plan.device)
        else:
            mem = ln.note if ln.stage in footprints.TRAINING_STAGES else "-"
        out.append(f"| `{ln.stage}` | {work} | {rate} | {times[0]} | {times[1]} | {mem} |")
    timed, total = plan.timed(), plan.total_wall_s
    times = [hms(total), f"{total * plan.gpus / 3600:,.1f}"] if timed else ["-", "-"]
    out.append(f"| total | {len(timed)} of {len(plan.lines)} stages timed | | {times[0]} | {times[1]} | |")
    out += [""] + [f"[{i}] {s}" for i, s in enumerate(sources, 1)]
    return "\n".join(out)


def one_line(plan: Plan, line: Line) -> str:
    """One stage's plan in a sentence (what ``reproduce`` prints before it starts a GPU profile)."""
    w = line.wall_s(plan.gpus)
    text = f"[plan] {line.stage}: "
    if w is None:
        text += line.note
    else:
        text += (f"{line.work.amount:,.0f} {line.work.unit} at {line.rate.per_gpu_s:,.1f}/s a GPU: "
                 f"{hms(w)} on {plan.gpus} x {plan.kind}, {w * plan.gpus / 3600:,.1f} GPU-hours")
    if line.memory is not None:
        text += f"; peak {memory_text(line.memory).replace('**', '')}"
    return text
