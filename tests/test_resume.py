"""A run killed between checkpoints and started again ends with exactly the weights of an
uninterrupted run (CPU, fixed seed): tokenizer (with EMA and GAN), GPT, and RAR killed in the middle
of its order annealing."""

from __future__ import annotations

import pytest
import torch

from pipeline.training_inputs.token_stream import TokenStream
from tests.helpers import CachedImages, tiny_tokenizer_config, write_token_file
from vfmtok import zoo
from vfmtok.backbones import build_backbone
from vfmtok.checkpoint import CHECKPOINT_NAME, load_checkpoint
from vfmtok.config import ARTrainConfig, BackboneConfig, LossConfig, TokenizerTrainConfig
from vfmtok.generator_training import train_ar
from vfmtok.losses import TokenizerLoss
from vfmtok.rar import annealed_step
from vfmtok.tokenizer import build_tokenizer
from vfmtok.tokenizer_training import train_tokenizer
from vfmtok.training import StepSampler


class Killed(RuntimeError):
    pass


def kill_at(step_to_die: int):
    def on_log(step, logs):
        if step == step_to_die:
            raise Killed(f"killed after step {step}")
    return on_log


def _tokenizer_run(tmp, backbone, data, on_log=lambda s, l: None, restart_dead_every=0):
    torch.manual_seed(0)
    model = build_tokenizer(tiny_tokenizer_config(), backbone)
    loss = TokenizerLoss(LossConfig(gan_start=0.3, gan_weight=0.1), backbone)
    cfg = TokenizerTrainConfig(steps=6, batch_size=4, lr=1e-3, warmup_steps=2, checkpoint_every=2,
                               ema_decay=0.9, loss=LossConfig(gan_start=0.3, gan_weight=0.1),
                               restart_dead_every=restart_dead_every)
    res = train_tokenizer(model, loss, data, cfg, tmp, torch.device("cpu"), on_log=on_log)
    return model, res, loss


@pytest.mark.parametrize("restart_dead_every", [0, 3])  # 3: the killed step re-seeds dead codes
def test_tokenizer_resume_equals_uninterrupted(tmp_path, restart_dead_every):
    backbone = build_backbone(BackboneConfig(kind="efficientnet_lite0", image_size=32))
    data = CachedImages(backbone)
    logs = {}
    ref_model, ref, ref_loss = _tokenizer_run(tmp_path / "a", backbone, data, logs.__setitem__,
                                              restart_dead_every)
    assert logs[5].get("restarted", 0) > 0 if restart_dead_every else "restarted" not in logs[5]

    with pytest.raises(Killed):  # dies after step 3 of 6
        _tokenizer_run(tmp_path / "b", backbone, data, kill_at(2), restart_dead_every)
    assert load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)["step"] == 2
    torch.manual_seed(123)  # a different init: the checkpoint must override it
    model, res, loss = _tokenizer_run(tmp_path / "b", backbone, data, restart_dead_every=restart_dead_every)
    assert res.resumed_from == 2 and res.steps_run == 4
    for (k, v), (k2, v2) in zip(ref_model.state_dict().items(), model.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k
    for k, v in ref.ema.state_dict().items():
        assert torch.equal(v, res.ema.state_dict()[k]), k
    for a, b in zip(ref_loss.discriminator.parameters(), loss.discriminator.parameters(), strict=True):
        assert torch.equal(a, b)
    # A finished checkpoint is not re-trained; a changed config starts over.
    _, again, _ = _tokenizer_run(tmp_path / "b", backbone, data, restart_dead_every=restart_dead_every)
    assert again.steps_run == 0
    assert load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME, expected_config="another") is None


def _ar_run(tmp, stream, on_log=lambda s, l: None):
    torch.manual_seed(0)
    model = zoo.build("GPT-Tiny", vocab_size=64, n_tokens=16, num_classes=4)
    cfg = ARTrainConfig(steps=6, batch_size=8, lr=1e-3, warmup_steps=2, checkpoint_every=2, val_every=3)
    ran = train_ar(model, stream, cfg, tmp, torch.device("cpu"), on_log=on_log,
                   val_batches=lambda: [stream.batch(0)])
    return model, ran


def test_ar_resume_equals_uninterrupted(tmp_path):
    f = write_token_file(tmp_path / "t.parquet")
    ref, _ = _ar_run(tmp_path / "a", TokenStream(f, 8, 0))
    with pytest.raises(Killed):
        _ar_run(tmp_path / "b", TokenStream(f, 8, 0), on_log=kill_at(4))
    torch.manual_seed(99)
    model, ran = _ar_run(tmp_path / "b", TokenStream(f, 8, 0))
    assert ran == 2  # resumed from the step-4 checkpoint
    for k, v in ref.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


def _rar_run(tmp, stream, on_log=lambda s, l: None):
    torch.manual_seed(0)
    model = zoo.build("RAR-Tiny", vocab_size=64, n_tokens=16, num_classes=4)
    cfg = ARTrainConfig(steps=6, batch_size=8, lr=1e-3, warmup_steps=2, checkpoint_every=2, val_every=3,
                        randomness_anneal_start=1, randomness_anneal_end=5)
    step_fn = annealed_step(cfg.randomness_anneal_start, cfg.randomness_anneal_end)
    ran = train_ar(model, stream, cfg, tmp, torch.device("cpu"), on_log=on_log,
                   val_batches=lambda: [stream.batch(0)], step_fn=step_fn)
    return model, ran


def test_rar_resume_mid_annealing_equals_uninterrupted(tmp_path):
    """r anneals 1 -> 0 over steps 1-5 of 6; killed after step 3, the run resumes from the step-2
    checkpoint at r = 0.75, draws the same random orders (torch's RNG is in the checkpoint) and
    ends with the weights of an uninterrupted run, which do depend on the orders."""
    f = write_token_file(tmp_path / "t.parquet")
    ref, _ = _rar_run(tmp_path / "a", TokenStream(f, 8, 0))
    with pytest.raises(Killed):
        _rar_run(tmp_path / "b", TokenStream(f, 8, 0), on_log=kill_at(3))
    assert load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)["step"] == 2
    torch.manual_seed(99)
    model, ran = _rar_run(tmp_path / "b", TokenStream(f, 8, 0))
    assert ran == 4
    for k, v in ref.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    torch.manual_seed(0)
    other = zoo.build("RAR-Tiny", vocab_size=64, n_tokens=16, num_classes=4)
    cfg = ARTrainConfig(steps=6, batch_size=8, lr=1e-3, warmup_steps=2, checkpoint_every=2)
    stream = TokenStream(f, 8, 0)
    train_ar(other, stream, cfg, tmp_path / "d", torch.device("cpu"))  # raster throughout
    assert not torch.equal(other.output.weight, ref.output.weight)


def test_step_sampler_is_stateless_and_covers_epochs():
    s = StepSampler(10, 4, seed=1)
    first = torch.cat([s.indices(i) for i in range(5)])  # 20 = two epochs
    assert sorted(first[:10].tolist()) == list(range(10)) and sorted(first[10:].tolist()) == list(range(10))
    assert torch.equal(StepSampler(10, 4, 1).indices(3), s.indices(3))


def test_learning_rate_schedules():
    from vfmtok.config import TrainLoopConfig
    from vfmtok.config_schema import ConfigError, validate
    from vfmtok.training import learning_rate

    const = TrainLoopConfig(steps=100, batch_size=1, lr=1e-3, warmup_steps=10)
    assert learning_rate(0, const) == pytest.approx(1e-4) and learning_rate(9, const) == pytest.approx(1e-3)
    assert learning_rate(99, const) == 1e-3
    cos = TrainLoopConfig(steps=100, batch_size=1, lr=1e-3, warmup_steps=10, lr_schedule="cosine",
                          min_lr=1e-5)
    lrs = [learning_rate(s, cos) for s in range(100)]
    assert lrs[10] == pytest.approx(1e-3) and lrs[99] == pytest.approx(1e-5)  # peak, then the floor
    assert lrs[10 + 89 // 2] == pytest.approx((1e-3 + 1e-5) / 2, rel=0.02)  # halfway down at the middle
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))  # monotone decay
    with pytest.raises(ConfigError, match="min_lr"):
        validate(TrainLoopConfig(steps=10, batch_size=1, lr=1e-4, lr_schedule="cosine", min_lr=1e-3))


def test_tokenizer_resume_with_cosine_schedule_and_late_gan_is_exact(tmp_path):
    """Resume mid-decay and across the GAN switch: the lr and the GAN depend on the step alone."""
    backbone = build_backbone(BackboneConfig(kind="efficientnet_lite0", image_size=32))
    data = CachedImages(backbone)

    def run(tmp, on_log=lambda s, l: None):
        torch.manual_seed(0)
        model = build_tokenizer(tiny_tokenizer_config(), backbone)
        loss_cfg = LossConfig(gan_start=0.5, gan_weight=0.1)
        cfg = TokenizerTrainConfig(steps=6, batch_size=4, lr=1e-3, warmup_steps=1, lr_schedule="cosine",
                                   min_lr=1e-5, checkpoint_every=2, ema_decay=0.9, loss=loss_cfg)
        train_tokenizer(model, TokenizerLoss(loss_cfg, backbone), data, cfg, tmp, torch.device("cpu"),
                        on_log=on_log)
        return model

    ref = run(tmp_path / "a")
    with pytest.raises(Killed):
        run(tmp_path / "b", on_log=kill_at(2))  # dies after step 3 of 6 (the GAN starts at step 3)
    again = run(tmp_path / "b")
    for k, v in ref.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
