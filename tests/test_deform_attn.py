"""Tests for the pure-PyTorch multi-scale deformable attention."""

from __future__ import annotations

import math

import pytest
import torch

from vfmtok.deform_attn import MSDeformAttn, ms_deform_attn

SHAPES = [(6, 8), (3, 5), (2, 2)]  # non-square levels of different sizes


def _bilinear_reference(value_map: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Hand-written bilinear read of value_map (H, W, C) at normalised (x, y), zeros outside.

    align_corners=False convention: pixel (i, j) has its centre at ((j+0.5)/W, (i+0.5)/H).
    """
    H, W, C = value_map.shape
    px, py = x * W - 0.5, y * H - 0.5  # continuous pixel coordinates
    x0, y0 = math.floor(px), math.floor(py)
    fx, fy = px - x0, py - y0
    out = torch.zeros(C, dtype=value_map.dtype)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            i, j = y0 + dy, x0 + dx
            if 0 <= i < H and 0 <= j < W:
                out += wy * wx * value_map[i, j]
    return out


def _reference(value, shapes, loc, weights):
    """Slow explicit loop version of ms_deform_attn (float64)."""
    B, _, n_heads, head_dim = value.shape
    _, Nq, _, L, P, _ = loc.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(B, Nq, n_heads, head_dim, dtype=torch.float64)
    for b in range(B):
        for lvl, (h, w) in enumerate(shapes):
            vmap = value[b, starts[lvl] : starts[lvl + 1]].double().view(h, w, n_heads, head_dim)
            for q in range(Nq):
                for hd in range(n_heads):
                    for p in range(P):
                        x, y = loc[b, q, hd, lvl, p].tolist()
                        s = _bilinear_reference(vmap[:, :, hd], x, y)
                        out[b, q, hd] += weights[b, q, hd, lvl, p].double() * s
    return out.view(B, Nq, n_heads * head_dim)


def _random_inputs(B=2, Nq=5, n_heads=2, head_dim=3, P=3, shapes=SHAPES, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    S = sum(h * w for h, w in shapes)
    value = torch.randn(B, S, n_heads, head_dim, generator=g, dtype=dtype)
    # locations in [-0.3, 1.3]: some fall outside the map and must read (partly) zeros
    loc = torch.rand(B, Nq, n_heads, len(shapes), P, 2, generator=g, dtype=dtype) * 1.6 - 0.3
    weights = torch.rand(B, Nq, n_heads, len(shapes), P, generator=g, dtype=dtype)
    return value, loc, weights


METHODS = ["grid_sample", "dense"]


@pytest.mark.parametrize("method", METHODS)
def test_matches_explicit_bilinear_reference(method):
    value, loc, weights = _random_inputs()
    assert ((loc < 0) | (loc > 1)).any(), "test must cover locations outside the map"
    out = ms_deform_attn(value, SHAPES, loc, weights, method=method)
    assert out.shape == (2, 5, 2 * 3) and out.dtype == torch.float32
    ref = _reference(value, SHAPES, loc, weights)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_far_outside_reads_zero_and_pixel_centre_reads_pixel(method):
    value, loc, weights = _random_inputs(B=1, Nq=2, n_heads=1, head_dim=4, P=1, shapes=[(3, 4)])
    loc[0, 0, 0, 0, 0] = torch.tensor([2.0, -1.0])  # far outside
    loc[0, 1, 0, 0, 0] = torch.tensor([(2 + 0.5) / 4, (1 + 0.5) / 3])  # centre of pixel (1, 2)
    weights.fill_(1.0)
    out = ms_deform_attn(value, [(3, 4)], loc, weights, method=method)
    torch.testing.assert_close(out[0, 0], torch.zeros(4))
    torch.testing.assert_close(out[0, 1], value[0, 1 * 4 + 2, 0])


def test_list_of_maps_and_tensor_shapes_agree_with_flat_input():
    value, loc, weights = _random_inputs()
    flat_out = ms_deform_attn(value, SHAPES, loc, weights)
    chunks = value.split([h * w for h, w in SHAPES], dim=1)
    maps = [c.unflatten(1, hw) for c, hw in zip(chunks, SHAPES, strict=True)]
    torch.testing.assert_close(ms_deform_attn(maps, None, loc, weights), flat_out)
    torch.testing.assert_close(ms_deform_attn(value, torch.tensor(SHAPES), loc, weights), flat_out)


def test_auto_picks_dense_for_small_maps_and_both_agree_on_large_ones(monkeypatch):
    from vfmtok import deform_attn

    calls = []
    real = deform_attn._dense
    monkeypatch.setattr(deform_attn, "_dense", lambda *a: calls.append(1) or real(*a))
    value, loc, weights = _random_inputs()  # 5 queries x 63 positions: dense
    ms_deform_attn(value, SHAPES, loc, weights)
    assert calls == [1]
    big = [(40, 40), (20, 20)]  # 40 queries x 2000 positions > DENSE_MAX_ENTRIES: grid_sample
    value, loc, weights = _random_inputs(B=1, Nq=40, n_heads=2, head_dim=4, P=3, shapes=big)
    auto = ms_deform_attn(value, big, loc, weights)
    assert calls == [1]
    torch.testing.assert_close(auto, ms_deform_attn(value, big, loc, weights, method="dense"),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown method"):
        ms_deform_attn(value, big, loc, weights, method="cuda")


def test_shape_errors():
    value, loc, weights = _random_inputs()
    with pytest.raises(ValueError, match="positions"):
        ms_deform_attn(value, [(6, 8), (3, 5)], loc, weights)
    with pytest.raises(ValueError, match="spatial_shapes is required"):
        ms_deform_attn(value, None, loc, weights)
    with pytest.raises(ValueError, match="levels"):
        ms_deform_attn(value, SHAPES, loc[:, :, :, :2], weights[:, :, :, :2])


@pytest.mark.parametrize("method", METHODS)
def test_gradcheck_values_locations_weights(method):
    shapes = [(3, 4), (2, 3)]
    value, loc, weights = _random_inputs(
        B=1, Nq=2, n_heads=2, head_dim=2, P=2, shapes=shapes, dtype=torch.float64
    )
    loc = loc.clamp(0.05, 0.95)  # keep the finite differences away from the zero-padding seam
    inputs = tuple(t.clone().requires_grad_(True) for t in (value, loc, weights))

    def fn(v, lo, w):
        return ms_deform_attn(v, shapes, lo, w, method=method)

    assert fn(*inputs).dtype == torch.float64  # gradcheck must really run in float64
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


def test_module_init_offset_pattern_and_uniform_weights():
    torch.manual_seed(0)
    n_heads, n_levels, n_points, d = 8, 3, 4, 32
    m = MSDeformAttn(d_model=d, n_levels=n_levels, n_heads=n_heads, n_points=n_points)
    assert torch.count_nonzero(m.sampling_offsets.weight) == 0
    bias = m.sampling_offsets.bias.view(n_heads, n_levels, n_points, 2)
    # head 0 points along +x, head 2 along +y, head 1 along the diagonal (1, 1)
    for k in range(n_points):
        torch.testing.assert_close(
            bias[0, :, k], torch.tensor([k + 1.0, 0.0]).expand(3, 2), atol=1e-6, rtol=0
        )
        torch.testing.assert_close(bias[1, :, k], torch.tensor([k + 1.0, k + 1.0]).expand(3, 2))
        torch.testing.assert_close(
            bias[2, :, k], torch.tensor([0.0, k + 1.0]).expand(3, 2), atol=1e-6, rtol=0
        )
    # max |coord| of each direction is exactly the point index
    radius = bias.abs().amax(-1)  # (heads, levels, points)
    torch.testing.assert_close(radius, torch.arange(1.0, 5.0).expand_as(radius))
    assert torch.count_nonzero(m.attention_weights.weight) == 0
    assert torch.count_nonzero(m.attention_weights.bias) == 0
    for proj in (m.value_proj, m.output_proj):
        assert torch.count_nonzero(proj.bias) == 0
        bound = math.sqrt(6.0 / (2 * d))  # xavier_uniform bound for a square d x d weight
        assert proj.weight.abs().max() <= bound and proj.weight.std() > 0.3 * bound

    B, Nq = 2, 7
    query = torch.randn(B, Nq, d)
    ref = torch.rand(B, Nq, 2)
    loc, weights = m._sampling(query, ref, [(6, 8), (3, 5), (2, 2)])
    torch.testing.assert_close(weights, torch.full_like(weights, 1.0 / (n_levels * n_points)))
    # location = ref + offset / (W, H): the first point of head 0 is one pixel to the right
    torch.testing.assert_close(loc[:, :, 0, 0, 0], ref + torch.tensor([1 / 8, 0.0]))
    torch.testing.assert_close(loc[:, :, 2, 1, 1], ref + torch.tensor([0.0, 2 / 3]))


def test_module_reset_survives_external_reinit():
    m = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=2)
    expected = m.sampling_offsets.bias.detach().clone()
    for lin in m.modules():  # what a parent's blanket init would do
        if isinstance(lin, torch.nn.Linear):
            torch.nn.init.normal_(lin.weight)
            torch.nn.init.normal_(lin.bias)
    m.reset_parameters()
    torch.testing.assert_close(m.sampling_offsets.bias, expected)
    assert torch.count_nonzero(m.attention_weights.weight) == 0


def test_module_forward_shapes_and_gradients():
    torch.manual_seed(0)
    d, shapes = 16, [(6, 8), (3, 5)]
    m = MSDeformAttn(d_model=d, n_levels=2, n_heads=4, n_points=2)
    maps = [torch.randn(2, d, h, w) for h, w in shapes]
    query = torch.randn(2, 9, d)
    out = m(query, torch.rand(2, 9, 2), maps)
    assert out.shape == (2, 9, d)
    out_lvl = m(query, torch.rand(2, 9, 2, 2), maps)  # per-level reference points
    assert out_lvl.shape == (2, 9, d)
    (out.square().sum() + out_lvl.square().sum()).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="value maps"):
        m(query, torch.rand(2, 9, 2), maps[:1])


@pytest.mark.parametrize("method", METHODS)
def test_core_stays_fp32_under_cpu_autocast(method):
    value, loc, weights = _random_inputs()
    expected = ms_deform_attn(value, SHAPES, loc, weights, method=method)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ms_deform_attn(value, SHAPES, loc, weights, method=method)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # bf16 values: computed in fp32 from the upcast inputs, returned in bf16
    got_bf16 = ms_deform_attn(value.bfloat16(), SHAPES, loc, weights, method=method)
    assert got_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(
        got_bf16, ms_deform_attn(value.bfloat16().float(), SHAPES, loc, weights, method=method).bfloat16()
    )


def test_module_sampling_geometry_fp32_under_autocast():
    torch.manual_seed(0)
    m = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=2)
    torch.nn.init.normal_(m.sampling_offsets.weight, std=0.1)
    query, ref = torch.randn(2, 5, 16), torch.rand(2, 5, 2)
    loc32, w32 = m._sampling(query, ref, [(64, 64), (32, 32)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loc, w = m._sampling(query, ref, [(64, 64), (32, 32)])
        out = m(query, ref, [torch.randn(2, 16, 64, 64), torch.randn(2, 16, 32, 32)])
    assert loc.dtype == w.dtype == torch.float32
    torch.testing.assert_close(loc, loc32)
    torch.testing.assert_close(w, w32)
    assert out.shape == (2, 5, 16) and torch.isfinite(out).all()
