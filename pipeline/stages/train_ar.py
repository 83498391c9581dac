"""Stage ``train_ar``: the class-conditional GPT over the tokenizer's Parquet tokens.

Reads ``ar_model``, ``train_ar``, ``tokenizer.codebook_size``, ``tokenizer.n_tokens``,
``data/tokens`` and ``data/prepared/classes.json``; writes ``data/gpt`` (the model's
``save_pretrained`` folder), ``reports/train_ar.json`` (final val loss, steps to val-loss
thresholds, tokens/s) and ``reports/train_ar/`` (DVCLive curves: per-step train loss, periodic
val loss). Checkpoints: ``data/checkpoints/gpt`` (persisted). Both token files are validated
before the first step, so a bad file stops the stage before anything is written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipeline.errors import retry_unless_user_error
from pipeline.formats import prepared, tokens
from pipeline.layout import Layout
from pipeline.params import Params, load_params
from pipeline.reporting.live import open_live
from pipeline.reporting.progress import Progress
from pipeline.token_stream import TokenStream, iter_batches
from vfmtok import distributed, files
from vfmtok.gpt import GPT
from vfmtok.train_ar import train_ar, val_loss
from vfmtok.training import num_params, steps_to_reach
from vfmtok.typed import result_dict

STAGE = "train_ar"


@dataclass
class Trained:
    model: GPT  # trained in place (sharded under FSDP2)
    steps_run: int
    val_curve: list[tuple[int, float]]
    seconds: float


def rank_stream(train: tokens.TokenFile, global_batch: int, seed: int) -> TokenStream | distributed.RankSlice:
    """This rank's share of each step's global batch: disjoint row groups per rank when there are
    enough (each rank reads only its own), else every rank's slice of the one-process stream."""
    rank, world = distributed.rank(), distributed.world()
    if world == 1:
        return TokenStream(train, global_batch, seed)
    if train.num_row_groups >= world:
        return TokenStream(train, distributed.per_rank_batch(global_batch), seed, rank, world)
    return distributed.RankSlice(TokenStream(train, global_batch, seed))


def token_files(params: Params, layout: Layout) -> tuple[tokens.TokenFile, tokens.TokenFile]:
    """Both token files, every id checked against the codebook before any step."""
    train, val = (tokens.TokenFile(tokens.split_file(layout.tokens, s)) for s in ("train", "val"))
    for f in (train, val):
        if f.codebook_size != params.tokenizer.codebook_size:
            raise tokens.TokenFileError(f"{f.path}: codebook size {f.codebook_size} does not match "
                                        f"tokenizer.codebook_size {params.tokenizer.codebook_size}")
        f.validate()
    return train, val


@task(retries=1, retry_delay_seconds=2, retry_condition_fn=retry_unless_user_error, cache_policy=NO_CACHE)
def fit(params: Params, layout: Layout, device: torch.device) -> Trained:
    """Build the GPT here, from the seed or the last checkpoint, so that a retried attempt starts
    exactly where an uninterrupted run would be, then train."""
    cfg = params.train_ar
    train, val = token_files(params, layout)
    num_classes = len(prepared.read_classes(layout.prepared))
    torch.manual_seed(cfg.seed)
    gpt_cfg = params.ar_model.gpt_config(params.tokenizer.codebook_size, params.tokenizer.n_tokens,
                                         num_classes)
    model = GPT(gpt_cfg).to(device)
    run_config = {k: result_dict(getattr(params, k)) for k in ("tokenizer", "ar_model", STAGE)}
    run_config["tokens_sha256"] = train.meta.get("tokenizer_sha256")
    live, val_curve, progress = None, [], None

    def log(step: int, logs: dict[str, float]) -> None:
        nonlocal live, progress
        if live is None:
            live = open_live(layout.live(STAGE), step)
            progress = Progress(STAGE, cfg.steps, start=step)
        progress.update(step, logs)
        live.log_metric("train/loss", logs["loss"])
        live.log_metric("train/lr", logs["lr"])
        if "val_loss" in logs:
            live.log_metric("val/loss", logs["val_loss"])
            val_curve.append((step + 1, logs["val_loss"]))
        live.next_step()

    start = time.perf_counter()
    steps_run = train_ar(model, rank_stream(train, cfg.batch_size, cfg.seed), cfg,
                         layout.checkpoints("gpt"), device,
                         val_batches=lambda: iter_batches(val, cfg.batch_size, cfg.val_rows),
                         on_log=log, run_config=run_config)
    if live is not None:
        live.end()
        progress.close()
    return Trained(model, steps_run, val_curve, time.perf_counter() - start)


@flow(name=STAGE)
def train_ar_flow(params_file: str = "params.yaml", root: str = ".") -> dict:
    params = load_params(params_file)
    layout, cfg = Layout(Path(root)), params.train_ar
    device = distributed.init_from_env(cfg.device)  # torchrun: this rank's GPU (or gloo on CPU)
    trained = fit(params, layout, device)
    model = trained.model
    state = {k: v.contiguous() for k, v in distributed.model_state(model).items()}  # gathers FSDP
    val = tokens.TokenFile(tokens.split_file(layout.tokens, "val"))
    final_val = val_loss(model, iter_batches(val, cfg.batch_size, cfg.val_rows), device)  # all ranks
    if not distributed.is_main():
        return {}
    model.save_pretrained(layout.gpt, name=params.ar_model.model, state=state)
    tokens_per_step = cfg.batch_size * params.tokenizer.n_tokens
    report = {
        "val_loss": round(final_val, 4),
        "steps": cfg.steps,
        "params": num_params(model),
        "train_seconds": round(trained.seconds, 1),
        "train_tokens_per_s": round(trained.steps_run * tokens_per_step / max(trained.seconds, 1e-9), 1),
        "val_curve": [[s, round(v, 4)] for s, v in trained.val_curve],
    }
    for t in cfg.report_thresholds:
        report[f"steps_to_val_loss_{t}"] = steps_to_reach(trained.val_curve, t)
    files.write_json(layout.report(STAGE), report)
    get_run_logger().info("GPT val loss %.4f after %d steps", final_val, cfg.steps)
    return report
