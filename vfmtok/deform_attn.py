"""Multi-scale deformable attention (Deformable-DETR) in pure PyTorch.

The public VFMTok code imports a CUDA-only extension at module load, so nothing runs
without a GPU build. Bilinear ``F.grid_sample`` with zeros padding and
``align_corners=False`` (grid = 2 * loc - 1) computes the same thing as that kernel,
runs everywhere, and is differentiable w.r.t. values, locations and weights.

All the sampling geometry (locations, softmax, bilinear weights) is done in float32
even under autocast: a location in [0, 1] stored in bf16 has ~2^-8 resolution, i.e.
a quarter of a pixel on a 64-wide map, which silently blurs the attention.

Two exact implementations of the same sum: ``grid_sample`` per level, and, when the maps are
small, a "dense" one that scatters each query's bilinear x attention weights into a
(queries x positions) matrix and multiplies it with the values. At the demo's sizes (64 queries,
340 positions) the dense one is 2.6x faster forward + backward on CPU (86 -> 33 ms a call,
``grid_sample``'s CPU backward dominates); at the paper's (256 queries x 4 x 24 x 24 positions) its
matrix would be 2.4 MB per image and head, so ``grid_sample`` is used there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vfmtok.device import autocast_off

SpatialShapes = Sequence[tuple[int, int]] | Tensor

# "auto" uses the dense form while one (queries x positions) matrix has at most this many entries.
DENSE_MAX_ENTRIES = 1 << 16


def _fp32_at_least(t: Tensor) -> torch.dtype:
    """float32 for half/bf16/fp32 inputs, float64 stays float64 (for gradcheck)."""
    return torch.promote_types(t.dtype, torch.float32)


def _as_shape_list(spatial_shapes: SpatialShapes) -> list[tuple[int, int]]:
    """Normalise spatial shapes ((L, 2) tensor or [(H, W), ...]) to a list of int pairs."""
    if isinstance(spatial_shapes, Tensor):
        spatial_shapes = spatial_shapes.tolist()
    return [(int(h), int(w)) for h, w in spatial_shapes]


def _split_levels(
    value: Tensor | Sequence[Tensor], spatial_shapes: SpatialShapes | None
) -> tuple[list[Tensor], list[tuple[int, int]]]:
    """Return per-level value maps of shape (B, H_l, W_l, heads, head_dim) and their shapes."""
    if isinstance(value, Tensor):
        if spatial_shapes is None:
            raise ValueError("spatial_shapes is required when value is a flat tensor")
        shapes = _as_shape_list(spatial_shapes)
        if value.dim() != 4:
            raise ValueError(f"flat value must be (B, sum HW, heads, head_dim), got {value.shape}")
        total = sum(h * w for h, w in shapes)
        if value.shape[1] != total:
            raise ValueError(f"value has {value.shape[1]} positions, spatial_shapes sum to {total}")
        chunks = value.split([h * w for h, w in shapes], dim=1)
        maps = [c.unflatten(1, (h, w)) for c, (h, w) in zip(chunks, shapes, strict=True)]
        return maps, shapes
    maps = list(value)
    for m in maps:
        if m.dim() != 5:
            raise ValueError(f"each level must be (B, H, W, heads, head_dim), got {m.shape}")
    shapes = [(m.shape[1], m.shape[2]) for m in maps]
    if spatial_shapes is not None and _as_shape_list(spatial_shapes) != shapes:
        raise ValueError(f"spatial_shapes {spatial_shapes} disagree with the maps {shapes}")
    return maps, shapes


def ms_deform_attn(
    value: Tensor | Sequence[Tensor],
    spatial_shapes: SpatialShapes | None,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    method: str = "auto",
) -> Tensor:
    """Multi-scale deformable attention core: weighted bilinear samples of the value maps.

    Args:
        value: (B, sum_l H_l*W_l, heads, head_dim) flattened row-major level by level,
            or a list of per-level maps (B, H_l, W_l, heads, head_dim).
        spatial_shapes: [(H_l, W_l), ...] or an (L, 2) tensor; may be None for a list.
        sampling_locations: (B, Nq, heads, L, P, 2), (x, y) normalised to [0, 1]; pixel
            centres sit at ((j + 0.5) / W, (i + 0.5) / H). Outside the map reads zeros.
        attention_weights: (B, Nq, heads, L, P), already normalised by the caller.
        method: "grid_sample", "dense" (the same values, see the module docstring) or "auto"
            (dense while Nq x sum_l H_l*W_l <= ``DENSE_MAX_ENTRIES``).

    Returns:
        (B, Nq, heads * head_dim) in the dtype of ``value``; computed in float32
        (float64 inputs stay float64).
    """
    maps, shapes = _split_levels(value, spatial_shapes)
    out_dtype = maps[0].dtype
    B, _, _, n_heads, head_dim = maps[0].shape
    _, Nq, _, L, P, _ = sampling_locations.shape
    if len(shapes) != L or attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(
            f"{len(shapes)} levels; locations {tuple(sampling_locations.shape)}, "
            f"weights {tuple(attention_weights.shape)}"
        )
    if method not in ("auto", "grid_sample", "dense"):
        raise ValueError(f"unknown method {method!r}: auto | grid_sample | dense")
    positions = sum(h * w for h, w in shapes)
    if method == "dense" or (method == "auto" and Nq * positions <= DENSE_MAX_ENTRIES):
        return _dense(maps, shapes, sampling_locations, attention_weights)
    dt = _fp32_at_least(maps[0])
    with autocast_off(sampling_locations.device.type):
        grids = 2.0 * sampling_locations.to(dt) - 1.0  # (B, Nq, heads, L, P, 2)
        grids = grids.permute(0, 2, 3, 1, 4, 5).flatten(0, 1)  # (B*heads, L, Nq, P, 2)
        samples = []
        for lvl, m in enumerate(maps):
            v = m.to(dt).permute(0, 3, 4, 1, 2).flatten(0, 1)  # (B*heads, head_dim, H, W)
            s = F.grid_sample(
                v, grids[:, lvl], mode="bilinear", padding_mode="zeros", align_corners=False
            )  # (B*heads, head_dim, Nq, P)
            samples.append(s)
        sampled = torch.cat(samples, dim=-1)  # (B*heads, head_dim, Nq, L*P)
        w = attention_weights.to(dt).permute(0, 2, 1, 3, 4)  # (B, heads, Nq, L, P)
        w = w.reshape(B * n_heads, Nq, L * P, 1)
        # batched matmul: under autocast this would drop to bf16, hence the guard above
        out = torch.matmul(sampled.transpose(1, 2), w).squeeze(-1)  # (B*heads, Nq, head_dim)
        out = out.view(B, n_heads, Nq, head_dim).transpose(1, 2)  # (B, Nq, heads, head_dim)
    return out.reshape(B, Nq, n_heads * head_dim).to(out_dtype)


def _corners(loc: Tensor, shapes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """Bilinear taps of locations (B, Nq, heads, L, P, 2) on the levels, as ``grid_sample`` with
    zeros padding and align_corners=False reads them: flat indices into the concatenated levels
    and weights, (B, Nq, heads, L, P, 4) each; a tap outside its map gets weight 0."""
    dt, dev = loc.dtype, loc.device
    wh = torch.tensor([[w, h] for h, w in shapes], dtype=dt, device=dev)  # (L, 2) as (x, y)
    sizes = [h * w for h, w in shapes]
    start = torch.tensor([sum(sizes[:i]) for i in range(len(shapes))], device=dev)[:, None]  # (L, 1)
    width, height = wh[:, :1].long(), wh[:, 1:].long()  # (L, 1): broadcast over the points
    pix = loc * wh[:, None, :] - 0.5  # pixel coordinates; pixel centres at integers
    x0, y0 = pix[..., 0].floor(), pix[..., 1].floor()
    fx, fy = pix[..., 0] - x0, pix[..., 1] - y0
    x0, y0 = x0.long(), y0.long()
    index, weight = [], []
    taps = ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy))
    for dx, dy, w in taps:
        x, y = x0 + dx, y0 + dy
        inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
        index.append(torch.where(inside, start + y.clamp(min=0) * width + x.clamp(min=0), 0))
        weight.append(w * inside)
    return torch.stack(index, -1), torch.stack(weight, -1)


def _dense(maps: list[Tensor], shapes: list[tuple[int, int]], loc: Tensor, weights: Tensor) -> Tensor:
    """The dense form: scatter bilinear x attention weights into A (B*heads, Nq, S), then A @ V."""
    out_dtype, dt = maps[0].dtype, _fp32_at_least(maps[0])
    B, _, _, n_heads, head_dim = maps[0].shape
    Nq = loc.shape[1]
    with autocast_off(loc.device.type):
        value = torch.cat([m.to(dt).flatten(1, 2) for m in maps], 1)  # (B, S, heads, head_dim)
        S = value.shape[1]
        index, tap = _corners(loc.to(dt), shapes)  # (B, Nq, heads, L, P, 4) each
        tap = tap * weights.to(dt)[..., None]
        index = index.transpose(1, 2).reshape(B * n_heads, Nq, -1)  # (B*heads, Nq, L*P*4)
        tap = tap.transpose(1, 2).reshape(B * n_heads, Nq, -1)
        A = tap.new_zeros(B * n_heads, Nq, S).scatter_add(2, index, tap)  # (B*heads, Nq, S)
        v = value.permute(0, 2, 1, 3).reshape(B * n_heads, S, head_dim)
        out = torch.bmm(A, v).view(B, n_heads, Nq, head_dim).transpose(1, 2)  # (B, Nq, heads, hd)
    return out.reshape(B, Nq, n_heads * head_dim).to(out_dtype)


class MSDeformAttn(nn.Module):
    """Deformable-DETR multi-scale deformable attention over pre-projected value maps.

    Each query predicts, per head, ``n_levels * n_points`` offsets (in pixels of the
    level, added to its reference point) and a softmax over those samples.
    """

    def __init__(
        self, d_model: int = 512, n_levels: int = 4, n_heads: int = 8, n_points: int = 4
    ) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.d_model, self.n_levels = d_model, n_levels
        self.n_heads, self.n_points = n_heads, n_points
        self.head_dim = d_model // n_heads
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def offset_bias_pattern(self) -> Tensor:
        """Deformable-DETR's initial offsets: one direction per head, point k at radius k.

        Directions are spread evenly on the circle and scaled so that the larger of
        |x|, |y| is 1 (i.e. they lie on the unit square), then point k (1-based) sits
        k pixels out. Returns (heads, levels, points, 2).
        """
        theta = torch.arange(self.n_heads, dtype=torch.float64) * (2.0 * math.pi / self.n_heads)
        dirs = torch.stack([theta.cos(), theta.sin()], dim=-1)  # (heads, 2)
        dirs = dirs / dirs.abs().max(dim=-1, keepdim=True).values
        radius = torch.arange(1, self.n_points + 1, dtype=torch.float64)  # (P,)
        grid = dirs[:, None, None, :] * radius[None, None, :, None]  # (heads, 1, P, 2)
        return grid.expand(-1, self.n_levels, -1, -1).float().contiguous()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Apply the Deformable-DETR init. Call again if a parent re-initialises all Linears."""
        nn.init.zeros_(self.sampling_offsets.weight)
        self.sampling_offsets.bias.copy_(self.offset_bias_pattern().flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def _sampling(
        self, query: Tensor, reference_points: Tensor, shapes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """Locations (B, Nq, heads, L, P, 2) and weights (B, Nq, heads, L, P), in >= fp32."""
        B, Nq, _ = query.shape
        H, L, P = self.n_heads, self.n_levels, self.n_points
        with autocast_off(query.device.type):
            dt = _fp32_at_least(self.sampling_offsets.weight)
            q, off, att = query.to(dt), self.sampling_offsets, self.attention_weights
            offsets = F.linear(q, off.weight.to(dt), off.bias.to(dt)).view(B, Nq, H, L, P, 2)
            logits = F.linear(q, att.weight.to(dt), att.bias.to(dt))
            weights = logits.view(B, Nq, H, L * P).softmax(-1).view(B, Nq, H, L, P)
            ref = reference_points.to(dt)
            if ref.dim() == 3:
                ref = ref[:, :, None, :].expand(B, Nq, L, 2)  # (B, Nq, L, 2)
            if ref.shape != (B, Nq, L, 2):
                raise ValueError(f"reference_points {tuple(reference_points.shape)} mismatch")
            wh = [[w, h] for h, w in shapes]  # (x, y) normalisers per level
            wh = torch.tensor(wh, dtype=dt, device=query.device)  # (L, 2)
            loc = ref[:, :, None, :, None, :] + offsets / wh[None, None, None, :, None, :]
        return loc, weights

    def forward(
        self, query: Tensor, reference_points: Tensor, value_maps: Sequence[Tensor]
    ) -> Tensor:
        """Attend from queries to multi-scale maps.

        Args:
            query: (B, Nq, D) query features (with position embedding already added).
            reference_points: (B, Nq, 2) shared by all levels, or (B, Nq, L, 2); (x, y)
                in [0, 1].
            value_maps: L maps (B, D, H_l, W_l), already projected to D channels.

        Returns:
            (B, Nq, D).
        """
        if len(value_maps) != self.n_levels:
            raise ValueError(f"expected {self.n_levels} value maps, got {len(value_maps)}")
        B = query.shape[0]
        shapes = [(m.shape[-2], m.shape[-1]) for m in value_maps]
        flat = torch.cat([m.flatten(2).transpose(1, 2) for m in value_maps], 1)  # (B, S, D)
        value = self.value_proj(flat).view(B, -1, self.n_heads, self.head_dim)
        loc, weights = self._sampling(query, reference_points, shapes)
        out = ms_deform_attn(value, shapes, loc, weights)  # (B, Nq, D)
        return self.output_proj(out)
