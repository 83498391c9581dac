"""``tokenizer_footprint``, the meta-device count of a tokenizer training step's memory, against a
real step: the demo's tokenizer trained one step on the CPU in fp32 through the stage's own
``TokenizerSteps`` (generator loss, backward, Adam, EMA, the discriminator's update), its peak
measured with the profiler (tests/memory_probe.py). Then the paper-size profile on meta."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from pipeline.params.profiles import load_profile
from pipeline.planning import memory
from pipeline.planning.tokenizer_memory import lpips_without_files, meta_backbone_config, tokenizer_footprint
from tests.memory_probe import optimizer_state_bytes, peak_above_start, tensor_bytes
from vfmtok.backbones import build_backbone
from vfmtok.losses import TokenizerLoss
from vfmtok.tokenizer import build_tokenizer
from vfmtok.tokenizer_training import TokenizerSteps
from vfmtok.training import descend

REPO = Path(__file__).resolve().parents[1]
BOUND = 0.25  # the bound on |estimated / measured - 1|
BATCH = 8
STEPS = 10  # the measured step is the last: past gan_start, every term on

# (perceptual, gan_weight, augment): the demo's own objective (cached levels, no GAN); every
# backbone path at once (its no-grad pass on the images, its input-gradient pass for both the
# perceptual term and the discriminator heads); LPIPS (a random VGG: the same activations) + GAN.
CASES = {
    "demo": ("none", 0.0, False),
    "backbone+gan+augment": ("backbone", 0.1, True),
    "lpips+gan": ("lpips", 0.1, False),
}


def _params(perceptual: str, gan_weight: float, augment: bool):
    """The demo profile with this objective, at batch ``BATCH``, the backbone at random init."""
    p = load_profile("demo", REPO, check_paths=False)
    tt = p.train_tokenizer
    loss = dataclasses.replace(tt.loss, perceptual=perceptual, gan_weight=gan_weight, gan_start=0.5,
                               lpips_vgg_weights="vgg.pth", lpips_lin_weights="lin.pth")  # never read
    tt = dataclasses.replace(tt, batch_size=BATCH, steps=STEPS, augment=augment, loss=loss)
    return dataclasses.replace(p, backbone=meta_backbone_config(p), train_tokenizer=tt)


class _Batches:
    """The stage's TrainData over ``BATCH`` fixed images: each batch a fresh copy, as loading
    makes one; the backbone's levels cached unless the run augments."""

    def __init__(self, images: torch.Tensor, levels: list[torch.Tensor] | None) -> None:
        self.images, self.levels = images, levels

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices, generator):
        levels = None if self.levels is None else [lv[indices].clone() for lv in self.levels]
        return self.images[indices].clone(), levels


def _measured_peak(params) -> int:
    """Bytes at the peak of one CPU training step: what lives at its start (weights, frozen
    weights, buffers, both optimizers' states, the EMA copy, the last step's gradients), counted
    from the tensors, plus the profiler's peak above it. A first step makes the states."""
    torch.manual_seed(0)
    cfg = params.train_tokenizer
    backbone = build_backbone(params.backbone)
    with lpips_without_files(torch.rand):  # random heads: a real, non-zero distance
        tok, loss_fn = build_tokenizer(params.tokenizer, backbone), TokenizerLoss(cfg.loss, backbone)
    size = params.tokenizer.image_size
    images = torch.rand(BATCH, 3, size, size) * 2 - 1
    levels = None if cfg.augment else backbone(images).levels
    steps = TokenizerSteps(tok, loss_fn, _Batches(images, levels), cfg, torch.device("cpu"))
    recipe = steps.recipe(tok)
    trained = [q for q in tok.parameters() if q.requires_grad]

    def step() -> None:  # vfmtok.training.train's loop body
        loss, _ = recipe.loss(STEPS - 1)
        descend(recipe.optimizer, loss, trained, cfg.grad_clip)
        recipe.after_update(STEPS - 1)
        recipe.ema.update(tok)
        recipe.after_ema(STEPS - 1)

    step()
    steps.last = None  # the previous batch: freed now, so that the start is what is counted here
    weights = [*tok.parameters(), *tok.buffers(), *loss_fn.parameters(), *loss_fn.buffers()]
    grads = [w.grad for w in weights if w.grad is not None]
    states = sum(optimizer_state_bytes(o) for o in recipe.optimizers().values())
    start = tensor_bytes(weights) + tensor_bytes(grads) + states + tensor_bytes(recipe.ema.shadow.values())
    return start + peak_above_start(step)


@pytest.mark.parametrize("case", CASES)
def test_the_estimate_is_within_the_bound_of_a_measured_cpu_step(case):
    params = _params(*CASES[case])
    measured = _measured_peak(params)
    fp = tokenizer_footprint(params, cuda=False)
    est = memory.estimate(fp, ema=True, processes=1, fsdp=False, cuda=False)
    estimated = est.peak_bytes(BATCH)
    saved = fp.saved_fixed + fp.saved_per_sample * BATCH
    assert saved > est.states_bytes  # the bound tests the meta count, not only the states' arithmetic
    assert abs(estimated / measured - 1) <= BOUND, (
        f"{case}: estimated {estimated / 2**20:.1f} MiB, measured {measured / 2**20:.1f} MiB")


def test_the_gan_counts_its_heads_and_its_trunk_pass():
    """The GAN trains the discriminator heads (idle weights without it) and adds the frozen
    trunk's pass with a gradient to the reconstruction, per sample."""
    off, on = (tokenizer_footprint(_params("none", w, False), cuda=False) for w in (0.0, 0.1))
    heads = on.trainable - off.trainable
    assert heads > 0 and off.frozen_bytes - on.frozen_bytes == 4 * heads
    assert on.saved_per_sample > off.saved_per_sample


def test_the_paper_tokenizer_on_meta_is_the_papers_size():
    """imagenet: the paper's ~73.5M-parameter tokenizer (plus 4 discriminator heads on DINOv2-L's
    1024-channel levels), DINOv2-L (~304M) and VGG16's trunk (14.7M) frozen, LPIPS and the GAN
    on. At bf16 autocast halves at most what the fp32 pass saves, and the frozen trunks that a
    loss differentiates through keep a bf16 copy of their weights."""
    params = load_profile("imagenet", REPO, check_paths=False)
    fp = tokenizer_footprint(params, cuda=True)
    fp32 = tokenizer_footprint(params, cuda=False)
    hidden = 128  # TokenizerLoss's disc_hidden: conv3x3 (C -> h) + GroupNorm + conv1x1 (h -> 1)
    heads = 4 * (9 * 1024 * hidden + hidden + 2 * hidden + hidden + 1)
    assert fp.trainable - heads == pytest.approx(73.5e6, rel=0.01)
    vgg_trunk = 14_714_688
    assert 4 * (300e6 + vgg_trunk) < fp.frozen_bytes < 4 * (310e6 + vgg_trunk)
    assert fp32.saved_per_sample / 2 <= fp.saved_per_sample <= fp32.saved_per_sample
    assert fp.saved_fixed >= fp.frozen_bytes / 2  # 2 bytes a frozen weight: every one is differentiated
