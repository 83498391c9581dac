"""The shared decoder: a causal pre-norm ViT that turns the N quantized slots into a GxG feature
map (pixel branch) or the backbone's last-level grid (semantic branch), and a taming/LlamaGen-style
conv decoder that upsamples the GxG map to pixels.

Why one transformer for both branches: the semantic branch (training only) regresses the frozen
foundation model's last layer from the *same* slots through the *same* weights, so the tokens must
carry semantics that the pixel decoder also uses. Each branch only has its own mask token, position
embedding and input/output norms.

Why the sequence is ``[slots] ++ [CLS, registers, mask tokens]`` under a causal mask: every mask
token sees all N slots and the tokens before it. The registers sit *before* the mask tokens (the
public code puts them last, where a causal mask makes them dead parameters that never get a
gradient, and DDP then complains about unused parameters).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ----------------------------------------------------------------------------- transformer parts


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` (flash/SDPA kernels).

    ``pos`` (optional) is added to the queries and keys only, DETR style: values stay content.
    """

    def __init__(self, dim: int, n_heads: int, causal: bool = True) -> None:
        super().__init__()
        if dim % n_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        self.n_heads, self.causal = n_heads, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        B, T, D = x.shape
        if pos is None:
            q, k, v = self.qkv(x).chunk(3, dim=-1)  # (B, T, D) each
        else:
            w, b = self.qkv.weight, self.qkv.bias
            q, k = F.linear(x + pos, w[: 2 * D], b[: 2 * D]).chunk(2, dim=-1)
            v = F.linear(x, w[2 * D :], b[2 * D :])
        q, k, v = (t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, heads, T, hd)
        return self.proj(out.transpose(1, 2).reshape(B, T, D))


class SwiGLU(nn.Module):
    """SwiGLU FFN (DINOv2's fused layout: one Linear to 2 x hidden, SiLU(a) * b, Linear back)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class DecoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + SwiGLU(LN(x))."""

    def __init__(self, dim: int, n_heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, n_heads, causal=True)
        self.ffn = SwiGLU(dim, ffn_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class _Branch(nn.Module):
    """What differs between the pixel and the semantic branch: mask token, positions, norms."""

    def __init__(self, dim: int, n_positions: int, out_norm: bool = True) -> None:
        super().__init__()
        scale = dim**-0.5
        self.mask = nn.Parameter(torch.randn(1, 1, dim) * scale)
        self.pos = nn.Parameter(torch.randn(1, n_positions, dim) * scale)
        self.norm_in = nn.LayerNorm(dim)
        self.norm_out = nn.LayerNorm(dim) if out_norm else nn.Identity()


class ViTDecoder(nn.Module):
    """Causal pre-norm ViT over ``[N slots + pos] ++ [CLS, R registers, M mask tokens + pos]``.

    Args:
        n_slots: N quantized tokens (their order is the AR generation order).
        pixel_grid: G; the pixel branch returns a (B, D, G, G) map for the conv decoder.
        semantic_shape / semantic_channels: (S_h, S_w) and C of the backbone's last level, or
            None / 0 for no semantic branch (the pixel-only baseline, or semantic=False).
        out_norm: a LayerNorm on each branch's outputs (False: none, as in the public code).
        slot_skip: add slot i to pixel mask token i (needs N == G*G; not in the paper). At init
            the mask tokens' outputs barely depend on the slots (attention is near uniform, so
            each sees the mean slot); the skip gives every grid cell its anchor's token from the
            first step, and attention still mixes the rest.
    """

    def __init__(
        self, dim: int, layers: int, n_heads: int, ffn_dim: int, n_slots: int, pixel_grid: int,
        n_registers: int, semantic_shape: tuple[int, int] | None = None, semantic_channels: int = 0,
        out_norm: bool = True, slot_skip: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        if slot_skip and n_slots != pixel_grid * pixel_grid:
            raise ValueError(f"slot_skip needs one slot per pixel-grid cell: {n_slots} != {pixel_grid}**2")
        scale = dim**-0.5
        self.pixel_grid, self.slot_skip = pixel_grid, slot_skip
        self.slot_pos = nn.Parameter(torch.randn(1, n_slots, dim) * scale)
        self.norm_slots = nn.LayerNorm(dim)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * scale)
        self.registers = nn.Parameter(torch.randn(1, n_registers, dim) * scale)
        self.blocks = nn.ModuleList(DecoderBlock(dim, n_heads, ffn_dim) for _ in range(layers))
        self.pixel = _Branch(dim, pixel_grid * pixel_grid, out_norm)
        self.semantic_shape = tuple(semantic_shape) if semantic_shape else None
        self.semantic: _Branch | None = None
        self.semantic_head: nn.Linear | None = None
        if self.semantic_shape is not None:
            self.semantic = _Branch(dim, self.semantic_shape[0] * self.semantic_shape[1], out_norm)
            self.semantic_head = nn.Linear(dim, semantic_channels)
        self._init_linears()

    @torch.no_grad()
    def _init_linears(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def _run(self, slots: Tensor, branch: _Branch, skip: bool = False) -> Tensor:
        """slots (B, N, D) -> the branch's M mask-token outputs (B, M, D), out-normed if so built."""
        B = slots.shape[0]
        memory = self.norm_slots(slots + self.slot_pos)  # (B, N, D)
        masks = branch.mask + branch.pos  # (1, M, D)
        if skip:  # mask token i starts from slot i
            masks = masks + slots  # (B, M, D)
        lead = torch.cat([self.cls, self.registers], dim=1).expand(masks.shape[0], -1, -1)
        queries = branch.norm_in(torch.cat([lead, masks], dim=1))  # (1 or B, 1+R+M, D)
        x = torch.cat([memory, queries.expand(B, -1, -1)], dim=1)  # (B, N+1+R+M, D)
        for block in self.blocks:
            x = block(x)
        return branch.norm_out(x[:, -masks.shape[1] :])  # (B, M, D)

    def pixel_features(self, slots: Tensor) -> Tensor:
        """slots (B, N, D) -> (B, D, G, G) feature map for the conv decoder."""
        out = self._run(slots, self.pixel, self.slot_skip)  # (B, G*G, D)
        g = self.pixel_grid
        return out.transpose(1, 2).reshape(out.shape[0], -1, g, g)

    def semantic_prediction(self, slots: Tensor) -> Tensor:
        """slots (B, N, D) -> predicted backbone last level (B, C_sem, S_h, S_w)."""
        if self.semantic is None or self.semantic_head is None or self.semantic_shape is None:
            raise RuntimeError("this decoder was built without a semantic branch")
        out = self.semantic_head(self._run(slots, self.semantic))  # (B, S_h*S_w, C)
        h, w = self.semantic_shape
        return out.transpose(1, 2).reshape(out.shape[0], -1, h, w)


# ----------------------------------------------------------------------------- conv parts


def norm_groups(channels: int, max_groups: int = 32) -> int:
    """GroupNorm groups for ``channels``: taming's 32 where that keeps >= 4 channels per group (the
    paper widths, 128-512), else the most groups that keep >= 8 channels each.

    Why not taming's gcd(32, C) at every width: at demo widths (C = 16..64) it is 1-2 channels per
    group, i.e. instance norm. Every channel of every image is then re-centred and re-scaled, the
    decoder loses each image's absolute levels and smuggles them past the norm through a spike at
    one fixed position (StyleGAN2's "droplet"): a blob at the same place in every reconstruction.
    With >= 8 channels per group the spike does not form (tests/test_decoder_norm.py).
    """
    if channels % max_groups == 0 and channels // max_groups >= 4:
        return max_groups
    fits = [g for g in range(1, max_groups + 1) if channels % g == 0 and channels // g >= 8]
    return max(fits) if fits else 1


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with :func:`norm_groups` groups."""
    return nn.GroupNorm(norm_groups(channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, plus a (1x1 when widths differ) shortcut."""

    def __init__(self, c_in: int, c_out: int, padding_mode: str = "zeros") -> None:
        super().__init__()
        pad = padding_mode
        self.norm1, self.conv1 = group_norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode=pad)
        self.norm2, self.conv2 = group_norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1, padding_mode=pad)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over all positions of a (low-resolution) map."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=-1)  # (B, HW, C)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(out.transpose(1, 2).reshape(B, C, H, W))


class Upsample(nn.Module):
    """Nearest x2, then a 3x3 conv (taming's resamp_with_conv)."""

    def __init__(self, channels: int, padding_mode: str = "zeros") -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, padding_mode=padding_mode)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ConvDecoder(nn.Module):
    """(B, in_ch, G, G) -> (B, 3, G * 2**(len(mult)-1), same): conv_in, mid (res, attn, res), then
    per level from the widest: ``res_blocks`` ResBlocks and a x2 upsample (all but the last level),
    GroupNorm -> SiLU -> conv_out. At paper scale (512 -> ch 128, mult [1,1,2,2,4], 2 res blocks)
    this is ~33M of the ~73M trainable parameters. ``padding_mode`` is every 3x3 conv's (see
    ``TokenizerConfig.conv_padding``)."""

    def __init__(self, in_ch: int, ch: int, mult: list[int], res_blocks: int, out_ch: int = 3,
                 padding_mode: str = "zeros") -> None:
        super().__init__()
        c, pad = ch * mult[-1], padding_mode
        self.conv_in = nn.Conv2d(in_ch, c, 3, padding=1, padding_mode=pad)
        self.mid = nn.Sequential(ResBlock(c, c, pad), AttnBlock(c), ResBlock(c, c, pad))
        stages: list[nn.Module] = []
        for i in reversed(range(len(mult))):
            c_out = ch * mult[i]
            for _ in range(res_blocks):
                stages.append(ResBlock(c, c_out, pad))
                c = c_out
            if i != 0:
                stages.append(Upsample(c, pad))
        self.up = nn.Sequential(*stages)
        self.norm_out = group_norm(c)
        self.conv_out = nn.Conv2d(c, out_ch, 3, padding=1, padding_mode=pad)

    @property
    def last_layer(self) -> Tensor:
        """The final conv weight (for adaptive GAN weighting, if a loss wants it)."""
        return self.conv_out.weight

    def forward(self, z: Tensor) -> Tensor:
        # channels-last activations: the convolutions run 12-18% faster forward + backward on CPU
        # (oneDNN's native layout; measured on the demo decoder) and it is cuDNN's preferred one
        h = self.mid(self.conv_in(z.contiguous(memory_format=torch.channels_last)))
        h = self.up(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 3, H, W), channels-last strides
