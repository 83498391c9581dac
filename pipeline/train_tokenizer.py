"""Stage ``train_tokenizer``: train VFMTok (or the pixel-only VQGAN baseline) and keep its EMA.

Reads ``backbone``, ``tokenizer``, ``train_tokenizer``, ``data/prepared`` and ``data/features``;
writes ``data/tokenizer/{model.safetensors, config.json}`` (EMA weights, used by every later
stage), ``reports/train_tokenizer.json`` (val losses, PSNR, codebook usage, perplexity),
``reports/train_tokenizer/`` (DVCLive per-step curves) and ``reports/tokenizer_recon.png``.
Checkpoints go to ``data/checkpoints/tokenizer`` (kept across runs by DVC: ``persist``), so a
killed run resumes where its last checkpoint left off.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipeline import artifacts, grids
from pipeline.artifacts import Layout
from pipeline.config import to_dict
from pipeline.datasets import SplitFeatures, SplitImages, TokenizerTrainData
from pipeline.live import open_live
from pipeline.models import reconstruct, save_tokenizer
from pipeline.params import Params, load_params
from vfmtok import distributed
from vfmtok.backbones import build_backbone
from vfmtok.losses import TokenizerLoss
from vfmtok.metrics import batch_psnr, codebook_usage
from vfmtok.tokenizer import Tokenizer, build_tokenizer
from vfmtok.train_tokenizer import train_tokenizer

CHECKPOINTS = Path("data") / "checkpoints" / "tokenizer"


def _features(layout: Layout, images: SplitImages, params: Params, split: str) -> SplitFeatures | None:
    """Cached levels when they can stand in for the backbone: VFMTok kind, split extracted."""
    if params.tokenizer.kind != "vfmtok" or split not in params.extract_features.splits:
        return None
    return SplitFeatures(layout.features, images)


@task(retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def fit(params: Params, layout: Layout, model: Tokenizer, loss_fn: TokenizerLoss,
        device: torch.device) -> tuple[Tokenizer, int]:
    """Train (resuming from the last checkpoint, also when Prefect retries) and return the EMA model."""
    cfg = params.train_tokenizer
    images = SplitImages(layout.prepared, "train")
    feats = None if cfg.augment else _features(layout, images, params, "train")
    data = TokenizerTrainData(images, feats, cfg.augment)
    run_config = {k: to_dict(getattr(params, k)) for k in ("prepare", "backbone", "tokenizer",
                                                           "train_tokenizer")}
    for key in ("device", "compile"):  # where and how it runs does not change what it learns
        run_config["train_tokenizer"].pop(key)
    live = None

    def log(step: int, logs: dict[str, float]) -> None:
        nonlocal live
        if live is None:  # opened at the first step actually run, which a resume moves on
            live = open_live(layout.reports / "train_tokenizer", step)
        for k, v in logs.items():
            live.log_metric(f"train/{k}", v)
        live.next_step()

    result = train_tokenizer(model, loss_fn, data, cfg, layout.root / CHECKPOINTS, device,
                             on_log=log, run_config=run_config)
    if live is not None:
        live.end()
    get_run_logger().info("trained %d steps (resumed from step %d)", result.steps_run,
                          result.resumed_from)
    return result.ema.copy_to(model).eval(), result.steps_run


@task(cache_policy=NO_CACHE)
def validate(params: Params, layout: Layout, model: Tokenizer, device: torch.device) -> dict:
    """Val metrics of the EMA model: reconstruction PSNR, codebook usage and perplexity."""
    images = SplitImages(layout.prepared, "val")
    feats = _features(layout, images, params, "val")
    bs = params.train_tokenizer.batch_size
    orig, recon, ids = reconstruct(model, images, feats, bs, device)
    usage, perplexity = codebook_usage(ids, params.tokenizer.codebook_size)
    mse = float(np.mean((orig.astype(np.float64) - recon.astype(np.float64)) ** 2) / 255.0**2)
    per_class = [np.flatnonzero(images.labels.numpy() == c)[:2] for c in np.unique(images.labels)]
    pick = np.concatenate(per_class)[:20]
    picture = grids.grid([orig[pick], recon[pick]], scale=2)
    grids.save_png(layout.reports / "tokenizer_recon.png", picture)
    return {
        "val_psnr": round(batch_psnr(orig, recon, data_range=255), 3),
        "val_mse": round(mse, 6),
        "val_codebook_usage": round(usage, 4),
        "val_perplexity": round(perplexity, 2),
        "val_images": len(images),
    }


@flow(name="train_tokenizer")
def train_tokenizer_flow(params_file: str = "params.yaml", root: str = ".") -> dict:
    params = load_params(params_file)
    layout = Layout(Path(root))
    device = distributed.init_from_env(params.train_tokenizer.device)  # torchrun: this rank's GPU
    torch.manual_seed(params.train_tokenizer.seed)
    backbone = build_backbone(params.backbone)
    model = build_tokenizer(params.tokenizer, backbone if params.tokenizer.kind == "vfmtok" else None)
    loss_fn = TokenizerLoss(params.train_tokenizer.loss, backbone)
    model, loss_fn = model.to(device), loss_fn.to(device)

    start = time.perf_counter()
    ema_model, steps_run = fit(params, layout, model, loss_fn, device)
    seconds = time.perf_counter() - start
    if not distributed.is_main():  # every rank holds the same EMA weights: rank 0 writes
        return {}
    digest = save_tokenizer(layout.root / "data" / "tokenizer", ema_model, params)
    report = validate(params, layout, ema_model, device)
    n_trainable = sum(p.numel() for p in ema_model.parameters() if p.requires_grad)
    cfg = params.train_tokenizer
    report.update(kind=params.tokenizer.kind, tokens_per_image=params.tokenizer.n_tokens,
                  trainable_params=n_trainable, train_seconds=round(seconds, 1),
                  train_images_per_s=round(steps_run * cfg.batch_size / max(seconds, 1e-9), 1),
                  weights_sha256=digest[:16])  # fmt: skip
    artifacts.write_json(layout.reports / "train_tokenizer.json", report)
    get_run_logger().info("tokenizer val PSNR %.2f dB, codebook usage %.1f%%", report["val_psnr"],
                          100 * report["val_codebook_usage"])
    return report
