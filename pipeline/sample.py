"""Stage ``sample``: class-conditional samples from the GPT, decoded by the EMA tokenizer.

Reads ``sample``, ``data/gpt``, ``data/tokenizer``; writes ``data/samples/samples.npz``
(``arr_0``: uint8 N x H x W x 3, the layout the ADM evaluator reads; ``labels``: N),
``reports/samples/<class>.png`` (a grid per class), ``reports/samples.png`` (all classes) and
``reports/sample.json`` (images/s and tokens/s, with and without the KV cache).
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import numpy as np
import torch
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from safetensors.torch import load_file

from pipeline import artifacts, grids, shards
from pipeline.artifacts import Layout
from pipeline.models import load_tokenizer, to_uint8
from pipeline.params import Params, load_params
from pipeline.train_ar import build_ar_model
from vfmtok.generate import generate
from vfmtok.gpt import GPT
from vfmtok.runtime import autocast, pick_device


def load_gpt(layout: Layout, params: Params, device: torch.device) -> GPT:
    num_classes = len(shards.read_classes(layout.prepared))
    model = build_ar_model(params, num_classes)
    model.load_state_dict(load_file(str(layout.gpt / "model.safetensors")))
    return model.to(device).eval()


def _generate(model: GPT, labels: torch.Tensor, params: Params, use_kv_cache: bool,
              generator: torch.Generator) -> torch.Tensor:
    s, device = params.sample, labels.device
    with autocast(device):
        return generate(model, labels, params.tokenizer.n_tokens, temperature=s.temperature,
                        top_k=s.top_k, top_p=s.top_p, cfg_scale=s.cfg_scale,
                        use_kv_cache=use_kv_cache, generator=generator)


@task(cache_policy=NO_CACHE)
def speed(model: GPT, params: Params, device: torch.device) -> dict:
    """Tokens/s of one batch with and without the KV cache (same seed, same samples)."""
    labels = torch.arange(params.sample.speed_batch, device=device) % model.config.num_classes
    out = {}
    for name, kv in (("kv_cache", True), ("no_cache", False)):
        g = torch.Generator(device=device).manual_seed(params.sample.seed)
        start = time.perf_counter()
        _generate(model, labels, params, kv, g)
        seconds = time.perf_counter() - start
        out[f"tokens_per_s_{name}"] = round(len(labels) * params.tokenizer.n_tokens / seconds, 1)
    out["kv_cache_speedup"] = round(out["tokens_per_s_kv_cache"] / out["tokens_per_s_no_cache"], 2)
    return out


@flow(name="sample")
def sample_flow(params_file: str = "params.yaml", root: str = ".") -> dict:
    params = load_params(params_file)
    s, layout = params.sample, Layout(Path(root))
    device = pick_device(s.device)
    gpt = load_gpt(layout, params, device)
    tokenizer, _ = load_tokenizer(layout.tokenizer, params, device)
    classes = shards.read_classes(layout.prepared)
    labels = torch.arange(len(classes)).repeat_interleave(s.per_class)
    g = torch.Generator(device=device).manual_seed(s.seed)

    start, images = time.perf_counter(), []
    for i in range(0, len(labels), s.batch_size):
        ids = _generate(gpt, labels[i : i + s.batch_size].to(device), params, True, g)
        with torch.no_grad(), autocast(device):
            images.append(to_uint8(tokenizer.decode(ids)))
    seconds = time.perf_counter() - start
    images_np = np.concatenate(images)

    buf = io.BytesIO()
    np.savez(buf, arr_0=images_np, labels=labels.numpy().astype(np.int64))
    artifacts.write_bytes(layout.samples / "samples.npz", buf.getvalue())
    per_class = images_np.reshape(len(classes), s.per_class, *images_np.shape[1:])
    for c, cls in enumerate(classes):
        name = re.sub(r"[^A-Za-z0-9]+", "_", cls["name"]).strip("_")
        rows = [per_class[c, j : j + 8] for j in range(0, s.per_class, 8)]
        grids.save_png(layout.reports / "samples" / f"{c:03d}_{name}.png", grids.grid(rows, scale=2))
    overview = [per_class[c, : min(8, s.per_class)] for c in range(min(len(classes), 20))]
    grids.save_png(layout.reports / "samples.png", grids.grid(overview, scale=2))

    report = {
        "samples": len(images_np),
        "images_per_s": round(len(images_np) / seconds, 2),
        "tokens_per_s": round(len(images_np) * params.tokenizer.n_tokens / seconds, 1),
        "cfg_scale": s.cfg_scale,
        **speed(gpt, params, device),
    }
    report["seconds"] = round(time.perf_counter() - start, 2)
    artifacts.write_json(layout.reports / "sample.json", report)
    get_run_logger().info("%d samples at %.1f images/s; KV cache %.1fx faster", len(images_np),
                          report["images_per_s"], report["kv_cache_speedup"])
    return report
