"""The KV-cache figure, measured so that it holds: 256-token draws at batch 8 (docs/performance.md's GPT-Tiny
figure, on the demo's codebook), repeated, reported as the median and range of each timing and of
the speed-up; eager, and with the compiled decode step (``generate(compile=True)``, what
``sample.compile`` turns on); then where one decode step's time goes (a profile).

    python benchmarks/kv_cache.py --out reports/benchmarks/kv_cache            # -> .json + .md
    python benchmarks/kv_cache.py --models GPT-Tiny RAR-Tiny --repeats 5 --compile --out ...

Why repeats: on a shared CPU one draw pair gave 10.1x and a later one 5.2x; the median and the
range say which part of such a gap is the machine's load.

Where the per-token time goes (``--profile``; host side only, CPU activity): the ATen ops of
``--profile-tokens`` cached decode steps under ``torch.profiler``, their self time by kind
(matmul, attention, sampling, the rest), the ATen calls per token (nested ones included), and the
time the step's FLOPs would take at this device's measured matmul rate (a 1024^3 GEMM). Step
time far above that FLOP time, spread over hundreds of small calls, is dispatch.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ROOT, gpt_for, ratio_spread, repeat_times, spread, sync  # noqa: E402
from bench_report import device_name, write_report  # noqa: E402

from pipeline.params.profiles import load_profile  # noqa: E402
from vfmtok.device import autocast, pick_device  # noqa: E402
from vfmtok.sampling import generate  # noqa: E402
from vfmtok.transformer import Generator  # noqa: E402

KINDS = {  # profiler op name fragments -> kind (first match wins)
    "matmul": ("addmm", "aten::mm", "bmm", "matmul", "linear"),
    "attention": ("scaled_dot_product", "_flash_attention", "_efficient_attention", "softmax_backward"),
    "sampling": ("multinomial", "softmax", "cumsum", "searchsorted", "topk", "sort", "argmax"),
}


def matmul_flops_per_s(device: torch.device, n: int = 1024) -> float:
    """FLOP/s of an n^3 fp32 GEMM here: the rate the decode step's FLOPs could run at."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    secs = repeat_times(lambda: a @ b, device, 2, 5)
    return 2 * n**3 / min(secs)


def step_flops(model: Generator, rows: int, context: int) -> float:
    """Forward FLOPs of one cached step for ``rows`` sequences: 2 per weight (embeddings excluded)
    plus q.k and p.v over a static cache of ``context`` positions."""
    tables = sum(p.numel() for n, p in model.named_parameters() if "embed" in n or n == "cls_token")
    cfg = model.config
    return rows * (2 * (sum(p.numel() for p in model.parameters()) - tables)
                   + 4 * cfg.n_layer * cfg.dim * context)


def profile_decode(model: Generator, labels: torch.Tensor, tokens: int, compile_: bool) -> dict:
    """Self time by kind of the ATen ops of one ``tokens``-long draw, per token."""
    from torch.profiler import ProfilerActivity, profile

    generate(model, labels, tokens, compile=compile_)  # warm (and compiled) first
    start = time.perf_counter()
    generate(model, labels, tokens, compile=compile_)
    plain = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        generate(model, labels, tokens, compile=compile_)
        wall = time.perf_counter() - start  # the profiler's own per-op cost included
    by_kind = dict.fromkeys([*KINDS, "other"], 0.0)
    n_ops = 0
    for ev in prof.key_averages():
        if not ev.key.startswith("aten::") and "Torch-Compiled" not in ev.key:
            continue
        n_ops += ev.count
        kind = next((k for k, frags in KINDS.items() if any(f in ev.key for f in frags)), "other")
        by_kind[kind] += ev.self_cpu_time_total / 1e6
    in_ops = sum(by_kind.values())
    return {"tokens": tokens, "wall_ms_per_token": 1e3 * plain / tokens,
            "profiled_ms_per_token": 1e3 * wall / tokens,
            "ops_per_token": n_ops / tokens,
            "self_ms_per_token": {k: round(1e3 * v / tokens, 4) for k, v in by_kind.items()},
            "outside_ops_ms_per_token": 1e3 * max(wall - in_ops, 0.0) / tokens}


def bench_model(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    params = load_profile("demo", ROOT, check_paths=False)
    torch.manual_seed(0)
    model = gpt_for(params, name, args.tokens).to(device).eval()
    with torch.no_grad():
        model.output.weight.normal_(0, 0.02)  # a zero head would make every draw alike
    labels = torch.arange(args.batch, device=device) % model.config.num_classes
    def draw(**kw) -> None:
        with autocast(device):  # bf16 on CUDA, as the sample stage runs; nothing on CPU
            generate(model, labels, args.tokens, **kw)

    draws = {"kv_cache": lambda: draw(), "no_cache": lambda: draw(use_kv_cache=False)}
    out = {"model": name, "params": sum(p.numel() for p in model.parameters()), "batch": args.batch,
           "tokens": args.tokens}
    if args.compile:
        sync(device)
        start = time.perf_counter()
        draw(compile=True)  # first call: tracing + code generation
        sync(device)
        out["compile_s"] = round(time.perf_counter() - start, 1)
        draws["compiled"] = lambda: draw(compile=True)
    times = {k: repeat_times(fn, device, int(k != "no_cache"), args.repeats) for k, fn in draws.items()}
    out["seconds"] = {k: spread(v) for k, v in times.items()}
    out["speedup"] = {f"{k}_vs_no_cache": ratio_spread(times["no_cache"], v)
                      for k, v in times.items() if k != "no_cache"}
    if args.profile:
        rows = args.batch
        out["profile"] = {"eager": profile_decode(model, labels, args.profile_tokens, False)}
        if args.compile:
            out["profile"]["compiled"] = profile_decode(model, labels, args.profile_tokens, True)
        flops = step_flops(model, rows, model.prefix_len + args.profile_tokens - 1)
        out["profile"]["flops_per_token"] = flops
        out["profile"]["flop_ms_per_token_at_gemm_rate"] = 1e3 * flops / args.gemm_rate
    return out


def markdown(report: dict) -> str:
    def rng(s: dict, d: int = 2) -> str:
        return f"{s['median']:.{d}f} ({s['min']:.{d}f}-{s['max']:.{d}f})"

    lines = [f"KV cache: {report['device']}, torch {report['torch']}, {report['date']}; "
             f"{report['repeats']} repeats, median (min-max)", "",
             "| model | params | draw | seconds per draw | speed-up vs no cache |", "|---|---|---|---|---|"]
    for r in report["models"]:
        for kind, s in r["seconds"].items():
            sp = r["speedup"].get(f"{kind}_vs_no_cache")
            lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {kind} (batch {r['batch']}, "
                         f"{r['tokens']} tokens) | {rng(s)} | {rng(sp, 1) + 'x' if sp else '-'} |")
        if "compile_s" in r:
            lines.append(f"| {r['model']} | | first compiled draw (tracing + codegen) | {r['compile_s']} | |")
    lines += ["", f"GEMM rate here: {report['gemm_gflops']:.1f} GFLOP/s (fp32 1024^3)."]
    for r in report["models"]:
        prof = r.get("profile")
        if not prof:
            continue
        lines += ["", f"{r['model']}: per token of a {prof['eager']['tokens']}-token draw "
                  f"(batch {r['batch']}); its FLOPs take "
                  f"{prof['flop_ms_per_token_at_gemm_rate']:.4f} ms at the GEMM rate", "",
                  "| step | wall ms | profiled ms | ATen ops | matmul ms | attention ms | sampling ms | "
                  "other ops ms | outside ops ms |", "|---|---|---|---|---|---|---|---|---|"]
        for kind in ("eager", "compiled"):
            if kind in prof:
                p, k = prof[kind], prof[kind]["self_ms_per_token"]
                lines.append(f"| {kind} | {p['wall_ms_per_token']:.3f} | {p['profiled_ms_per_token']:.3f} | "
                             f"{p['ops_per_token']:.0f} | "
                             f"{k['matmul']:.3f} | {k['attention']:.3f} | {k['sampling']:.3f} | "
                             f"{k['other']:.3f} | {p['outside_ops_ms_per_token']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output path stem: writes STEM.json and STEM.md")
    ap.add_argument("--models", nargs="+", default=["GPT-Tiny"], help="zoo names (GPT-* or RAR-*)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also the compiled decode step (inductor)")
    ap.add_argument("--profile", action="store_true", help="profile where a decode step's time goes")
    ap.add_argument("--profile-tokens", type=int, default=64)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    args.gemm_rate = matmul_flops_per_s(device)
    start = time.perf_counter()
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": device_name(device),
              "torch": torch.__version__, "repeats": args.repeats, "gemm_gflops": args.gemm_rate / 1e9,
              "models": [bench_model(m, args, device) for m in args.models]}
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    write_report(args.out, report, markdown(report) + f"\nWall time {report['wall_seconds']} s.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
