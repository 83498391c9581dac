"""Stage ``train_ar``: the class-conditional generator (``ar_model.model``: a raster GPT or RAR,
trained in RAR's annealed random orders) over the tokenizer's Parquet tokens.

Reads ``ar_model``, ``train_ar``, ``judge``, ``tokenizer``, ``data/tokens``, ``data/tokenizer`` and
``data/prepared``; writes ``data/generator`` (the model's ``save_pretrained`` folder),
``reports/train_ar.json`` (final val loss, the sample-quality curve: FD and class accuracy of a
fixed sample set judged every ``quality_every`` steps, steps to val-loss thresholds, tokens/s)
and ``reports/train_ar/`` (DVCLive curves). Checkpoints: ``data/checkpoints/generator`` (persisted).
Both token files are validated before the first step, so a bad file stops the stage before
anything is written.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.errors import retry_unless_user_error
from pipeline.evaluation.sample_quality import SampleQuality
from pipeline.formats import prepared, tokens
from pipeline.formats.prepared import SplitImages
from pipeline.layout import Layout
from pipeline.models.trained import load_tokenizer
from pipeline.orchestration.lazy_prefect import flow, get_run_logger, task
from pipeline.params import Params, launch_world_size, load_params
from pipeline.reporting.live import curve_every, log_step, open_live, read_curve
from pipeline.reporting.progress import Progress
from pipeline.training_inputs.token_stream import TokenStream, iter_batches
from vfmtok import distributed, files, zoo
from vfmtok.backbones import build_backbone
from vfmtok.config_schema import result_dict
from vfmtok.generator_training import train_ar, val_loss
from vfmtok.training import num_params, steps_to_reach

STAGE = "train_ar"


@dataclass
class FitResult:
    """What :func:`fit` hands the flow: the model it trained in place (sharded under FSDP2)."""

    model: zoo.Generator
    steps_run: int
    seconds: float


def checkpoint_dir(layout: Layout) -> Path:
    """``data/checkpoints/generator``; a resume state left under the folder's earlier name
    (``data/checkpoints/gpt``) is moved there first, so an interrupted run still resumes."""
    folder = layout.checkpoints("generator")
    legacy = layout.checkpoints("gpt")
    if legacy.is_dir() and not folder.exists() and distributed.is_main():
        os.replace(legacy, folder)
        print(f"moved {legacy} to {folder}")
    distributed.barrier()
    return folder


def rank_stream(train: tokens.TokenFile, global_batch: int, seed: int) -> TokenStream | distributed.RankSlice:
    """This rank's share of each step's global batch: its contiguous rows of the one-process
    stream's batch, so the run trains on the same batches whatever the number of processes (with
    dropout off, the same weights to rounding). Every rank reads every row group for that: a
    global batch of token rows is kilobytes (256 x 256 int16 = 128 KiB), nothing beside a step."""
    if distributed.world() == 1:
        return TokenStream(train, global_batch, seed)
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


@task(retries=1, retry_delay_seconds=2, retry_condition_fn=retry_unless_user_error)
def fit(params: Params, layout: Layout, device: torch.device) -> FitResult:
    """Build the generator here, from the seed or the last checkpoint, so that a retried attempt starts
    exactly where an uninterrupted run would be, then train."""
    cfg = params.train_ar
    train, val = token_files(params, layout)
    num_classes = len(prepared.read_classes(layout.prepared))
    torch.manual_seed(cfg.seed)
    model_cfg = params.ar_model.model_config(params.tokenizer.codebook_size, params.tokenizer.n_tokens,
                                             num_classes)
    model = zoo.build_from_config(model_cfg).to(device)
    run_config = {k: result_dict(getattr(params, k)) for k in ("tokenizer", "ar_model", "judge", STAGE)}
    run_config["tokens_sha256"] = train.meta.get("tokenizer_sha256")
    live, progress, every = None, None, curve_every(cfg.steps)

    def log(step: int, logs: dict[str, float]) -> None:
        nonlocal live, progress
        if live is None:
            live = open_live(layout.live(STAGE), step)
            progress = Progress(STAGE, cfg.steps, start=step)
        progress.update(step, logs)
        point = {"train/loss": logs["loss"], "train/lr": logs["lr"]}
        if "val_loss" in logs:
            point["val/loss"] = logs["val_loss"]
        point |= {key: logs[key] for key in ("quality/fd", "quality/class_acc") if key in logs}
        if step % every == 0 or step == cfg.steps - 1 or len(point) > 2:
            log_step(live, step, point)

    start = time.perf_counter()
    steps_run = train_ar(model, rank_stream(train, cfg.batch_size, cfg.seed), cfg,
                         checkpoint_dir(layout), device,
                         val_batches=lambda: iter_batches(val, cfg.batch_size, cfg.val_rows),
                         on_log=log, run_config=run_config, step_fn=model.step_fn(cfg),
                         quality=_quality(params, layout, device))
    if live is not None:
        live.end()
        progress.close()
    return FitResult(model, steps_run, time.perf_counter() - start)


def _quality(params: Params, layout: Layout, device: torch.device) -> SampleQuality | None:
    """The sample-quality judge of ``train_ar.quality_every`` (None when off)."""
    cfg = params.train_ar
    if not cfg.quality_every:
        return None
    tokenizer, _ = load_tokenizer(layout, params, device)
    judge = build_backbone(params.judge).to(device)
    classes = prepared.read_classes(layout.prepared)
    return SampleQuality(tokenizer, judge, SplitImages(layout.prepared, "train"),
                         SplitImages(layout.prepared, "val"), len(classes), cfg.quality_per_class,
                         cfg.quality_probe_train, cfg.seed, params.sample.batch_size, device)


@flow(name=STAGE)
def train_ar_flow(params_file: str = "params.yaml", root: str = ".") -> dict:
    params = load_params(params_file)
    params.check_launch(launch_world_size(), ("train_ar",))  # before joining the process group
    layout, cfg = Layout(Path(root)), params.train_ar
    device = distributed.init_from_env(cfg.device)  # torchrun: this rank's GPU (or gloo on CPU)
    trained = fit(params, layout, device)
    model = trained.model
    state = {k: v.contiguous() for k, v in distributed.model_state(model).items()}  # gathers FSDP
    val = tokens.TokenFile(tokens.split_file(layout.tokens, "val"))
    final_val = val_loss(model, iter_batches(val, cfg.batch_size, cfg.val_rows), device)  # all ranks
    if not distributed.is_main():
        return {}
    model.save_pretrained(layout.generator, name=params.ar_model.model, state=state)
    tokens_per_step = cfg.batch_size * params.tokenizer.n_tokens
    val_curve = read_curve(layout.live(STAGE), "val/loss")
    report = {
        "val_loss": round(final_val, 4),
        "steps": cfg.steps,
        "params": num_params(model),
        "train_seconds": round(trained.seconds, 1),
        "train_tokens_per_s": round(trained.steps_run * tokens_per_step / max(trained.seconds, 1e-9), 1),
        "val_curve": [[s, round(v, 4)] for s, v in val_curve],
    }
    if cfg.quality_every:  # sample quality against steps: how the paper plots AR convergence
        fd_curve = read_curve(layout.live(STAGE), "quality/fd")
        acc_curve = dict(read_curve(layout.live(STAGE), "quality/class_acc"))
        report["quality_curve"] = [[s, v, acc_curve.get(s)] for s, v in fd_curve]  # step, FD, class acc
        report["quality_fd"], report["quality_class_acc"] = fd_curve[-1][1], acc_curve.get(fd_curve[-1][0])
    for t in cfg.report_thresholds:
        report[f"steps_to_val_loss_{t}"] = steps_to_reach(val_curve, t)
    files.write_json(layout.report(STAGE), report)
    get_run_logger().info("%s val loss %.4f after %d steps", params.ar_model.model, final_val, cfg.steps)
    return report
