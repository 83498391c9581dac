"""Data-parallel training: 2 processes on gloo (launched by torchrun) match 1 process on the same
global batch, with DDP and FSDP2, and checkpoints move between 1- and 2-process runs.

The 2-process half runs this file as a script under ``torchrun --standalone --nproc_per_node 2``
(the real launcher and its environment variables); the 1-process references run in the pytest
process meanwhile. Dropout is off so that both see the same computation, not just the same data.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.formats.tokens import TokenFile
from pipeline.training_inputs.token_stream import TokenStream
from tests.helpers import CachedImages, tiny_tokenizer_config, write_token_file
from vfmtok import distributed as D
from vfmtok import zoo
from vfmtok.backbones import build_backbone
from vfmtok.checkpoint import CHECKPOINT_NAME, load_checkpoint
from vfmtok.config import ARTrainConfig, BackboneConfig, LossConfig, TokenizerTrainConfig
from vfmtok.generator_training import train_ar
from vfmtok.losses import TokenizerLoss
from vfmtok.tokenizer import build_tokenizer
from vfmtok.tokenizer_training import train_tokenizer

CPU = torch.device("cpu")
GLOBAL_BATCH, WORLD = 8, 2
AR_RUN = {"what": "tiny GPT, 4 steps"}
TOKENIZER_DISC_LR = 1e-4  # same run_config for the 2- and 4-step runs: resumable


# ----------------------------------------------------------------------------- shared setup


def token_file(path: Path) -> TokenFile:
    """40 rows in 5 row groups of 8: rank 0 streams groups 0, 2, 4 and rank 1 groups 1, 3."""
    return TokenFile(path) if path.exists() else write_token_file(path)


class GlobalStream:
    """The global batch of the 2-rank run, for one process: rank 0's rows, then rank 1's.

    ``shuffle``: the same rows in another order each step. The loss is a mean over rows and the
    gradients are sums over rows, so a shuffled run computes the same function as the plain one and
    differs from it only by float summation order, exactly the difference a data-parallel run
    makes: how far the two drift apart measures, on this machine and in this run, what rounding
    alone does to 4 Adam steps (:func:`rounding_drift`)."""

    def __init__(self, file: TokenFile, shuffle: int | None = None):
        self.ranks = [TokenStream(file, GLOBAL_BATCH // WORLD, 0, r, WORLD) for r in range(WORLD)]
        self.shuffle = shuffle

    def batch(self, step):
        parts = [s.batch(step) for s in self.ranks]
        tokens, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        if self.shuffle is not None:
            order = torch.randperm(len(tokens), generator=torch.Generator().manual_seed(self.shuffle + step))
            tokens, labels = tokens[order], labels[order]
        return tokens, labels


def ar_run(ckpt: Path, data, steps: int, parallel: str = "auto") -> tuple[list[float], torch.nn.Module]:
    torch.manual_seed(0)
    model = zoo.build("GPT-Tiny", vocab_size=64, n_tokens=16, num_classes=4, class_dropout=0.0,
                      token_dropout=0.0, resid_dropout=0.0)
    cfg = ARTrainConfig(steps=steps, batch_size=GLOBAL_BATCH, lr=1e-3, warmup_steps=1,
                        checkpoint_every=2, parallel=parallel)
    losses: list[float] = []
    train_ar(model, data, cfg, ckpt, CPU, on_log=lambda s, logs: losses.append(logs["loss"]),
             run_config=AR_RUN)
    return losses, model


def tokenizer_run(ckpt: Path) -> tuple[list[dict], torch.nn.Module, TokenizerLoss, dict]:
    """3 steps; returns the logs, the model, the loss and the discriminator's initial weights."""
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(kind="efficientnet_lite0", image_size=32, weights="random",
                                             allow_random_init=True))
    # BatchNorm statistics are per rank on CPU (torch's SyncBatchNorm is CUDA-only): off here.
    model = build_tokenizer(tiny_tokenizer_config(quant_batchnorm=False), backbone)
    # the GAN (hand-averaged D grads) from step 1 of 3
    loss_cfg = LossConfig(gan_start=0.3, gan_weight=0.1, disc_lr=TOKENIZER_DISC_LR)
    loss = TokenizerLoss(loss_cfg, backbone)
    cfg = TokenizerTrainConfig(steps=3, batch_size=GLOBAL_BATCH, lr=1e-3, checkpoint_every=3,
                               ema_decay=0.9, loss=loss_cfg)
    logs: list[dict] = []
    disc_init = {k: v.clone() for k, v in loss.state_dict().items()}
    train_tokenizer(model, loss, CachedImages(backbone, n=16), cfg, ckpt, CPU,
                    on_log=lambda s, l: logs.append(l))
    return logs, model, loss, disc_init


# ----------------------------------------------------------------------------- the 2-process half


def worker(out: Path) -> None:
    """Runs on each of the 2 ranks under torchrun."""
    device = D.init_from_env("cpu")
    rank = D.rank()
    assert D.world() == WORLD and device == CPU
    f = token_file(out / "t.parquet")
    stream = TokenStream(f, D.per_rank_batch(GLOBAL_BATCH), 0, rank, WORLD)
    result = {"rank": rank}
    result["ddp"], ddp_model = ar_run(out / "ar_ddp", stream, 4, "ddp")
    result["ddp_is_sharded"] = D.is_sharded(ddp_model)
    result["fsdp"], fsdp_model = ar_run(out / "ar_fsdp", stream, 4, "fsdp")
    result["fsdp_is_sharded"] = D.is_sharded(fsdp_model)
    ar_run(out / "ar_ddp_half", stream, 2, "ddp")  # resumed by one process in the test
    result["resumed"], _ = ar_run(out / "ar_resume_fsdp", stream, 4, "fsdp")  # a 1-process ckpt
    logs, model, loss, _ = tokenizer_run(out / "tok_ddp")
    result.update(tokenizer=logs, tok_digest=digest(model.state_dict()),
                  disc_digest=digest(loss.state_dict()))
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    D.shutdown()


def launch(out: Path) -> subprocess.Popen:
    repo = str(Path(__file__).resolve().parents[1])  # the script imports tests.helpers
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           __file__, str(out)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# How far a result may stray from the 1-process reference, in units of the drift that summation
# order alone causes (:func:`rounding_drift`, measured in the same run). Rounding differences grow
# through 4 Adam steps in ways that depend on the CPU's kernels (Adam's m / sqrt(v) turns a
# rounding-level change of a near-zero gradient into a change of up to lr), so no fixed atol holds
# on every machine; a data-parallel run and a reordered one are two draws of the same kind of
# rounding, and their largest deviations over thousands of elements agree to within a small factor.
DRIFT_FACTOR = 8.0
# The floor of the tolerance, should a reordered run happen to round like the reference: 64 fp32
# ulps of the compared value's magnitude (eps = 2**-23 relative; sums of <= 1024 terms in pairwise
# or blocked order round to within log2(1024) = 10 ulps per sum, and 4 steps compound a few sums).
ULPS = 64 * 2.0**-23


def rounding_drift(tmp: Path, f: TokenFile, ref_losses: list[float], ref_state: dict) -> tuple[float, float]:
    """(loss drift, weight drift): the largest deviation from the reference of two runs on
    reordered global batches (:class:`GlobalStream` ``shuffle``), losses and weights."""
    loss_drift, weight_drift = 0.0, 0.0
    for shuffle in (1, 2):
        losses, model = ar_run(tmp / f"ar_shuffled{shuffle}", GlobalStream(f, shuffle), 4)
        loss_drift = max(loss_drift, float(np.abs(np.subtract(losses, ref_losses)).max()))
        state = model.state_dict()
        weight_drift = max(weight_drift, max(float((state[k] - v).abs().max()) for k, v in ref_state.items()))
    return loss_drift, weight_drift


def tolerance(drift: float, magnitude: float) -> float:
    return DRIFT_FACTOR * drift + ULPS * max(1.0, magnitude)


def assert_same_weights(a: dict, b: dict, drift: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        atol = tolerance(drift, float(b[k].abs().max()))
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


def digest(state: dict) -> str:
    return hashlib.sha256(b"".join(v.numpy().tobytes() for v in state.values())).hexdigest()


def weights(ckpt: Path) -> dict:
    return load_checkpoint(ckpt / CHECKPOINT_NAME)["model"]


# ----------------------------------------------------------------------------- the test


@pytest.mark.slow
def test_two_process_gloo_matches_one_process(tmp_path, one_thread):
    f = token_file(tmp_path / "t.parquet")
    ar_run(tmp_path / "ar_resume_fsdp", GlobalStream(f), 2)  # a 1-process checkpoint at step 2
    proc = launch(tmp_path)
    try:  # the 1-process references, while the 2 ranks run
        ref_losses, ref_model = ar_run(tmp_path / "ar_ref", GlobalStream(f), 4)
        ref_state = {k: v.clone() for k, v in ref_model.state_dict().items()}
        loss_drift, weight_drift = rounding_drift(tmp_path, f, ref_losses, ref_state)
        ref_tok, _, _, disc_init = tokenizer_run(tmp_path / "tok_ref")
        log, _ = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, log
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))

    # Same global batch -> same per-step (rank-averaged) loss, on both ranks, DDP and FSDP2 alike,
    # to within what summation order alone does here (the reordered runs' drift).
    assert len(ref_losses) == 4 and len(set(ref_losses)) == 4  # it trains: every step differs
    loss_tol = tolerance(loss_drift, max(map(abs, ref_losses)))
    assert loss_tol < 1e-3, (loss_drift, "rounding alone must not move a loss this much")
    for key in ("ddp", "fsdp"):
        np.testing.assert_allclose(r0[key], ref_losses, rtol=0, atol=loss_tol, err_msg=key)
    assert r1["ddp"] == r1["fsdp"] == []  # on_log runs on rank 0 only
    assert (r0["ddp_is_sharded"], r0["fsdp_is_sharded"]) == (False, True)
    for run in ("ar_ddp", "ar_fsdp"):  # rank 0's checkpoint: full, un-prefixed, same weights
        assert_same_weights(weights(tmp_path / run), ref_state, weight_drift)

    # Checkpoints cross over: 1 process -> 2 ranks with FSDP2 (optimizer state sharded on load) ...
    np.testing.assert_allclose(r0["resumed"], ref_losses[2:], rtol=0, atol=loss_tol)
    assert_same_weights(weights(tmp_path / "ar_resume_fsdp"), ref_state, weight_drift)
    # ... and 2 ranks (DDP, stopped at step 2) -> 1 process.
    ckpt = load_checkpoint(tmp_path / "ar_ddp_half" / CHECKPOINT_NAME)
    assert ckpt["step"] == 2 and len(ckpt["rng_ranks"]) == WORLD
    resumed, model = ar_run(tmp_path / "ar_ddp_half", GlobalStream(f), 4)
    np.testing.assert_allclose(resumed, ref_losses[2:], rtol=0, atol=loss_tol)
    assert_same_weights(model.state_dict(), ref_state, weight_drift)

    # The tokenizer under DDP, with the GAN from step 1 (hand-averaged discriminator gradients).
    # Every term is a mean whose two half-batch means add up to within a few fp32 ulps of the
    # whole batch's (measured: at most 1 ulp), so each keeps to 64 ulps of its value. The one
    # exception: from step 2 the GAN term reads the discriminator after its first Adam step, which
    # can turn a rounding-level gradient (conv biases ahead of GroupNorm) into a move of up to
    # disc_lr; the term, a mean of D's outputs, moves by about that much at most (measured: 6e-6).
    dist_logs = r0["tokenizer"]
    for step, (got, want) in enumerate(zip(dist_logs, ref_tok, strict=True)):
        for k in ("pixel", "perceptual", "semantic", "codebook", "commit", "disc", "gan", "total"):
            if k in want:
                moved_by_d = step >= 2 and k in ("gan", "total")
                tol = TOKENIZER_DISC_LR if moved_by_d else tolerance(0.0, abs(want[k]))
                assert got[k] == pytest.approx(want[k], abs=tol), (step, k)
    assert "disc" in dist_logs[1] and dist_logs[0]["gan"] == 0 and dist_logs[2]["gan"] != 0
    assert (r0["tok_digest"], r0["disc_digest"]) == (r1["tok_digest"], r1["disc_digest"])  # in sync
    tok = load_checkpoint(tmp_path / "tok_ddp" / CHECKPOINT_NAME)
    assert digest(tok["model"]) == r0["tok_digest"] and tok["step"] == 3
    assert digest(tok["extras"]["discriminator"]) == r0["disc_digest"] != digest(disc_init)  # D trained


def test_single_process_helpers():
    assert (D.rank(), D.world(), D.is_main()) == (0, 1, True)
    assert D.init_from_env("cpu") == CPU  # no torchrun environment: nothing to join
    assert D.per_rank_batch(512, 8) == 64
    with pytest.raises(ValueError, match="not divisible"):
        D.per_rank_batch(10, 4)
    x = torch.arange(12).view(6, 2)
    assert torch.equal(torch.cat([D.rank_rows(x, r, 3) for r in range(3)]), x)
    assert torch.equal(D.rank_rows(x, 1, 3), x[2:4])

    class Src:
        def batch(self, step):
            return torch.arange(8).view(4, 2) + step, torch.arange(4)

    toks, labels = D.RankSlice(Src(), 1, 2).batch(3)
    assert torch.equal(toks, torch.tensor([[7, 8], [9, 10]])) and torch.equal(labels, torch.tensor([2, 3]))
    assert D.rank_seed(5, 0) == 5 and len({D.rank_seed(5, r) for r in range(4)}) == 4
    model = torch.nn.Linear(3, 2)
    assert D.wrap(model, CPU, "fsdp") is model and not D.uses_fsdp(model, "fsdp")
    assert D.mean_logs({"loss": 2.5}) == {"loss": 2.5}
    state = D.model_state(model)
    assert set(state) == {"weight", "bias"} and torch.equal(state["weight"], model.weight)


def test_sync_batchnorm_leaves_the_frozen_backbone_alone():
    backbone = build_backbone(BackboneConfig(kind="efficientnet_lite0", image_size=32, weights="random",
                                             allow_random_init=True))
    model = torch.nn.Module()
    model.backbone, model.head = backbone, torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    D.sync_batchnorm(model)
    assert isinstance(model.head[1], torch.nn.SyncBatchNorm)  # trainable BN: global-batch statistics
    kinds = {type(m) for m in backbone.modules()}
    assert torch.nn.SyncBatchNorm not in kinds and torch.nn.BatchNorm2d in kinds


def test_fsdp_auto_threshold_is_gpt_xl():
    with torch.device("meta"):
        sizes = {n: sum(p.numel() for p in zoo.build(n, num_classes=1000).parameters())
                 for n in ("GPT-L", "GPT-XL")}
    assert sizes["GPT-L"] < D.FSDP_MIN_PARAMS <= sizes["GPT-XL"]


def test_compile_switch_compiles_the_forward_only(tmp_path, monkeypatch):
    compiled = []

    def fake_compile(module):  # real torch.compile takes minutes on CPU: see the CUDA test below
        compiled.append(module)
        return lambda *args, **kwargs: module(*args, **kwargs)

    monkeypatch.setattr(torch, "compile", fake_compile)
    f = token_file(tmp_path / "t.parquet")
    model = zoo.build("GPT-Tiny", vocab_size=64, n_tokens=16, num_classes=4)
    cfg = ARTrainConfig(steps=1, batch_size=8, lr=1e-3, compile=True)
    train_ar(model, TokenStream(f, 8, 0), cfg, tmp_path / "ckpt", CPU)
    assert compiled == [model]
    assert weights(tmp_path / "ckpt").keys() == model.state_dict().keys()  # no "_orig_mod." keys


def test_rows_per_rank_must_make_the_global_batch(tmp_path):
    f = token_file(tmp_path / "t.parquet")
    model = zoo.build("GPT-Tiny", vocab_size=64, n_tokens=16, num_classes=4)
    cfg = ARTrainConfig(steps=1, batch_size=8, lr=1e-3)
    with pytest.raises(ValueError, match="global batch_size 8"):
        train_ar(model, TokenStream(f, 4, 0), cfg, tmp_path / "ckpt", CPU)  # a per-rank stream, 1 rank


@pytest.mark.cuda
def test_compiled_bf16_training_on_cuda(tmp_path):
    f = token_file(tmp_path / "t.parquet")
    losses = {}
    for compile_ in (False, True):
        torch.manual_seed(0)
        model = zoo.build("GPT-Tiny", vocab_size=64, n_tokens=16, num_classes=4, class_dropout=0.0,
                          token_dropout=0.0, resid_dropout=0.0).cuda()
        cfg = ARTrainConfig(steps=3, batch_size=8, lr=1e-3, compile=compile_)
        log: list[float] = []
        train_ar(model, TokenStream(f, 8, 0), cfg, tmp_path / str(compile_), torch.device("cuda"),
                 on_log=lambda s, logs, log=log: log.append(logs["loss"]))
        losses[compile_] = log
    np.testing.assert_allclose(losses[True], losses[False], rtol=2e-2)  # bf16: same trajectory


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
