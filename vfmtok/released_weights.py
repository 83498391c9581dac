"""The released VFMTok and LlamaGen weights as this project's models: the name-by-name mapping.

Accepted files (PyTorch ``.pt`` checkpoints, read with ``weights_only=True``):
- the VFMTok tokenizer ``DINOv2/tokenizer/vfmtok-tokenizer.pt`` (huggingface.co/yexiguafu/VFMTok):
  the public ``VQ_models['VQ-16']`` at ``configs/vit_transformer.yaml``, codebook 16384 x 12,
  z-channels 512 (its ``"ema"`` weights, else ``"model"``), as :func:`tokenizer_config`;
- VFMTok's generators ``DINOv2/GPT-{B,L,XL,XXL,2B,3B}/GPT-*-*e.pt`` and LlamaGen's class-conditional
  ``c2i_{B,L,XL,XXL,3B}_{256,384}.pt`` (huggingface.co/FoundationVision/LlamaGen): LlamaGen's
  ``Transformer`` (``autoregressive/models/gpt.py``), vocabulary 16384, 1000 classes, one class
  token; ``"ema"``, ``"model"``, ``"module"``, ``"state_dict"`` or a bare state dict (FSDP).

``tests/fixtures/public_params.json`` records every key and shape of those models as the public
code builds them (``scripts/record_public_params.py``); ``tests/test_import_weights.py`` checks
that these rules consume each of them and produce exactly our model's keys and shapes.

Where our model is built differently, the import sets the switch that makes it compute what the
public code computes: ``tokenizer.enc_pos_on_values`` (the anchor encoder's self-attention adds
positions to its values too), ``tokenizer.dec_out_norm: false`` (no LayerNorm after the decoder),
``tokenizer.quant_batchnorm: false``, ``tokenizer.n_registers: 0`` (the public decoder's 4
registers sit after the mask tokens under a causal mask: they never reach an output), and
``GPTConfig.cls_rope: zero`` (LlamaGen's RoPE table zeroes the class token's query and key).
Public tensors with no counterpart, dropped on purpose (:data:`TOKENIZER_IGNORED`,
:data:`GPT_IGNORED`): those registers, the codebook-usage buffer, a frozen backbone's weights
and RoPE / KV-cache buffers. Any other key without a rule is refused, naming the first one.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vfmtok.config import TokenizerConfig
from vfmtok.generator_config import GPTConfig


class PublicWeightsError(ValueError):
    """A checkpoint that is not one of the accepted public files; the message names the key."""


@dataclass(frozen=True)
class Rule:
    """Our tensor ``ours`` from the public tensors ``sources`` (``combine``: how)."""

    ours: str
    sources: tuple[str, ...]
    combine: Callable[..., Tensor] = lambda t: t


def same(ours: str, public: str) -> Rule:
    return Rule(ours, (public,))


def fused(ours: str, publics: list[str]) -> list[Rule]:
    """Separate projections -> one fused layer (their output rows stacked in order), weight and bias."""
    return [Rule(f"{ours}.{p}", tuple(f"{m}.{p}" for m in publics), lambda *t: torch.cat(t))
            for p in ("weight", "bias")]


def qkv(ours: str, public: str) -> list[Rule]:
    """``q_proj``, ``k_proj``, ``v_proj`` -> our ``qkv`` (rows q, then k, then v)."""
    return fused(ours, [f"{public}.{n}_proj" for n in "qkv"])


def pair(ours: str, public: str, params: tuple[str, ...] = ("weight", "bias")) -> list[Rule]:
    return [same(f"{ours}.{p}", f"{public}.{p}") for p in params]


# ----------------------------------------------------------------------------- tokenizer

TOKENIZER_IGNORED = {
    "slot_quantize.codebook_used": "a training statistic (the last codes used), not a weight",
    "decode_transformer.register_tokens": "after the mask tokens under a causal mask: reach no output",
    "encode_transformer.backbone.": "the frozen DINOv2: read from backbone.weights instead",
}


def tokenizer_config() -> TokenizerConfig:
    """The public tokenizer as our config (``configs/vit_transformer.yaml`` + ``VQ-16`` at 336 px)."""
    return TokenizerConfig(
        kind="vfmtok", image_size=336, n_tokens=256, dim=512, enc_layers=6, dec_layers=6, n_heads=8,
        n_points=4, enc_ffn_dim=1024, dec_ffn_dim=1368, codebook_size=16384, codebook_dim=12,
        pixel_grid=21, n_registers=0, conv_ch=128, conv_mult=[1, 1, 2, 2, 4], conv_res_blocks=2,
        semantic=True, quant_batchnorm=False, enc_pos_on_values=True, dec_out_norm=False,
    )  # fmt: skip


# DINOv2 ViT-L/14 + 4 registers; the public code taps blocks 5, 11, 17 (0-based, raw) and the normed last
BACKBONE = {"kind": "timm_vit", "model": "vit_large_patch14_reg4_dinov2", "taps": [6, 12, 18, 24],
            "image_size": 336}


def pixel_positions(pos: Tensor, grid: int) -> Tensor:
    """The public decoder's pixel-branch positions: its (1, 1 + S*S, D) table without the class
    row, resampled bicubically to ``grid`` x ``grid`` exactly as its forward does at run time
    (scale factor (grid + 0.1) / S) -> (1, grid*grid, D)."""
    side = math.isqrt(pos.shape[1] - 1)
    patch = pos[:, 1:]
    if side == grid:
        return patch
    maps = patch.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, D, S, S)
    scale = (grid + 0.1) / side
    out = F.interpolate(maps.float(), scale_factor=(scale, scale), mode="bicubic")  # (1, D, g, g)
    return out.flatten(2).transpose(1, 2).to(pos.dtype)


def _res_block(ours: str, public: str, shortcut: bool) -> list[Rule]:
    rules = [r for n in ("norm1", "conv1", "norm2", "conv2") for r in pair(f"{ours}.{n}", f"{public}.{n}")]
    return rules + (pair(f"{ours}.shortcut", f"{public}.nin_shortcut") if shortcut else [])


def _conv_decoder(cfg: TokenizerConfig) -> list[Rule]:
    """taming/LlamaGen ``Decoder`` (conv_blocks[level].res[j], .upsample) -> our flat ``up``."""
    top = cfg.conv_ch * cfg.conv_mult[-1]
    rules = pair("pixel_decoder.conv_in", "decoder.conv_in")
    rules += _res_block("pixel_decoder.mid.0", "decoder.mid.0", False)
    rules += pair("pixel_decoder.mid.1.norm", "decoder.mid.1.norm")  # 1x1 convs q, k, v -> qkv
    rules += fused("pixel_decoder.mid.1.qkv", [f"decoder.mid.1.{n}" for n in "qkv"])
    rules += pair("pixel_decoder.mid.1.proj", "decoder.mid.1.proj_out")
    rules += _res_block("pixel_decoder.mid.2", "decoder.mid.2", False)
    k, c = 0, top
    for b, level in enumerate(reversed(range(len(cfg.conv_mult)))):
        c_out = cfg.conv_ch * cfg.conv_mult[level]
        for j in range(cfg.conv_res_blocks):
            rules += _res_block(f"pixel_decoder.up.{k}", f"decoder.conv_blocks.{b}.res.{j}", c != c_out)
            k, c = k + 1, c_out
        if level:
            rules += pair(f"pixel_decoder.up.{k}.conv", f"decoder.conv_blocks.{b}.upsample.conv")
            k += 1
    rules += pair("pixel_decoder.norm_out", "decoder.norm_out")
    return rules + pair("pixel_decoder.conv_out", "decoder.conv_out")


def _anchor_encoder(cfg: TokenizerConfig, n_levels: int) -> list[Rule]:
    e = "encode_transformer"
    rules = [same("encoder.queries", f"{e}.carrier_tokens"), same("encoder.query_pos", f"{e}.slots_pos")]
    rules += pair("encoder.norm_queries", f"{e}.norm_pre1")
    for i in range(n_levels):
        p, o = f"encoder.projections.{i}.mlp", f"{e}.projectors.{i}.mlp"
        rules += [same(f"{p}.0.weight", f"{o}.0.weight"), same(f"{p}.3.weight", f"{o}.3.weight")]
        rules += pair(f"{p}.1", f"{o}.1") + pair(f"{p}.4", f"{o}.4") + pair(f"{p}.5", f"{e}.norm_layers.{i}")
    for n in range(cfg.enc_layers):
        ours, pub = f"encoder.layers.{n}", f"{e}.transformer.layers.{n}"
        for m in ("sampling_offsets", "attention_weights", "value_proj", "output_proj"):
            rules += pair(f"{ours}.deform.{m}", f"{pub}.cross_attn.{m}")
        rules += qkv(f"{ours}.self_attn.qkv", f"{pub}.self_attn")
        rules += pair(f"{ours}.self_attn.proj", f"{pub}.self_attn.out_proj")
        rules += pair(f"{ours}.ffn.0", f"{pub}.linear1") + pair(f"{ours}.ffn.2", f"{pub}.linear2")
        # post-norm order: public norm1 (deform), norm3 (self-attention), norm2 (FFN)
        rules += pair(f"{ours}.norm1", f"{pub}.norm1") + pair(f"{ours}.norm2", f"{pub}.norm3")
        rules += pair(f"{ours}.norm3", f"{pub}.norm2")
    return rules


def _vit_decoder(cfg: TokenizerConfig) -> list[Rule]:
    d = "decode_transformer"
    rules = [same("decoder.slot_pos", f"{d}.slot_position_embedding"),
             Rule("decoder.cls", (f"{d}.cls_token", f"{d}.position_embedding"), lambda c, p: c + p[:, :1]),
             Rule("decoder.registers", (f"{d}.cls_token",), lambda c: c[:, :0])]  # (1, 0, D): none
    rules += pair("decoder.norm_slots", f"{d}.norm_post1")
    for n in range(cfg.dec_layers):
        ours, pub = f"decoder.blocks.{n}", f"{d}.transformer.layers.{n}"
        rules += pair(f"{ours}.norm1", f"{pub}.norm1") + pair(f"{ours}.norm2", f"{pub}.norm2")
        rules += qkv(f"{ours}.attn.qkv", f"{pub}.attn1")
        rules += pair(f"{ours}.attn.proj", f"{pub}.attn1.out_proj")
        rules += pair(f"{ours}.ffn.w12", f"{pub}.ffnet.w12") + pair(f"{ours}.ffn.w3", f"{pub}.ffnet.w3")
    grid = cfg.pixel_grid
    rules += [same("decoder.pixel.mask", f"{d}.mask_embedding"),
              Rule("decoder.pixel.pos", (f"{d}.position_embedding",), lambda p: pixel_positions(p, grid)),
              same("decoder.semantic.mask", f"{d}.mask_dino"),
              Rule("decoder.semantic.pos", (f"{d}.position_embedding",), lambda p: p[:, 1:])]
    rules += pair("decoder.pixel.norm_in", f"{d}.norm_post1")  # the public code norms its slots and
    rules += pair("decoder.semantic.norm_in", f"{d}.norm_post2")  # pixel queries with one LayerNorm
    return rules + pair("decoder.semantic_head", f"{d}.proj")


def tokenizer_rules(cfg: TokenizerConfig, n_levels: int = 4) -> list[Rule]:
    """Every tensor of our ``VFMTokenizer`` at ``cfg`` from the public ``VQModel``'s."""
    rules = _anchor_encoder(cfg, n_levels) + _vit_decoder(cfg) + _conv_decoder(cfg)
    rules += pair("pre_quant", "pre_slots_quant") + pair("post_quant", "post_slots_quant")
    return rules + [same("quantizer.embedding.weight", "slot_quantize.embedding.weight")]


# ----------------------------------------------------------------------------- GPT

GPT_IGNORED = {
    "freqs_cis": "the RoPE table, recomputed from the config",
    "causal_mask": "a sampling buffer",
    "kv_cache.": "a sampling buffer",
}
# (n_layer, dim) -> (name, n_head): the public zoos (VFMTok's GPT-2B has 32 heads of 60).
PUBLIC_GPTS = {(12, 768): ("GPT-B", 12), (24, 1024): ("GPT-L", 16), (36, 1280): ("GPT-XL", 20),
               (48, 1536): ("GPT-XXL", 24), (48, 1920): ("GPT-2B", 32), (24, 3200): ("GPT-3B", 32)}
TABLE = "cls_embedding.embedding_table.weight"


def gpt_rules(n_layer: int) -> list[Rule]:
    """LlamaGen's names are ours except the class table's."""
    rules = [same("cls_embedding.table.weight", TABLE), same("norm.weight", "norm.weight"),
             same("tok_embeddings.weight", "tok_embeddings.weight"), same("output.weight", "output.weight")]
    for n in range(n_layer):
        for m in ("attention.wqkv", "attention.wo", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3",
                  "attention_norm", "ffn_norm"):
            rules.append(same(f"layers.{n}.{m}.weight", f"layers.{n}.{m}.weight"))
    return rules


GPT_KEY = re.compile(r"(cls_embedding\.embedding_table|tok_embeddings|norm|output|layers\.\d+\."
                     r"(attention\.wqkv|attention\.wo|feed_forward\.w[123]|attention_norm|ffn_norm))\.weight")


def gpt_config(shapes: dict[str, tuple[int, ...]], n_tokens: int = 256) -> tuple[str, GPTConfig]:
    """(zoo name, our config) of a public GPT from its tensor shapes; the released models use
    LlamaGen's defaults for the rest (dropouts 0.1, RMSNorm eps 1e-5, RoPE base 10000). A key
    that is no LlamaGen GPT name is refused first, by name."""
    extra = sorted(k for k in shapes if not GPT_KEY.fullmatch(k) and not _ignored(k, GPT_IGNORED))
    if extra:
        raise PublicWeightsError(f"{extra[0]}: no counterpart in this project's GPT ({len(extra)} unmatched "
                                 "keys; not one of the accepted public files)")
    for key in ("tok_embeddings.weight", TABLE):
        if key not in shapes:
            raise PublicWeightsError(f"{key}: missing (not a LlamaGen/VFMTok class-conditional GPT)")
    vocab, dim = shapes["tok_embeddings.weight"]
    layers = {int(k.split(".")[1]) for k in shapes if k.startswith("layers.")}
    n_layer = max(layers) + 1 if layers else 0
    if (n_layer, dim) not in PUBLIC_GPTS:
        known = ", ".join(f"{n} ({lay} x {d})" for (lay, d), (n, _) in PUBLIC_GPTS.items())
        raise PublicWeightsError(f"tok_embeddings.weight: {n_layer} layers of width {dim} is no public "
                                 f"GPT size (known: {known})")
    name, n_head = PUBLIC_GPTS[(n_layer, dim)]
    rows = shapes[TABLE][0]
    if rows != 1001:
        raise PublicWeightsError(f"{TABLE}: {rows} rows; the released class-conditional GPTs have 1001 "
                                 "(1000 ImageNet classes + the null class of classifier-free guidance)")
    cfg = GPTConfig(vocab_size=vocab, n_tokens=n_tokens, dim=dim, n_layer=n_layer, n_head=n_head,
                    num_classes=rows - 1, class_dropout=0.1, token_dropout=0.1, resid_dropout=0.1,
                    attn_dropout=0.0, cls_rope="zero")
    return name, cfg


# ----------------------------------------------------------------------------- applying rules


def _ignored(key: str, ignored: dict[str, str]) -> bool:
    return any(key == p or (p.endswith(".") and (key.startswith(p) or f".{p}" in key)) for p in ignored)


def convert(public: dict[str, Tensor], rules: list[Rule], ignored: dict[str, str],
            expected: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """Our state dict from a public one. Refused, naming the key: a public key that no rule
    reads and that is not ignored on purpose (the first in sorted order), a key a rule needs
    that is missing, or a tensor whose shape is not the one our model has there."""
    used = {s for r in rules for s in r.sources}
    extra = sorted(k for k in public if k not in used and not _ignored(k, ignored))
    if extra:
        raise PublicWeightsError(f"{extra[0]}: no counterpart in this project's model "
                                 f"({len(extra)} unmatched keys; not one of the accepted public files)")
    out, storages = {}, set()
    for rule in rules:
        missing = [s for s in rule.sources if s not in public]
        if missing:
            raise PublicWeightsError(f"{missing[0]}: missing (needed for {rule.ours})")
        tensor = rule.combine(*(public[s] for s in rule.sources))
        where = id(tensor) if tensor.is_meta else tensor.untyped_storage().data_ptr()
        if where in storages:  # one public tensor feeds two of ours (norm_post1): no shared memory
            tensor = tensor.clone()
        storages.add(id(tensor) if tensor.is_meta else tensor.untyped_storage().data_ptr())
        want = tuple(expected.get(rule.ours, ()))
        if tuple(tensor.shape) != want:
            shapes = ", ".join(f"{s} {list(public[s].shape)}" for s in rule.sources)
            raise PublicWeightsError(f"{rule.sources[0]}: {shapes} gives {rule.ours} {list(tensor.shape)}, "
                                     f"this model has {list(want)}")
        out[rule.ours] = tensor
    if set(out) != set(expected):
        raise PublicWeightsError(f"{sorted(set(expected) - set(out))[0]}: no rule fills it")
    return out


# ----------------------------------------------------------------------------- reading checkpoints

PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


def state_dict(checkpoint: object, prefer: str = "ema") -> tuple[str, dict[str, Tensor]]:
    """(which entry, the state dict) of a training checkpoint: ``prefer`` ("ema" or "model")
    first, then "ema", "model", "module", "state_dict", then the checkpoint itself (FSDP)."""
    if not isinstance(checkpoint, dict):
        raise PublicWeightsError(f"<file>: holds a {type(checkpoint).__name__}, not a checkpoint dict")
    for key in dict.fromkeys((prefer, "ema", "model", "module", "state_dict")):
        if isinstance(checkpoint.get(key), dict):
            found, sd = key, checkpoint[key]
            break
    else:
        found, sd = "<top level>", checkpoint
    bad = next((k for k, v in sd.items() if not isinstance(v, Tensor)), None)
    if bad is not None:
        raise PublicWeightsError(f"{bad}: not a tensor (entry {found!r} is not a state dict)")
    clean = {}
    for key, value in sd.items():
        for prefix in PREFIXES:
            key = key.removeprefix(prefix)
        clean[key] = value
    return found, clean


def load_checkpoint(path: str) -> object:
    """``torch.load`` with ``weights_only=True`` (the training scripts' ``args`` Namespace
    allowed), memory-mapped so that a 3B checkpoint with optimizer states is not read whole."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # an old, non-zip checkpoint cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=True)
