"""Stage ``train_tokenizer``: train VFMTok (or the pixel-only VQGAN baseline) and keep its EMA.

Reads ``backbone``, ``tokenizer``, ``train_tokenizer``, ``data/prepared`` and ``data/features``;
writes ``data/tokenizer`` (the EMA model's ``save_pretrained`` folder, used by every later stage),
``reports/train_tokenizer.json`` (val PSNR, MSE, codebook usage, perplexity),
``reports/train_tokenizer/`` (DVCLive per-step curves) and ``reports/tokenizer_recon.png``.
Checkpoints go to ``data/checkpoints/tokenizer`` (kept across runs by DVC: ``persist``), so a
killed run resumes where its last checkpoint left off.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import retry_unless_user_error
from pipeline.evaluation.reconstruction import reconstruct
from pipeline.formats import features
from pipeline.formats.prepared import SplitImages
from pipeline.layout import Layout
from pipeline.orchestration.lazy_prefect import flow, get_run_logger, task
from pipeline.params import Params, launch_world_size, load_params
from pipeline.reporting import grids
from pipeline.reporting.live import curve_every, log_step, open_live
from pipeline.reporting.progress import Progress
from pipeline.training_inputs.image_batches import TokenizerTrainData
from vfmtok import distributed, files
from vfmtok.backbones import build_backbone
from vfmtok.config_schema import result_dict
from vfmtok.losses import TokenizerLoss
from vfmtok.metrics import batch_psnr, codebook_usage
from vfmtok.tokenizer import Tokenizer, build_tokenizer
from vfmtok.tokenizer_training import train_tokenizer
from vfmtok.training import num_params

STAGE = "train_tokenizer"


@dataclass
class Trained:
    model: Tokenizer  # the EMA weights, eval mode
    steps_run: int
    seconds: float


def _split_features(params: Params, layout: Layout, images: SplitImages) -> features.SplitFeatures | None:
    return features.for_split(layout.features, images, params.tokenizer.kind, params.extract_features.splits)


@task(retries=1, retry_delay_seconds=2, retry_condition_fn=retry_unless_user_error)
def fit(params: Params, layout: Layout, device: torch.device) -> Trained:
    """Build the model, loss and optimizer here, from the seed or the last checkpoint, so that a
    retried attempt starts exactly where an uninterrupted run would be, then train."""
    cfg = params.train_tokenizer
    images = SplitImages(layout.prepared, "train")
    data = TokenizerTrainData(images, None if cfg.augment else _split_features(params, layout, images),
                              cfg.augment)
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(params.backbone)
    model = build_tokenizer(params.tokenizer, backbone if params.tokenizer.kind == "vfmtok" else None)
    loss_fn = TokenizerLoss(cfg.loss, backbone)
    model, loss_fn = model.to(device), loss_fn.to(device)
    run_config = {k: result_dict(getattr(params, k)) for k in ("prepare", "backbone", "tokenizer", STAGE)}
    live, progress, every = None, None, curve_every(cfg.steps)

    def log(step: int, logs: dict[str, float]) -> None:
        nonlocal live, progress
        if live is None:  # opened at the first step actually run, which a resume moves on
            live = open_live(layout.live(STAGE), step)
            progress = Progress(STAGE, cfg.steps, start=step)
        progress.update(step, logs)
        if step % every == 0 or step == cfg.steps - 1:
            log_step(live, step, {f"train/{k}": v for k, v in logs.items()})

    start = time.perf_counter()
    result = train_tokenizer(model, loss_fn, data, cfg, layout.checkpoints("tokenizer"), device,
                             on_log=log, run_config=run_config)
    if live is not None:
        live.end()
        progress.close()
    get_run_logger().info("trained %d steps (resumed from step %d)", result.steps_run, result.resumed_from)
    return Trained(result.ema.copy_to(model).eval(), result.steps_run, time.perf_counter() - start)


@task()
def validate(params: Params, layout: Layout, model: Tokenizer, device: torch.device) -> dict:
    """Val metrics of the EMA model (reconstruction PSNR, codebook usage, perplexity) and the
    picture of originals above their reconstructions."""
    images = SplitImages(layout.prepared, "val")
    orig, recon, ids = reconstruct(model, images, _split_features(params, layout, images),
                                   params.train_tokenizer.batch_size, device)
    usage, perplexity = codebook_usage(ids, params.tokenizer.codebook_size)
    mse = float(np.mean((orig.astype(np.float64) - recon.astype(np.float64)) ** 2) / 255.0**2)
    per_class = [np.flatnonzero(images.labels == c)[:2] for c in np.unique(images.labels)]
    pick = np.concatenate(per_class)[:20]
    grids.save_png(layout.picture("tokenizer_recon"), grids.grid([orig[pick], recon[pick]], scale=2))
    return {
        "val_psnr": round(batch_psnr(orig, recon, data_range=255), 3),
        "val_mse": round(mse, 6),
        "val_codebook_usage": round(usage, 4),
        "val_perplexity": round(perplexity, 2),
        "val_images": len(images),
    }


@flow(name=STAGE)
def train_tokenizer_flow(params_file: str = "params.yaml", root: str = ".") -> dict:
    params = load_params(params_file)
    params.check_launch(launch_world_size(), ("train_tokenizer",))  # before joining the process group
    layout, cfg = Layout(Path(root)), params.train_tokenizer
    device = distributed.init_from_env(cfg.device)  # torchrun: this rank's GPU
    trained = fit(params, layout, device)
    if not distributed.is_main():  # every rank holds the same EMA weights: rank 0 writes
        return {}
    digest = trained.model.save_pretrained(layout.tokenizer)
    report = validate(params, layout, trained.model, device)
    images_per_s = trained.steps_run * cfg.batch_size / max(trained.seconds, 1e-9)
    report.update(kind=params.tokenizer.kind, tokens_per_image=params.tokenizer.n_tokens,
                  trainable_params=num_params(trained.model), train_seconds=round(trained.seconds, 1),
                  train_images_per_s=round(images_per_s, 1), weights_sha256=digest[:16])
    files.write_json(layout.report(STAGE), report)
    get_run_logger().info("tokenizer val PSNR %.2f dB, codebook usage %.1f%%", report["val_psnr"],
                          100 * report["val_codebook_usage"])
    return report
