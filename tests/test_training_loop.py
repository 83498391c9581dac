"""The loop both trainings share: one checkpoint format for the tokenizer and the generator, and a
checkpoint of any other format is not resumed (training starts over instead of failing)."""

from __future__ import annotations

import torch

from pipeline.training_inputs.token_stream import TokenStream
from tests.helpers import CachedImages, tiny_tokenizer_config, write_token_file
from vfmtok import zoo
from vfmtok.backbones import build_backbone
from vfmtok.checkpoint import CHECKPOINT_KEYS, CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from vfmtok.config import ARTrainConfig, BackboneConfig, LossConfig, TokenizerTrainConfig
from vfmtok.generator_training import train_ar
from vfmtok.losses import TokenizerLoss
from vfmtok.tokenizer import build_tokenizer
from vfmtok.tokenizer_training import train_tokenizer

CPU = torch.device("cpu")


def _tokenizer_checkpoint(tmp) -> dict:
    backbone = build_backbone(BackboneConfig(kind="efficientnet_lite0", image_size=32))
    torch.manual_seed(0)
    model = build_tokenizer(tiny_tokenizer_config(), backbone)
    loss_cfg = LossConfig(gan_start=0.0, gan_weight=0.1)
    cfg = TokenizerTrainConfig(steps=2, batch_size=4, lr=1e-3, checkpoint_every=2, ema_decay=0.9,
                               loss=loss_cfg, restart_dead_every=1)
    train_tokenizer(model, TokenizerLoss(loss_cfg, backbone), CachedImages(backbone), cfg, tmp, CPU)
    return load_checkpoint(tmp / CHECKPOINT_NAME)


def _generator_run(tmp) -> int:
    stream = TokenStream(write_token_file(tmp / "t.parquet"), 8, 0)
    torch.manual_seed(0)
    model = zoo.build("GPT-Tiny", vocab_size=64, n_tokens=16, num_classes=4)
    cfg = ARTrainConfig(steps=2, batch_size=8, lr=1e-3, checkpoint_every=2)
    return train_ar(model, stream, cfg, tmp / "ck", CPU)


def _generator_checkpoint(tmp) -> dict:
    _generator_run(tmp)
    return load_checkpoint(tmp / "ck" / CHECKPOINT_NAME)


def test_both_loops_write_checkpoints_with_the_same_keys(tmp_path):
    tok, gen = _tokenizer_checkpoint(tmp_path / "tok"), _generator_checkpoint(tmp_path / "gen")
    assert set(tok) == set(gen) == CHECKPOINT_KEYS
    assert tok["step"] == gen["step"] == 2
    # What differs between the two sits one level down, by name.
    assert set(tok["optimizers"]) == {"model", "discriminator"} and set(gen["optimizers"]) == {"model"}
    assert set(tok["extras"]) == {"dead_codes", "discriminator"} and gen["extras"] == {}
    assert tok["ema"].keys() == tok["model"].keys() and gen["ema"] is None
    assert len(tok["rng_ranks"]) == len(gen["rng_ranks"]) == 1  # one process
    assert torch.equal(gen["rng_ranks"][0]["torch"], gen["rng"]["torch"])


def test_a_checkpoint_of_another_format_is_not_resumed(tmp_path):
    state = _generator_checkpoint(tmp_path)
    path = tmp_path / "ck" / CHECKPOINT_NAME
    assert load_checkpoint(path, state["config_hash"]) is not None
    state["optimizer"] = state.pop("optimizers")  # a key this code does not write
    save_checkpoint(path, state)
    assert load_checkpoint(path, state["config_hash"]) is None
    assert _generator_run(tmp_path) == 2  # trained from the start, and wrote a checkpoint of this format
    assert set(load_checkpoint(path)) == CHECKPOINT_KEYS
