"""The measured rate of each stage's work, from a benchmark report (``benchmarks/bench.py``'s JSON
under ``reports/benchmarks/``): never a guess.

A report holds, per benchmarked profile, the tokenizer's rates (the backbone's forward, encode, a
training step: images/s), the generator's training rate per zoo model (tokens/s) and its sampling
rate (images/s with the KV cache), with the CUDA allocator's peak where the run had a GPU. A stage
takes a rate only from a configuration that matches its params: the same backbone, resolution,
token count and tokenizer kind (``match``, which bench.py writes with :func:`tokenizer_key`) for
the tokenizer's stages; the same zoo model, token count and codebook for the generator's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError
from pipeline.params import Params

REPORTS = Path("reports") / "benchmarks"


@dataclass(frozen=True)
class Rate:
    per_gpu_s: float  # work units a second on one GPU (or the benchmarked CPU)
    source: str  # "reports/benchmarks/X.json: paper tokenizer.encode_img_s (batch 32)"
    peak_bytes: float | None = None  # the benchmark's measured peak, where it recorded one
    batch: int | None = None  # the per-device batch of that measurement
    cached_per_gpu_s: float | None = None  # tokenize: the rate from cached backbone levels

    def seconds(self, amount: float, cached: float = 0.0) -> float:
        """One GPU's seconds for ``amount`` units, ``cached`` of them at the cached-levels rate."""
        if not cached or self.cached_per_gpu_s is None:
            return amount / self.per_gpu_s
        return (amount - cached) / self.per_gpu_s + cached / self.cached_per_gpu_s


def tokenizer_key(params: Params) -> dict:
    """What a benchmarked tokenizer must share with the params for its rates to apply."""
    b = params.backbone
    return {"backbone": b.model if b.kind == "timm_vit" else b.kind, "resolution": params.prepare.resolution,
            "n_tokens": params.tokenizer.n_tokens, "kind": params.tokenizer.kind}


def is_report(data: object) -> bool:
    return isinstance(data, dict) and isinstance(data.get("profiles"), dict) and "device" in data


def read_report(path: Path) -> dict:
    """A report named by the user: one line when it is not bench.py's JSON."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable benchmark report ({' '.join(str(e).split())})") from None
    if not is_report(data):
        raise UserError(f"{path}: not a benchmark report of benchmarks/bench.py (no 'device' and 'profiles')")
    return data


def reports(root: Path) -> list[tuple[Path, dict]]:
    """Every report of bench.py's shape under ``reports/benchmarks/``, newest first (by ``date``)."""
    found = []
    for path in sorted((root / REPORTS).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if is_report(data):
            found.append((path, data))
    return sorted(found, key=lambda pr: str(pr[1].get("date", "")), reverse=True)


def matches_kind(report: dict, kind: str) -> bool:
    """``kind``: "cpu" for a CPU report, "gpu" for any GPU's, else a word of the GPU's name ("H200")."""
    if kind.lower() == "cpu":
        return not report.get("cuda", False)
    if kind.lower() in ("", "gpu"):
        return bool(report.get("cuda"))
    return bool(report.get("cuda")) and kind.lower() in str(report["device"]).lower()


def _tokenizer_rates(tok: dict, where: str) -> dict[str, Rate]:
    """Encoding from cached levels skips the backbone: its time an image is encode's less the
    backbone's (1 / (1/encode - 1/backbone) images/s), both measured in the same run."""
    out, batch = {}, tok.get("batch")
    for stage, key in (("extract_features", "backbone_forward_img_s"), ("tokenize", "encode_img_s"),
                       ("train_tokenizer", "train_step_img_s")):
        if key in tok:
            peak = tok.get("train_step_peak_bytes") if stage == "train_tokenizer" else None
            out[stage] = Rate(tok[key], f"{where} tokenizer.{key}, batch {batch}", peak, batch)
    enc, bb = tok.get("encode_img_s"), tok.get("backbone_forward_img_s")
    if enc and bb and enc < bb:
        cached = 1 / (1 / enc - 1 / bb)
        source = f"{out['tokenize'].source} (from cached levels: less backbone_forward_img_s)"
        out["tokenize"] = Rate(enc, source, batch=batch, cached_per_gpu_s=cached)
    return out


def _generator_rates(entry: dict, params: Params, where: str) -> dict[str, Rate]:
    """train_ar from the matching model's training rows (the stage's compile setting first, then
    the largest batch); sample from its measured (not estimated) draws at the largest batch."""
    model, out = params.ar_model.model, {}
    shape = {"n_tokens": params.tokenizer.n_tokens, "vocab_size": params.tokenizer.codebook_size}
    rows = [r for r in entry.get("ar_train", []) if r.get("model") == model
            and all(r.get(k, v) == v for k, v in shape.items())]
    rows.sort(key=lambda r: (r.get("compile") != params.train_ar.compile, -r.get("batch", 0)))
    if rows:
        r = rows[0]
        compiled = ", compiled" if r.get("compile") else ""
        source = f"{where} ar_train {model} tokens_s, batch {r['batch']}{compiled}"
        out["train_ar"] = Rate(r["tokens_s"], source, r.get("peak_bytes"), r.get("batch"))
    draws = [r for r in entry.get("sampling", []) if r.get("model") == model and not r.get("estimated")
             and r.get("tokens") == params.tokenizer.n_tokens]
    if draws:
        r = max(draws, key=lambda r: r["batch"])
        source = f"{where} sampling {model} kv_cache_img_s, batch {r['batch']}"
        out["sample"] = Rate(r["kv_cache_img_s"], source)
    return out


def stage_rates(params: Params, report: dict, shown: str) -> dict[str, Rate]:
    """{stage: rate} for the stages this report measured a matching configuration of."""
    out: dict[str, Rate] = {}
    for name, entry in report["profiles"].items():
        where = f"{shown}: {name}"
        if entry.get("match") == tokenizer_key(params) and entry.get("tokenizer"):
            out = _tokenizer_rates(entry["tokenizer"], where) | out
        out = _generator_rates(entry, params, where) | out
    return out


def find_rates(params: Params, root: Path, kind: str, report_file: Path | None = None
               ) -> tuple[dict[str, Rate], str | None]:
    """The rates of the newest report of GPU ``kind`` that has any (or of ``report_file``), and
    which report that was."""
    if report_file is not None:
        candidates = [(report_file, read_report(report_file))]
    else:
        candidates = [(p, r) for p, r in reports(root) if matches_kind(r, kind)]
    for path, report in candidates:
        shown = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        rates = stage_rates(params, report, shown)
        if rates:
            return rates, shown
    return {}, None
