"""Dead-code restarts: unused rows are re-seeded from the step's encoder outputs at check steps
only, until the cut-off; and in a short training run they raise the share of codes in use."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import CachedImages, tiny_tokenizer_config
from vfmtok.backbones import build_backbone
from vfmtok.config import BackboneConfig, LossConfig, TokenizerTrainConfig
from vfmtok.dead_codes import DeadCodeRestarts
from vfmtok.losses import TokenizerLoss
from vfmtok.metrics import codebook_usage
from vfmtok.quantizer import VectorQuantizer
from vfmtok.tokenizer import build_tokenizer
from vfmtok.tokenizer_training import train_tokenizer


def test_unused_rows_are_reseeded_from_the_inputs_at_check_steps_only():
    torch.manual_seed(0)
    q = VectorQuantizer(8, 4)
    before = q.embedding.weight.detach().clone()
    restarts = DeadCodeRestarts(q, every=2, until_step=4)
    inputs = F.normalize(torch.randn(1, 6, 4), dim=-1)  # (B, N, D) unit vectors
    g = torch.Generator().manual_seed(0)
    restarts.observe(torch.tensor([[0, 1, 1]]))
    assert restarts.after_step(1, inputs, g) is None  # not a check step
    restarts.observe(torch.tensor([[2, 3, 0]]))
    dead = restarts.after_step(2, inputs, g)
    assert dead.tolist() == [4, 5, 6, 7] and restarts.restarted == 4
    w = q.embedding.weight.detach()
    assert torch.equal(w[:4], before[:4])  # used rows untouched
    pool = inputs.reshape(-1, 4)
    for row in w[4:]:  # each new row is one of the inputs, and no input is used twice
        assert ((pool - row).abs().sum(-1) < 1e-7).sum() == 1
    assert len({tuple(r.tolist()) for r in w[4:]}) == 4
    assert int(restarts.counts.sum()) == 0  # counting starts over
    restarts.observe(torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7]]))
    assert restarts.after_step(4, inputs, g).numel() == 0  # nothing dead: nothing changes
    assert restarts.after_step(6, inputs, g) is None  # after until_step: no more restarts
    state = restarts.state_dict()
    other = DeadCodeRestarts(q, every=2, until_step=4)
    other.load_state_dict(state)
    assert other.restarted == 4 and torch.equal(other.counts, restarts.counts)


def test_every_zero_never_restarts():
    q = VectorQuantizer(8, 4)
    restarts = DeadCodeRestarts(q, every=0, until_step=100)
    restarts.observe(torch.tensor([[0]]))
    assert restarts.after_step(10, torch.randn(1, 2, 4), torch.Generator()) is None
    assert int(restarts.counts.sum()) == 0


def _val_usage(tmp, restart_dead_every: int) -> float:
    backbone = build_backbone(BackboneConfig(kind="efficientnet_lite0", image_size=32))
    data = CachedImages(backbone, n=64)
    torch.manual_seed(0)
    model = build_tokenizer(tiny_tokenizer_config(codebook_size=64), backbone)
    cfg = TokenizerTrainConfig(steps=40, batch_size=8, lr=3e-3, warmup_steps=2, checkpoint_every=40,
                               ema_decay=0.9, restart_dead_every=restart_dead_every, restart_dead_until=0.75)
    res = train_tokenizer(model, TokenizerLoss(LossConfig(), backbone), data, cfg,
                          tmp / str(restart_dead_every), torch.device("cpu"))
    ema = res.ema.copy_to(model).eval()
    images, levels = data.batch(torch.arange(64), torch.Generator())
    usage, _ = codebook_usage(ema.encode(images, levels).numpy(), 64)
    return usage


@pytest.mark.slow
def test_restarts_raise_codebook_usage_in_a_short_run(tmp_path):
    without, with_restarts = _val_usage(tmp_path, 0), _val_usage(tmp_path, 5)
    # measured: 8% of the 64 codes in use without restarts, 89% with them
    assert with_restarts > 0.5 and with_restarts > without + 0.3, (without, with_restarts)
