"""The benchmark report for people: the device, the goals' status and the Markdown table
(``bench.py`` measures; this formats)."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch

REPORTS = Path(__file__).resolve().parents[1] / "reports" / "benchmarks"


def command_line(doc: str | None, name: str, repeats: int = 5) -> argparse.ArgumentParser:
    """A benchmark's common arguments: its docstring as help, ``--repeats`` (the spread of a
    figure comes from them) and ``--out`` (default ``reports/benchmarks/NAME``: ``.json`` and ``.md``)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--out", default=str(REPORTS / name), help="output path stem (default: %(default)s)")
    return parser


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        lines = info.read_text().splitlines()
        names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{cpu} ({os.cpu_count()} CPUs), {torch.get_num_threads()} torch threads"


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> dict[str, int]:
    """{"peak_bytes": the most the CUDA allocator held since :func:`reset_peak`}; {} on a CPU,
    where torch keeps no such count (``vfmtok-pipeline plan`` then estimates the memory)."""
    return {"peak_bytes": int(torch.cuda.max_memory_allocated(device))} if device.type == "cuda" else {}


def goals(report: dict) -> list[str]:
    """Where the issue's GPU goals stand in this report (they are set for a GPU, e.g. an H200)."""
    out = []
    for name, r in report["profiles"].items():
        mfus = [a["mfu"] for a in r["ar_train"] if a["model"] == "GPT-L" and "mfu" in a]
        if mfus:
            out.append(f"{name}: GPT-L bf16 training MFU {100 * max(mfus):.1f}% (goal >= 40%): "
                       f"{'met' if max(mfus) >= 0.4 else 'not met'}")
        for smp in r["sampling"]:
            out.append(f"{name}: KV cache {smp['speedup']:.1f}x faster than re-running the prefix, batch "
                       f"{smp['batch']} (goal >= 10x): {'met' if smp['speedup'] >= 10 else 'not met'}")
        ratio = r["tokenizer"]["encode_vs_backbone"]
        out.append(f"{name}: encode at {100 * ratio:.0f}% of the backbone's forward (goal >= 80% on a GPU): "
                   f"{'met' if ratio >= 0.8 else 'not met'}")
    return out


def markdown(report: dict) -> str:
    def f(v: float | None, d: int = 1) -> str:
        return "-" if v is None else f"{v:,.{d}f}"

    lines = [f"Benchmarks: {report['device']}, torch {report['torch']}, {report['date']}", "",
             "| profile | figure | value |", "|---|---|---|"]
    for name, r in report["profiles"].items():
        t = r["tokenizer"]
        rows = [
            (f"backbone forward (batch {t['batch']})", f"{f(t['backbone_forward_img_s'], 2)} img/s"),
            ("tokenizer encode (backbone included)", f"{f(t['encode_img_s'], 2)} img/s "
                                                      f"({100 * t['encode_vs_backbone']:.0f}% of backbone)"),
            ("tokenizer decode", f"{f(t['decode_img_s'], 2)} img/s"),
            ("tokenizer train step", f"{f(t['train_step_img_s'], 2)} img/s"),
        ]
        for a in r["ar_train"]:
            mfu = f", MFU {100 * a['mfu']:.1f}%" if "mfu" in a else ""
            rows.append((f"{a['model']} train (batch {a['batch']}{', compiled' if a['compile'] else ''})",
                         f"{f(a['tokens_s'], 0)} tokens/s ({f(a['tflops_s'], 2)} TFLOP/s{mfu})"))
        for s in r["sampling"]:
            est = " (est.)" if s["estimated"] else ""
            sp = s.get("speedup_spread")
            rng = f", {f(sp['min'])}-{f(sp['max'])}x over {s['kv_cache_s']['n']} repeats" if sp else ""
            rows.append((f"{s['model']} sampling 256 tokens, batch {s['batch']}{est}",
                         f"KV cache {f(s['kv_cache_img_s'], 2)} img/s, without {f(s['no_cache_img_s'], 3)} "
                         f"img/s (median {f(s['speedup'])}x{rng})"))
        pq = r["parquet"]
        rows.append(("Parquet token write", f"{f(pq['payload_mb_s'])} MB/s of ids "
                     f"({f(pq['rows_s'], 0)} rows/s), {pq['bytes_per_token']:.3f} bytes/token on disk"))
        lines += [f"| {name} | {k} | {v} |" for k, v in rows]
    lines += ["", f"Goals ({'this GPU' if report['cuda'] else 'set for a GPU; this run is on a CPU'}):",
              *[f"- {g}" for g in goals(report)]]
    notes = [n for r in report["profiles"].values() for n in r["notes"]]
    if notes:
        lines += ["", *[f"- {n}" for n in dict.fromkeys(notes)]]
    return "\n".join(lines) + "\n"


def write_report(out: str | Path, report: dict, md: str) -> None:
    """``OUT.json`` (the figures) and ``OUT.md`` (``md``) beside each other; ``OUT`` may carry
    either suffix. Prints the Markdown."""
    stem = Path(out)
    stem = stem.with_suffix("") if stem.suffix in (".json", ".md") else stem
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(md)
    print(md)
