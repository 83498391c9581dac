"""Tests for the L2-normalised vector quantizer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vfmtok.quantizer import VectorQuantizer, code_histogram_stats


def _quantizer(n_embed=64, embed_dim=12, beta=0.25, seed=0) -> VectorQuantizer:
    torch.manual_seed(seed)
    return VectorQuantizer(n_embed, embed_dim, beta)


def test_codebook_init_is_unit_norm_and_indices_are_brute_force_nearest():
    vq = _quantizer()
    torch.testing.assert_close(vq.embedding.weight.norm(dim=-1), torch.ones(64))
    z = torch.randn(3, 10, 12) * 5.0  # unnormalised encoder output
    z_q, idx, _ = vq(z)
    assert idx.shape == (3, 10) and idx.dtype == torch.long
    assert idx.min() >= 0 and idx.max() < 64
    # brute force: smallest Euclidean distance between unit vectors
    zn = F.normalize(z, dim=-1).reshape(-1, 1, 12)
    codes = F.normalize(vq.embedding.weight.detach(), dim=-1)[None]
    dists = (zn - codes).square().sum(-1)  # (30, 64)
    assert torch.equal(idx.flatten(), dists.argmin(-1))
    torch.testing.assert_close(z_q.detach(), vq.lookup(idx))
    torch.testing.assert_close(z_q.detach().norm(dim=-1), torch.ones(3, 10))


def test_chunked_search_matches_full_matmul(monkeypatch):
    vq = _quantizer(n_embed=16384, embed_dim=12)
    z = F.normalize(torch.randn(4, 50, 12), dim=-1)
    full = (z.reshape(-1, 12) @ vq.codebook().detach().T).argmax(-1).view(4, 50)
    monkeypatch.setattr("vfmtok.quantizer._MAX_SIM_ELEMENTS", 16384 * 7)  # 7-row chunks
    assert torch.equal(vq.nearest(z), full)


def test_lookup_round_trip():
    vq = _quantizer()
    idx = torch.randint(0, 64, (2, 16))
    codes = vq.lookup(idx)
    assert codes.shape == (2, 16, 12)
    torch.testing.assert_close(codes.norm(dim=-1), torch.ones(2, 16))
    _, idx_again, _ = vq(codes)  # a code is its own nearest neighbour
    assert torch.equal(idx_again, idx)


def test_losses_equal_hand_computed_mse():
    vq = _quantizer(beta=0.3)
    z = torch.randn(2, 8, 12)
    z_q, idx, stats = vq(z)
    zn = F.normalize(z, dim=-1)
    e = F.normalize(vq.embedding.weight.detach(), dim=-1)[idx]
    mse = ((e - zn) ** 2).mean()
    torch.testing.assert_close(stats.codebook_loss, mse)
    torch.testing.assert_close(stats.commit_loss, 0.3 * mse)
    torch.testing.assert_close(stats.loss, 1.3 * mse)


def test_loss_gradients_go_to_the_right_place():
    vq = _quantizer()
    z = torch.randn(2, 8, 12, requires_grad=True)
    _, _, stats = vq(z)
    stats.codebook_loss.backward()
    assert z.grad is None  # codebook loss must not move the encoder
    assert vq.embedding.weight.grad.abs().sum() > 0
    vq.zero_grad()
    z2 = z.detach().clone().requires_grad_(True)
    _, _, stats = vq(z2)
    stats.commit_loss.backward()
    assert z2.grad.abs().sum() > 0
    assert vq.embedding.weight.grad is None  # commitment loss must not move the codes


def test_straight_through_gradient():
    vq = _quantizer()
    z = torch.randn(2, 8, 12, requires_grad=True)
    z_q, _, _ = vq(z)
    z_q.retain_grad()
    target = torch.randn(2, 8, 12)
    downstream = (torch.tanh(z_q) - target).square().sum()  # nonlinear downstream loss
    downstream.backward()
    # d loss / d z_normalised == d loss / d z_q, so d loss / d z == J_normalize^T dL/dz_q
    zz = z.detach().clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(F.normalize(zz, dim=-1), zz, grad_outputs=z_q.grad)
    torch.testing.assert_close(z.grad, expected)
    assert vq.embedding.weight.grad is None  # the downstream loss never reaches the codes


def test_straight_through_identity_on_normalised_input():
    vq = _quantizer()
    z_n = F.normalize(torch.randn(2, 8, 12), dim=-1).requires_grad_(True)
    z_q, _, _ = vq(z_n)
    c = torch.randn(2, 8, 12)
    (z_q * c).sum().backward()
    # on the sphere the normalisation's Jacobian is the tangent projection I - z z^T
    zd = z_n.detach()
    projected = c - (c * zd).sum(-1, keepdim=True) * zd
    torch.testing.assert_close(z_n.grad, projected, atol=1e-6, rtol=1e-5)


def test_usage_and_perplexity_known_histograms():
    usage, ppl = code_histogram_stats(torch.full((4, 8), 3), n_embed=16)
    assert usage.item() == pytest.approx(1 / 16)
    assert ppl.item() == pytest.approx(1.0)
    uniform = torch.arange(5).repeat(6)  # 5 codes, 6 times each
    usage, ppl = code_histogram_stats(uniform.view(3, 10), n_embed=20)
    assert usage.item() == pytest.approx(5 / 20)
    assert ppl.item() == pytest.approx(5.0, rel=1e-6)
    skewed = torch.tensor([0, 0, 0, 1])  # p = (3/4, 1/4)
    _, ppl = code_histogram_stats(skewed, n_embed=4)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert ppl.item() == pytest.approx(math.exp(entropy), rel=1e-6)


def test_forward_stats_match_indices():
    vq = _quantizer(n_embed=8, embed_dim=4)
    codes = vq.codebook().detach()
    idx = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3]])
    _, got_idx, stats = vq(codes[idx] * 3.0)  # scaled codes map back to themselves
    assert torch.equal(got_idx, idx)
    assert stats.usage.item() == pytest.approx(4 / 8)
    assert stats.perplexity.item() == pytest.approx(4.0, rel=1e-6)


def test_deterministic_and_fp32_under_autocast():
    vq = _quantizer(n_embed=1024, embed_dim=12)
    z = torch.randn(2, 32, 12)
    zq1, idx1, _ = vq(z)
    zq2, idx2, _ = vq(z)
    assert torch.equal(idx1, idx2) and torch.equal(zq1, zq2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        zq3, idx3, stats = vq(z)
    assert torch.equal(idx3, idx1) and zq3.dtype == torch.float32
    assert stats.codebook_loss.dtype == torch.float32
    zq_bf16, idx_bf16, _ = vq(z.bfloat16())
    assert zq_bf16.dtype == torch.bfloat16
    assert torch.equal(idx_bf16, vq(z.bfloat16().float())[1])


def test_rejects_wrong_embed_dim():
    vq = _quantizer()
    with pytest.raises(ValueError, match="last dim"):
        vq(torch.randn(2, 3, 8))
