"""How fast each part runs, for the demo profile and a paper-size one.

    python benchmarks/bench.py --out reports/benchmarks/bench-cpu    # -> bench-cpu.json + .md
    python benchmarks/bench.py --suite gpu --out reports/benchmarks/gpu-...   # what gpu.sh runs

Per profile: tokenizer encode (backbone included) vs. the backbone's own forward, decode, and one
training step (images/s); GPT training (tokens/s, and MFU on CUDA); class-conditional sampling of
256 tokens with and without the KV cache (images/s: the median of repeated draws, with their
range, as the ratio moves with the machine's load; ``kv_cache.py`` studies it further); Parquet
token-file writing (MB/s, bytes per token). Every model has random weights: speed does not depend
on their values, and nothing is downloaded (the paper-size backbone is timm's DINOv2-L/14-reg4 at
random init, as the weights file may be absent).

MFU = achieved FLOP/s / the GPU's dense bf16 peak, with the PaLM (appendix B) count of training
FLOPs per token: 6 * N + 12 * n_layer * dim * T, N = parameters outside the embedding tables
(the output head included), T = 256 tokens.

On a CPU the paper-size figures use batch 1 and one timed iteration, and sampling the paper GPT is
estimated from a few decoding steps (cached: the per-step time x 256; uncached: the sum over the
256 prefix lengths of a line fitted to measured full-prefix forwards). The output says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a shared CPU spinning threads starve each other
# (10x slower small ops measured on a busy 2-core machine); set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from bench_report import device_name, markdown, peak_bytes, reset_peak, write_report  # noqa: E402

from pipeline.formats.tokens import TokenWriter  # noqa: E402
from pipeline.params import Params  # noqa: E402
from pipeline.params.profiles import load_profile  # noqa: E402
from pipeline.planning.rates import tokenizer_key  # noqa: E402
from vfmtok import zoo  # noqa: E402
from vfmtok.backbones import build_backbone  # noqa: E402
from vfmtok.config import ARTrainConfig  # noqa: E402
from vfmtok.device import autocast, pick_device  # noqa: E402
from vfmtok.generator_training import optimizer  # noqa: E402
from vfmtok.losses import TokenizerLoss  # noqa: E402
from vfmtok.sampling import generate  # noqa: E402
from vfmtok.tokenizer import build_tokenizer  # noqa: E402
from vfmtok.transformer import Generator  # noqa: E402

SAMPLE_TOKENS = 256
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


@dataclass
class Case:
    """One profile's sizes on this device."""

    name: str
    params: Params
    tok_batch: int
    ar_models: list[str]  # GPTs to time training for (the last one also compiled with --compile)
    ar_batch: int
    sample_model: str
    sample_batches: list[int]
    warmup: int
    iters: int
    sample_steps: int | None  # None: time the whole 256-token draw; k: estimate from k steps
    repeats: int  # timed 256-token draws per sampling figure (median and range reported)
    parquet_rows: int
    notes: list[str]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def repeat_times(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` timed calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - start)
    return out


def spread(seconds: list[float]) -> dict[str, float]:
    """Median and range of repeated timings (the median is the figure; the range, how noisy)."""
    return {"median": float(np.median(seconds)), "min": min(seconds), "max": max(seconds), "n": len(seconds)}


def ratio_spread(slow: list[float], fast: list[float]) -> dict[str, float]:
    """slow / fast: the ratio of medians, and the widest and narrowest ratio the repeats allow."""
    return {"median": float(np.median(slow) / np.median(fast)), "min": min(slow) / max(fast),
            "max": max(slow) / min(fast)}


def timed(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    """Seconds per call of ``fn`` (mean over ``iters`` after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - start) / iters


# ----------------------------------------------------------------------------- tokenizer


def paper_backbone_config(params: Params):
    """The profile's backbone at random init (no weights file needed)."""
    bb = params.backbone
    if bb.kind == "timm_vit":
        bb = dataclasses.replace(bb, weights="random", allow_random_init=True)
    return bb


def bench_tokenizer(case: Case, device: torch.device) -> dict:
    p = case.params
    torch.manual_seed(0)
    backbone = build_backbone(paper_backbone_config(p)).to(device)
    tok = build_tokenizer(p.tokenizer, backbone).to(device)
    b, size = case.tok_batch, p.tokenizer.image_size
    images = torch.rand(b, 3, size, size, device=device) * 2 - 1
    ids = torch.randint(0, p.tokenizer.codebook_size, (b, p.tokenizer.n_tokens), device=device)
    w, n = case.warmup, case.iters
    out: dict[str, float] = {}
    with torch.no_grad(), autocast(device):
        tok.eval()
        out["backbone_forward_img_s"] = b / timed(lambda: backbone(images), device, w, n)
        out["encode_img_s"] = b / timed(lambda: tok.encode(images), device, w, n)
        out["decode_img_s"] = b / timed(lambda: tok.decode(ids), device, w, n)
    out["encode_vs_backbone"] = out["encode_img_s"] / out["backbone_forward_img_s"]
    reset_peak(device)
    out["train_step_img_s"] = b / timed(tokenizer_step(case, tok, backbone, images), device, w, max(1, n))
    out |= {f"train_step_{k}": v for k, v in peak_bytes(device).items()}
    out["batch"] = b
    return out


def tokenizer_step(case: Case, tok, backbone, images: torch.Tensor) -> Callable[[], None]:
    """One step as ``vfmtok.tokenizer_training`` takes it (before the GAN starts)."""
    p, device = case.params, images.device
    loss_cfg = p.train_tokenizer.loss
    if loss_cfg.perceptual == "lpips":  # needs local VGG/LPIPS files
        loss_cfg = dataclasses.replace(loss_cfg, perceptual="none")
        case.notes.append(f"{case.name}: tokenizer step without the LPIPS term (needs local VGG weights)")
    loss_fn = TokenizerLoss(loss_cfg, backbone).to(device)
    params = [q for q in tok.parameters() if q.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.95))
    cached = None
    if not p.train_tokenizer.augment:  # the demo trains on cached backbone levels
        with torch.no_grad():
            cached = [lv.float() for lv in backbone(images).levels]
    tok.train()

    def step() -> None:
        with autocast(device):
            out = tok(images, cached)
            g = loss_fn.generator_losses(images, out.recon, 0, image_levels=cached)
            total = sum(g.values()) + out.vq.loss + loss_cfg.semantic_weight * out.semantic_loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    return step


# ----------------------------------------------------------------------------- GPT


def gpt_for(p: Params, name: str, n_tokens: int | None = None) -> Generator:
    """Zoo entry ``name`` (GPT or RAR) at the profile's codebook, token count and classes."""
    num_classes = 10 if p.prepare.source == "fashion_mnist" else 1000
    return zoo.build(name, vocab_size=p.tokenizer.codebook_size,
                            n_tokens=n_tokens or p.tokenizer.n_tokens, num_classes=num_classes)


def train_flops_per_token(model: Generator, seq: int) -> float:
    """PaLM: 6 N (N without embedding tables) + 12 L d T (attention scores and mixing)."""
    embed = model.tok_embeddings.weight.numel() + model.cls_embedding.table.weight.numel()
    n = sum(q.numel() for q in model.parameters()) - embed
    cfg = model.config
    return 6 * n + 12 * cfg.n_layer * cfg.dim * seq


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def bench_ar(case: Case, name: str, device: torch.device, peak: float | None, compile_: bool) -> dict:
    p = case.params
    torch.manual_seed(0)
    model = gpt_for(p, name).to(device).train()
    b, t = case.ar_batch, p.tokenizer.n_tokens
    tokens = torch.randint(0, p.tokenizer.codebook_size, (b, t), device=device)
    labels = torch.randint(0, 10, (b,), device=device)
    opt = optimizer(model, ARTrainConfig(steps=1, batch_size=b, lr=1e-4))
    runner = torch.compile(model) if compile_ else model

    def step() -> None:
        with autocast(device):
            loss = runner(tokens, labels, targets=tokens)[1]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    warmup = case.warmup + (2 if compile_ else 0)
    reset_peak(device)
    sec = timed(step, device, warmup, case.iters)
    out = {"model": name, "batch": b, "n_tokens": t, "vocab_size": p.tokenizer.codebook_size,
           "tokens_per_step": b * t, "tokens_s": b * t / sec,
           "params_m": round(sum(q.numel() for q in model.parameters()) / 1e6, 1), "compile": compile_,
           **peak_bytes(device)}
    flops = train_flops_per_token(model, t)
    out["tflops_s"] = out["tokens_s"] * flops / 1e12
    if peak:
        out["mfu"] = out["tokens_s"] * flops / peak
    return out


@torch.no_grad()
def estimate_sampling(model: Generator, labels: torch.Tensor, steps: int,
                      device: torch.device) -> tuple[float, float]:
    """Seconds per 256-token draw (cached, uncached) from a few steps (see the module docstring)."""
    n, p = SAMPLE_TOKENS, model.prefix_len
    model.setup_caches(len(labels), p + n - 1, model.output.weight.dtype, device)
    pos = torch.arange(p + n - 1, device=device)
    tok = torch.zeros(len(labels), 1, dtype=torch.long, device=device)
    sync(device)
    start = time.perf_counter()
    model.forward_step(pos[:p], labels=labels)
    for t in range(1, steps + 1):
        model.forward_step(pos[p + t - 1:p + t], idx=tok)
    sync(device)
    cached = (time.perf_counter() - start) / (steps + 1) * n
    model.clear_caches()
    lengths, secs = [1, n // 2, n - 1], []
    for length in lengths:  # forward_prefix over a prefix of `length` tokens (sequence length + 1)
        prefix = torch.zeros(len(labels), length, dtype=torch.long, device=device)
        secs.append(timed(lambda prefix=prefix: model.forward_prefix(labels, prefix), device, 0, 1))
    slope, intercept = np.polyfit(lengths, secs, 1)
    uncached = float(sum(intercept + slope * t for t in range(n)))
    return cached, uncached


def bench_sampling(case: Case, device: torch.device) -> list[dict]:
    """Whole 256-token draws, ``case.repeats`` of each (median and range), or an estimate."""
    torch.manual_seed(0)
    model = gpt_for(case.params, case.sample_model, SAMPLE_TOKENS).to(device).eval()
    torch.nn.init.normal_(model.output.weight, std=0.02)  # a zero head would make every draw alike
    rows = []
    for b in case.sample_batches:
        labels = torch.randint(0, 10, (b,), device=device)
        row = {"model": case.sample_model, "batch": b, "tokens": SAMPLE_TOKENS,
               "estimated": case.sample_steps is not None}
        with autocast(device):
            if case.sample_steps is None:
                def draw(cache: bool, labels=labels) -> None:
                    generate(model, labels, SAMPLE_TOKENS, use_kv_cache=cache)

                cached = repeat_times(lambda: draw(True), device, min(case.warmup, 1), case.repeats)
                uncached = repeat_times(lambda: draw(False), device, 0, case.repeats)
                row |= {"kv_cache_s": spread(cached), "no_cache_s": spread(uncached),
                        "speedup_spread": ratio_spread(uncached, cached)}
                cached, uncached = float(np.median(cached)), float(np.median(uncached))
            else:
                cached, uncached = estimate_sampling(model, labels, case.sample_steps, device)
        rows.append(row | {"kv_cache_img_s": b / cached, "no_cache_img_s": b / uncached,
                           "speedup": uncached / cached})
    return rows


# ----------------------------------------------------------------------------- Parquet


def bench_parquet(case: Case) -> dict:
    """Uniform random ids (the hardest case for zstd); payload = rows x tokens x id bytes."""
    p = case.params.tokenizer
    rows, n = case.parquet_rows, p.n_tokens
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, p.codebook_size, (rows, n))
    labels = rng.integers(0, 1000, rows)
    ids = [f"img{i:08d}" for i in range(rows)]
    id_bytes = 2 if p.codebook_size <= 65536 else 4
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.parquet"
        start = time.perf_counter()
        w = TokenWriter(path, p.codebook_size, {"n_tokens": n}, 8192)
        for i in range(0, rows, 4096):
            w.write(ids[i:i + 4096], "train", labels[i:i + 4096], tokens[i:i + 4096], False)
        w.close()
        sec = time.perf_counter() - start
        size = path.stat().st_size
    return {"rows": rows, "rows_s": rows / sec, "payload_mb_s": rows * n * id_bytes / sec / 1e6,
            "file_mb_s": size / sec / 1e6, "bytes_per_token": size / (rows * n)}


# ----------------------------------------------------------------------------- cases and report


def cases(suite: str, device: torch.device) -> list[Case]:
    demo = load_profile("demo", ROOT, check_paths=False)
    paper = load_profile("imagenet", ROOT, check_paths=False)
    gpu = device.type == "cuda"
    if suite == "gpu":
        return [Case("paper", paper, 32, ["GPT-B", "GPT-L"], 64, paper.ar_model.model, [64, 256], 3, 10,
                     None, 5, 200_000, ["paper: random-init DINOv2-L at 336 px, bf16 autocast"])]
    out = [Case("demo", demo, 32 if gpu else 16, [demo.ar_model.model], demo.train_ar.batch_size,
                demo.ar_model.model, [demo.sample.speed_batch], 2 if gpu else 1, 10 if gpu else 3, None,
                5 if gpu else 3, 50_000, [])]
    if gpu:
        out.append(Case("paper", paper, 32, [paper.ar_model.model], 32, paper.ar_model.model, [64], 3, 10,
                        None, 3, 200_000, ["paper: random-init DINOv2-L at 336 px, bf16 autocast"]))
    else:
        out.append(Case("paper", paper, 1, ["GPT-B"], 1, "GPT-B", [1], 0, 2, 4, 1, 50_000, [
            "paper on CPU: batch 1, two timed iterations, random-init DINOv2-L at 336 px",
            "paper on CPU: GPT-B (the paper's smallest generator) instead of the profile's GPT-L, for time; "
            "sampling estimated from 4 decoding steps",
        ]))
    return out


def run(suite: str, device: torch.device, peak_tflops: float | None, compile_: bool) -> dict:
    peak = peak_flops(device, peak_tflops)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": device_name(device), "suite": suite,
              "cuda": device.type == "cuda",
              "torch": torch.__version__, "threads": torch.get_num_threads(), "profiles": {}}
    for case in cases(suite, device):
        t0 = time.perf_counter()
        res = {"match": tokenizer_key(case.params), "tokenizer": bench_tokenizer(case, device)}
        res["ar_train"] = [bench_ar(case, m, device, peak, False) for m in case.ar_models]
        if compile_:
            res["ar_train"].append(bench_ar(case, case.ar_models[-1], device, peak, True))
        res["sampling"] = bench_sampling(case, device)
        res["parquet"] = bench_parquet(case)
        res["notes"], res["seconds"] = case.notes, round(time.perf_counter() - t0, 1)
        report["profiles"][case.name] = res
        print(f"[{case.name}] done in {res['seconds']} s", flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output path stem: writes STEM.json and STEM.md")
    ap.add_argument("--suite", choices=["default", "gpu"], default="default",
                    help="default: demo + paper-size; gpu: the paper-size GPU figures of gpu.sh")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="bf16 peak for MFU (default: looked up by GPU name)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: torch's choice)")
    ap.add_argument("--compile", action="store_true", help="also time GPT training under torch.compile")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    device = pick_device(args.device)
    report = run(args.suite, device, args.peak_tflops, args.compile)
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    write_report(args.out, report, markdown(report) + f"\nWall time {report['wall_seconds']} s.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
