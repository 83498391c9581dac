"""The conv decoder's normalisation and padding: >= 8 channels per GroupNorm group at narrow widths,
taming's 32 groups at the paper's; trained alone on an easy task it leaves no fixed-position error,
which instance norm (1-2 channels per group, the old grouping) does, and with replicate padding no
error at the corners, which zero padding leaves."""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from vfmtok import decoder


@pytest.mark.parametrize(("channels", "groups"), [(16, 2), (24, 3), (40, 5), (64, 8), (128, 32), (512, 32),
                                                  (8, 1), (4, 1)])
def test_norm_groups(channels, groups):
    assert decoder.norm_groups(channels) == groups
    assert channels // groups >= 8 or groups in (1, 32)


def _images(n: int, g: torch.Generator, size: int = 64) -> torch.Tensor:
    """Smooth one-channel shapes at a per-image brightness: the absolute level must survive."""
    low = torch.rand(n, 1, 4, 4, generator=g)
    x = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    level = torch.rand(n, 1, 1, 1, generator=g) * 1.6 - 0.8
    return ((x - 0.5) * 1.5 + level).clamp(-1, 1).expand(-1, 3, -1, -1).contiguous()


def _code(x: torch.Tensor) -> torch.Tensor:
    """What the decoder gets: the image at 8x8, 16 channels (an easy, lossless-enough input)."""
    return F.avg_pool2d(x, 8).repeat(1, 6, 1, 1)[:, :16]  # (B, 16, 8, 8)


def instance_norm_groups(channels: int, max_groups: int = 32) -> int:
    """The old grouping: gcd(32, C) groups, 1-2 channels per group at the demo's widths."""
    return math.gcd(max_groups, channels)


_RUNS: dict = {}  # (padding, grouping rule) -> mean error: the tests share the zeros run


def _mean_error(padding_mode: str = "zeros", groups=None) -> torch.Tensor:
    """Train a small ConvDecoder alone (8 -> 64 px, widths 8..32: the demo's regime) for 300 steps;
    its mean signed error (64, 64) over held-out images, in grey levels: a fixed-position artifact
    adds the same error to every image. ``groups``: another GroupNorm grouping rule than the
    decoder's own. ~20 s per call on 2 cores."""
    key = (padding_mode, groups)
    if key not in _RUNS:
        with mock.patch.object(decoder, "norm_groups", groups or decoder.norm_groups):
            _RUNS[key] = _train_alone(300, padding_mode)
    return _RUNS[key]


def _train_alone(steps: int, padding_mode: str) -> torch.Tensor:
    torch.manual_seed(0)
    net = decoder.ConvDecoder(16, 8, [1, 1, 2, 4], 1, padding_mode=padding_mode)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = _images(8, g)
        loss = F.mse_loss(net(_code(x)), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        x = _images(64, torch.Generator().manual_seed(99))
        return (net(_code(x)) - x).mean(dim=(0, 1)) * 127.5  # (64, 64)


def _fixed_position_peak(err: torch.Tensor) -> float:
    """The largest deviation of an 8x8-pixel block's mean signed error from the mean over all
    blocks: an error tied to a position. A bias shared by every position (a slightly dark or bright
    decoder) is not one, and where a short run ends up on that score depends on the CPU's rounding
    (the worst block's raw bias measured 2.5 on one machine, 5.2 on another)."""
    blocks = F.avg_pool2d(err[None, None], 8)  # (1, 1, 8, 8)
    return float((blocks - blocks.mean()).abs().max())


def _worst_corner(err: torch.Tensor) -> float:
    return float(err[[0, 0, -1, -1], [0, -1, 0, -1]].abs().max())


# The claims are relative: each is checked against the run that shows the failure, trained in the
# same way on the same machine (two runs that differ only in the rule under test).


@pytest.mark.slow
def test_no_fixed_position_peak_with_the_new_grouping():
    new = _fixed_position_peak(_mean_error())
    old = _fixed_position_peak(_mean_error(groups=instance_norm_groups))
    # measured (old / new, grey levels): 4.58 / 1.32 at 2 threads; at 1 thread 4.73 / 1.85 with
    # AVX2 kernels and 4.40 / 1.70 with scalar ones (ATEN_CPU_CAPABILITY=default)
    assert old > 1.6 * new, (old, new)


@pytest.mark.slow
def test_replicate_padding_leaves_no_corner_error():
    zeros, replicate = _mean_error(), _mean_error(padding_mode="replicate")
    # measured: 11.3-11.7 grey levels at the worst corner with zero padding, 1.1-1.3 with replicate
    corners = _worst_corner(zeros), _worst_corner(replicate)
    assert corners[0] > 4 * corners[1], corners
    # and no position-tied error elsewhere either (measured: 0.93-0.96 vs 4.40-4.73, as above)
    old = _mean_error(groups=instance_norm_groups)
    assert 1.6 * _fixed_position_peak(replicate) < _fixed_position_peak(old)


def test_conv_padding_reaches_every_3x3_conv():
    net = decoder.ConvDecoder(16, 8, [1, 2], 1, padding_mode="replicate")
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 11 and all(m.padding_mode == "replicate" for m in convs)
