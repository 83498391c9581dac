"""Stage ``train_ar``: the class-conditional GPT over the tokenizer's Parquet tokens.

Reads ``ar_model``, ``train_ar``, ``data/tokens`` and ``data/prepared/classes.json``; writes
``data/gpt/{model.safetensors, config.json}``, ``reports/train_ar.json`` (final train and val
loss, steps to reach val-loss thresholds, tokens/s) and ``reports/train_ar/`` (DVCLive curves:
per-step train loss, periodic val loss). Checkpoints: ``data/checkpoints/gpt`` (persisted).
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from safetensors.torch import save_file

from pipeline import artifacts, shards
from pipeline.artifacts import Layout
from pipeline.config import to_dict
from pipeline.live import open_live
from pipeline.params import Params, load_params
from pipeline.token_stream import TokenStream, iter_batches
from pipeline.tokens import TokenFile
from vfmtok import distributed
from vfmtok.gpt import GPT, build_gpt, num_params
from vfmtok.train_ar import train_ar

CHECKPOINTS = Path("data") / "checkpoints" / "gpt"


def build_ar_model(params: Params, num_classes: int) -> GPT:
    """The GPT that params describe, sized to the tokenizer's codebook and token count."""
    m = params.ar_model
    return build_gpt(m.model, vocab_size=params.tokenizer.codebook_size,
                     n_tokens=params.tokenizer.n_tokens, num_classes=num_classes,
                     class_dropout=m.class_dropout, token_dropout=m.token_dropout,
                     resid_dropout=m.resid_dropout, attn_dropout=m.attn_dropout)


@task(retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def fit(params: Params, layout: Layout, model: GPT, device) -> tuple[int, list[tuple[int, float]]]:
    cfg = params.train_ar
    train = TokenFile(layout.tokens / "train.parquet")
    val = TokenFile(layout.tokens / "val.parquet")
    if train.codebook_size != params.tokenizer.codebook_size:
        raise ValueError(f"{train.path}: codebook size {train.codebook_size} does not match "
                         f"tokenizer.codebook_size {params.tokenizer.codebook_size}")
    train.validate()  # every id checked before any step: nothing trains on a bad file
    val.validate()
    stream = rank_stream(train, cfg.batch_size, cfg.seed)
    run_config = {k: to_dict(getattr(params, k)) for k in ("tokenizer", "ar_model", "train_ar")}
    for key in ("device", "compile", "parallel"):  # where and how it runs, not what it learns
        run_config["train_ar"].pop(key)
    run_config["tokens_sha256"] = train.meta.get("tokenizer_sha256")
    live, val_curve = None, []

    def log(step: int, logs: dict[str, float]) -> None:
        nonlocal live
        if live is None:
            live = open_live(layout.reports / "train_ar", step)
        live.log_metric("train/loss", logs["loss"])
        live.log_metric("train/lr", logs["lr"])
        if "val_loss" in logs:
            live.log_metric("val/loss", logs["val_loss"])
            val_curve.append((step + 1, logs["val_loss"]))
        live.next_step()

    steps_run = train_ar(model, stream, cfg, layout.root / CHECKPOINTS, device,
                         val_batches=lambda: iter_batches(val, cfg.batch_size, cfg.val_rows),
                         on_log=log, run_config=run_config)
    if live is not None:
        live.end()
    return steps_run, val_curve


def rank_stream(train: TokenFile, global_batch: int, seed: int) -> TokenStream | distributed.RankSlice:
    """This rank's share of each step's global batch: disjoint row groups per rank when there are
    enough (each rank reads only its own), else every rank's slice of the one-process stream."""
    rank, world = distributed.rank(), distributed.world()
    if world == 1:
        return TokenStream(train, global_batch, seed)
    if train.num_row_groups >= world:
        return TokenStream(train, distributed.per_rank_batch(global_batch), seed, rank, world)
    return distributed.RankSlice(TokenStream(train, global_batch, seed))


def _steps_to_reach(curve: list[tuple[int, float]], threshold: float) -> int | None:
    return next((step for step, loss in curve if loss <= threshold), None)


@flow(name="train_ar")
def train_ar_flow(params_file: str = "params.yaml", root: str = ".") -> dict:
    params = load_params(params_file)
    layout, cfg = Layout(Path(root)), params.train_ar
    device = distributed.init_from_env(cfg.device)  # torchrun: this rank's GPU (or gloo on CPU)
    num_classes = len(shards.read_classes(layout.prepared))
    import torch

    torch.manual_seed(cfg.seed)
    model = build_ar_model(params, num_classes).to(device)
    start = time.perf_counter()
    steps_run, val_curve = fit(params, layout, model, device)
    seconds = time.perf_counter() - start

    out = layout.gpt
    state = {k: v.contiguous() for k, v in distributed.model_state(model).items()}  # gathers FSDP
    val = TokenFile(layout.tokens / "val.parquet")
    from vfmtok.train_ar import val_loss

    final_val = val_loss(model, iter_batches(val, cfg.batch_size, cfg.val_rows), device)  # all ranks
    if not distributed.is_main():
        return {}
    artifacts.write_with(out / "model.safetensors", lambda tmp: save_file(state, str(tmp)))
    artifacts.write_json(out / "config.json", {
        "ar_model": to_dict(params.ar_model), "num_classes": num_classes,
        "vocab_size": params.tokenizer.codebook_size, "n_tokens": params.tokenizer.n_tokens,
        "weights_sha256": artifacts.sha256_file(out / "model.safetensors"),
    })  # fmt: skip
    tokens_per_step = cfg.batch_size * params.tokenizer.n_tokens
    report = {
        "val_loss": round(final_val, 4),
        "steps": cfg.steps,
        "params": num_params(model),
        "train_seconds": round(seconds, 1),
        "train_tokens_per_s": round(steps_run * tokens_per_step / max(seconds, 1e-9), 1),
        "val_curve": [[s, round(v, 4)] for s, v in val_curve],
    }
    for t in cfg.report_thresholds:
        report[f"steps_to_val_loss_{t}"] = _steps_to_reach(val_curve, t)
    artifacts.write_json(layout.reports / "train_ar.json", report)
    get_run_logger().info("GPT val loss %.4f after %d steps", final_val, cfg.steps)
    return report
