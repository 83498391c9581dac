"""The loop both trainings share: one checkpoint format for the tokenizer and the generator; a
checkpoint of the loops' earlier formats resumes, one of any other format is not (training starts
over instead of failing)."""

from __future__ import annotations

import pytest
import torch

from pipeline.training_inputs.token_stream import TokenStream
from tests.helpers import CachedImages, tiny_tokenizer_config, write_token_file
from tests.test_resume import Killed, _ar_run, _tokenizer_run, kill_at
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


def _in_earlier_format(state: dict) -> dict:
    """What the two loops wrote before they shared one format (the inverse of
    ``vfmtok.checkpoint.from_earlier_format``)."""
    out = {"model": state["model"], "optimizer": state["optimizers"]["model"], "rng": state["rng"],
           "step": state["step"], "config_hash": state["config_hash"]}
    if state["ema"] is not None:  # the tokenizer's
        out |= {"ema": state["ema"], "dead_codes": state["extras"]["dead_codes"],
                "discriminator": state["extras"].get("discriminator", {}),
                "optimizer_d": state["optimizers"].get("discriminator", {})}
    return out


def test_a_run_interrupted_under_the_earlier_format_resumes_exactly(tmp_path):
    """A checkpoint of either loop's earlier format is converted, not dropped: the run resumes from
    it and ends with the weights of an uninterrupted run."""
    backbone = build_backbone(BackboneConfig(kind="efficientnet_lite0", image_size=32))
    data = CachedImages(backbone)
    ref_tok, _, _ = _tokenizer_run(tmp_path / "tok_a", backbone, data, restart_dead_every=3)
    with pytest.raises(Killed):
        _tokenizer_run(tmp_path / "tok_b", backbone, data, kill_at(2), restart_dead_every=3)
    f = write_token_file(tmp_path / "t.parquet")
    ref_gen, _ = _ar_run(tmp_path / "gen_a", TokenStream(f, 8, 0))
    with pytest.raises(Killed):
        _ar_run(tmp_path / "gen_b", TokenStream(f, 8, 0), on_log=kill_at(4))
    for folder in ("tok_b", "gen_b"):
        path = tmp_path / folder / CHECKPOINT_NAME
        save_checkpoint(path, _in_earlier_format(load_checkpoint(path)))
        assert set(torch.load(path, weights_only=True)) != CHECKPOINT_KEYS

    tok, res, _ = _tokenizer_run(tmp_path / "tok_b", backbone, data, restart_dead_every=3)
    gen, ran = _ar_run(tmp_path / "gen_b", TokenStream(f, 8, 0))
    assert (res.resumed_from, ran) == (2, 2)
    for ref, model in ((ref_tok, tok), (ref_gen, gen)):
        for (k, v), (k2, v2) in zip(ref.state_dict().items(), model.state_dict().items(), strict=True):
            assert k == k2 and torch.equal(v, v2), k
