"""Stage ``sample``: class-conditional samples from the generator (GPT or RAR, raster decoding
with the KV cache), decoded by the EMA tokenizer. Sample i draws from its own seed (derived from
``sample.seed`` and i), so it does not depend on ``batch_size``.

Reads ``sample``, ``data/generator``, ``data/tokenizer``, ``data/prepared/classes.json``; writes
``data/samples`` (``pipeline/formats/samples.py``), ``reports/samples/<class>.png`` (a grid per
class), ``reports/samples.png`` (all classes) and ``reports/sample.json`` (images/s and
tokens/s, with and without the KV cache).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.formats import prepared, samples
from pipeline.layout import Layout
from pipeline.models.trained import load_generator, load_tokenizer
from pipeline.orchestration.lazy_prefect import flow, get_run_logger, task
from pipeline.params import Params, load_params
from pipeline.reporting import grids
from vfmtok import distributed, files
from vfmtok.device import autocast
from vfmtok.images import to_uint8
from vfmtok.sampling import generate, sample_seeds
from vfmtok.transformer import Generator


def _generate(model: Generator, labels: torch.Tensor, params: Params, use_kv_cache: bool,
              first: int) -> torch.Tensor:
    """Samples ``first`` .. ``first + B - 1`` of the run, for ``labels`` (B,)."""
    s, device = params.sample, labels.device
    with autocast(device):
        return generate(model, labels, model.config.n_tokens, temperature=s.temperature,
                        top_k=s.top_k, top_p=s.top_p, cfg_scale=s.cfg_scale, cfg_power=s.cfg_power,
                        use_kv_cache=use_kv_cache, seeds=sample_seeds(s.seed, first, len(labels)),
                        compile=s.compile and use_kv_cache)


@task()
def speed(model: Generator, params: Params, device: torch.device) -> dict:
    """Tokens/s of one batch with and without the KV cache (same seeds, same samples; with
    ``compile`` the compiled step was built by the sampling before)."""
    labels = torch.arange(params.sample.speed_batch, device=device) % model.config.num_classes
    out = {}
    for name, kv in (("kv_cache", True), ("no_cache", False)):
        start = time.perf_counter()
        _generate(model, labels, params, kv, 0)
        seconds = time.perf_counter() - start
        out[f"tokens_per_s_{name}"] = round(len(labels) * model.config.n_tokens / seconds, 1)
    out["kv_cache_speedup"] = round(out["tokens_per_s_kv_cache"] / out["tokens_per_s_no_cache"], 2)
    return out


def _save_grids(layout: Layout, images: np.ndarray, classes: list[dict], per_class: int) -> None:
    """A grid per class (8 a row) and one overview (up to 20 classes x 8 samples)."""
    by_class = images.reshape(len(classes), per_class, *images.shape[1:])
    for c, cls in enumerate(classes):
        name = re.sub(r"[^A-Za-z0-9]+", "_", cls["name"]).strip("_")
        rows = [by_class[c, j : j + 8] for j in range(0, per_class, 8)]
        grids.save_png(layout.sample_grids / f"{c:03d}_{name}.png", grids.grid(rows, scale=2))
    overview = [by_class[c, : min(8, per_class)] for c in range(min(len(classes), 20))]
    grids.save_png(layout.picture("samples"), grids.grid(overview, scale=2))


@flow(name="sample")
def sample_flow(params_file: str = "params.yaml", root: str = ".") -> dict:
    params = load_params(params_file)
    s, layout = params.sample, Layout(Path(root))
    device = distributed.init_from_env(s.device)  # torchrun: the fixed batches split across ranks
    classes = prepared.read_classes(layout.prepared)
    gpt = load_generator(layout, params, len(classes), device)
    tokenizer, _ = load_tokenizer(layout, params, device)
    labels = torch.arange(len(classes)).repeat_interleave(s.per_class)

    def draw(idx: np.ndarray) -> np.ndarray:  # a batch of samples, (B, H, W, 3) uint8
        ids = _generate(gpt, labels[idx].to(device), params, True, int(idx[0]))
        with torch.no_grad(), autocast(device):
            return to_uint8(tokenizer.decode(ids))

    start = time.perf_counter()
    decoded = distributed.map_batches(draw, len(labels), s.batch_size)  # rank 0 gets them all
    seconds = time.perf_counter() - start
    if not distributed.is_main():
        return {}
    images = np.concatenate(decoded)
    samples.write(layout.samples, images, labels.numpy())
    _save_grids(layout, images, classes, s.per_class)

    report = {
        "samples": len(images),
        "images_per_s": round(len(images) / seconds, 2),
        "tokens_per_s": round(len(images) * gpt.config.n_tokens / seconds, 1),
        "generator": params.ar_model.model,
        "cfg_scale": s.cfg_scale,
        "cfg_power": s.cfg_power,
        **speed(gpt, params, device),
    }
    report["seconds"] = round(time.perf_counter() - start, 2)
    files.write_json(layout.report("sample"), report)
    get_run_logger().info("%d samples at %.1f images/s; KV cache %.1fx faster", len(images),
                          report["images_per_s"], report["kv_cache_speedup"])
    return report
