"""Released VFMTok / LlamaGen weights in: the name-by-name mapping checked against the public
models' recorded parameter names and shapes (tests/fixtures/public_params.json, written by
scripts/record_public_params.py from the public code), refusals, and a round trip of synthetic
checkpoints through ``vfmtok-pipeline import-weights`` into the stages' model loaders."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import pytest
import torch

from pipeline.commands import import_weights
from pipeline.layout import Layout
from pipeline.models.trained import load_generator, load_tokenizer
from pipeline.params import load_params
from pipeline.params.profiles import load_profile, profile_text
from tests.conftest import REPO
from tests.helpers import tiny_tokenizer_config
from vfmtok import released_weights as pw
from vfmtok.config import BackboneConfig
from vfmtok.config_schema import to_dict
from vfmtok.gpt import GPT, rope_2d_tables
from vfmtok.tokenizer import AnchorEncoderLayer, build_tokenizer

FIXTURE = json.loads((REPO / "tests" / "fixtures" / "public_params.json").read_text())
PUBLIC_TOKENIZER = {k: tuple(v) for k, v in FIXTURE["tokenizer"]["vfmtok"]["params"].items()}
PUBLIC_GPTS = [(family, name, entry) for family, spec in FIXTURE["gpt"].items()
               for name, entry in spec["models"].items()]


def _meta(shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(v, device="meta") for k, v in shapes.items()}


def _shapes(model: torch.nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_fixture_comes_from_the_public_code_at_a_commit():
    assert FIXTURE["sources"]["vfmtok"]["repo"] == "CVMI-Lab/VFMTok"
    assert len(FIXTURE["sources"]["vfmtok"]["commit"]) == len(FIXTURE["sources"]["llamagen"]["commit"]) == 40
    assert FIXTURE["tokenizer"]["vfmtok"]["args"]["codebook_slots_embed_dim"] == 12


def test_tokenizer_mapping_covers_every_public_key_with_our_shapes():
    cfg = pw.tokenizer_config()
    with torch.device("meta"):
        ours = build_tokenizer(cfg, import_weights.DINOV2_L_336)
    rules = pw.tokenizer_rules(cfg)
    state = pw.convert(_meta(PUBLIC_TOKENIZER), rules, pw.TOKENIZER_IGNORED, _shapes(ours))
    assert {k: tuple(v.shape) for k, v in state.items()} == _shapes(ours)
    used = {s for r in rules for s in r.sources}
    dropped = {"slot_quantize.codebook_used", "decode_transformer.register_tokens"}
    assert set(PUBLIC_TOKENIZER) - used == dropped
    assert round(sum(v.numel() for v in state.values()) / 1e6, 1) == 73.5
    assert "decoder.pixel.norm_out.weight" not in state and "quant_norm.running_mean" not in state


@pytest.mark.parametrize(("family", "name", "entry"), PUBLIC_GPTS,
                         ids=[f"{f}-{n}" for f, n, _ in PUBLIC_GPTS])
def test_gpt_mapping_for_every_released_size(family, name, entry):
    shapes = {k: tuple(v) for k, v in entry["params"].items()}
    zoo, cfg = pw.gpt_config(shapes)
    public = entry["config"]
    assert zoo == name and cfg.cls_rope == "zero"
    for key in ("n_layer", "n_head", "dim", "multiple_of", "norm_eps", "rope_base"):
        assert getattr(cfg, key) == public[key], key
    with torch.device("meta"):
        ours = GPT(cfg)
    state = pw.convert(_meta(shapes), pw.gpt_rules(cfg.n_layer), pw.GPT_IGNORED, _shapes(ours))
    assert {k: tuple(v.shape) for k, v in state.items()} == _shapes(ours)


def test_unmatched_missing_and_misshapen_keys_are_refused_by_name():
    cfg = pw.tokenizer_config()
    with torch.device("meta"):
        expected = _shapes(build_tokenizer(cfg, import_weights.DINOV2_L_336))
    rules = pw.tokenizer_rules(cfg)
    public = _meta(PUBLIC_TOKENIZER)
    extra = {**public, "encode_transformer.extra_head.weight": torch.empty(3, device="meta")}
    with pytest.raises(pw.PublicWeightsError, match=r"^encode_transformer.extra_head.weight: no counterpart"):
        pw.convert(extra, rules, pw.TOKENIZER_IGNORED, expected)
    missing = {k: v for k, v in public.items() if k != "decode_transformer.mask_dino"}
    with pytest.raises(pw.PublicWeightsError, match=r"^decode_transformer.mask_dino: missing"):
        pw.convert(missing, rules, pw.TOKENIZER_IGNORED, expected)
    small = {**public, "slot_quantize.embedding.weight": torch.empty(8192, 12, device="meta")}
    with pytest.raises(pw.PublicWeightsError, match=r"^slot_quantize.embedding.weight: .*\[8192, 12\]"):
        pw.convert(small, rules, pw.TOKENIZER_IGNORED, expected)
    dino = {**public, "encode_transformer.backbone.blocks.0.ls1.gamma": torch.empty(1, device="meta")}
    assert len(pw.convert(dino, rules, pw.TOKENIZER_IGNORED, expected)) == len(expected)  # dropped on purpose

    gpt = {k: tuple(v) for k, v in FIXTURE["gpt"]["llamagen"]["models"]["GPT-B"]["params"].items()}
    with pytest.raises(pw.PublicWeightsError, match=r"^tok_embeddings.weight: 13 layers of width 768"):
        pw.gpt_config({**gpt, "layers.12.ffn_norm.weight": (768,)})
    with pytest.raises(pw.PublicWeightsError, match=r"^cls_embedding.embedding_table.weight: 1000 rows"):
        pw.gpt_config({**gpt, pw.TABLE: (1000, 768)})


def test_checkpoint_entries_prefixes_and_non_tensors():
    w = torch.zeros(2)
    assert pw.state_dict({"model": {"a": w}, "ema": {"module.b": w}, "args": argparse.Namespace()}) == (
        "ema", {"b": w})
    assert pw.state_dict({"model": {"a": w}, "ema": {"b": w}}, prefer="model") == ("model", {"a": w})
    assert pw.state_dict({"_orig_mod.c": w}) == ("<top level>", {"c": w})
    with pytest.raises(pw.PublicWeightsError, match=r"^steps: not a tensor"):
        pw.state_dict({"steps": 5, "x": w})


def test_public_behaviour_switches():
    cos, sin = rope_2d_tables(grid=4, head_dim=16, base=10000.0, cls="zero")
    ref_cos, ref_sin = rope_2d_tables(grid=4, head_dim=16, base=10000.0)
    assert (cos[0] == 0).all() and (sin[0] == 0).all() and (ref_cos[0] == 1).all()
    torch.testing.assert_close((cos[1:], sin[1:]), (ref_cos[1:], ref_sin[1:]))

    torch.manual_seed(0)
    layer = AnchorEncoderLayer(16, 1, 2, 2, 32)
    public = AnchorEncoderLayer(16, 1, 2, 2, 32, pos_on_values=True)
    public.load_state_dict(layer.state_dict())
    q, ref, maps = torch.randn(2, 4, 16), torch.rand(2, 4, 2), [torch.randn(2, 16, 3, 3)]
    zero = torch.zeros(1, 4, 16)
    torch.testing.assert_close(layer(q, zero, ref, maps), public(q, zero, ref, maps))  # no positions: same
    pos = torch.randn(1, 4, 16)
    assert not torch.allclose(layer(q, pos, ref, maps), public(q, pos, ref, maps))

    cfg = tiny_tokenizer_config(kind="vqgan")
    assert "decoder.pixel.norm_out.weight" in build_tokenizer(cfg).state_dict()
    without = build_tokenizer(replace(cfg, dec_out_norm=False))
    assert "decoder.pixel.norm_out.weight" not in without.state_dict()


def _synthetic(shapes: dict[str, tuple], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v, generator=g).to(torch.bfloat16) for k, v in shapes.items()}


def test_round_trip_through_import_weights_into_the_stage_loaders(tmp_path):
    """Synthetic checkpoints of the recorded names and shapes (random bf16) -> import-weights ->
    the loaders the sample/evaluate stages use. ~185M parameters at the published sizes (GPT-B,
    the smallest released GPT): ~15 s, what building and loading the two real models costs."""
    tok_sd = _synthetic(PUBLIC_TOKENIZER, 0)
    gpt_shapes = FIXTURE["gpt"]["vfmtok"]["models"]["GPT-B"]["params"]
    gpt_sd = _synthetic({k: tuple(v) for k, v in gpt_shapes.items()}, 1)
    torch.save({"ema": tok_sd, "model": {}, "steps": 5, "args": argparse.Namespace(epochs=50)},
               tmp_path / "vfmtok-tokenizer.pt")
    torch.save({"ema": gpt_sd, "args": argparse.Namespace(gpt_model="GPT-B")}, tmp_path / "GPT-B-300e.pt")
    (tmp_path / "dinov2.safetensors").write_bytes(b"a stand-in: the loaders get the backbone passed in")
    params = tmp_path / "params.yaml"
    text = profile_text("imagenet_release", REPO)
    params.write_text(text.replace("/data/weights/dinov2_vitl14_reg4.safetensors",
                                   str(tmp_path / "dinov2.safetensors")))

    lines = import_weights.run(str(tmp_path), str(params), str(tmp_path / "vfmtok-tokenizer.pt"),
                               str(tmp_path / "GPT-B-300e.pt"), 256, None, "ema")
    assert len(lines) == 2 and "73.5M parameters" in lines[0] and "GPT-B, 110.9M parameters" in lines[1]
    layout, p = Layout(tmp_path), load_params(params, check_paths=False)
    tokenizer, _ = load_tokenizer(layout, p, torch.device("cpu"), backbone=import_weights.DINOV2_L_336)
    gpt = load_generator(layout, p, 1000, torch.device("cpu"))

    sd = tokenizer.state_dict()
    d = "decode_transformer"
    cls = tok_sd[f"{d}.cls_token"] + tok_sd[f"{d}.position_embedding"][:, :1]
    torch.testing.assert_close(sd["decoder.cls"], cls.float())
    q, k, v = (tok_sd[f"{d}.transformer.layers.3.attn1.{n}_proj.weight"].float() for n in "qkv")
    torch.testing.assert_close(sd["decoder.blocks.3.attn.qkv.weight"], torch.cat([q, k, v]))
    torch.testing.assert_close(sd["pixel_decoder.mid.1.qkv.bias"],
                               torch.cat([tok_sd[f"decoder.mid.1.{n}.bias"].float() for n in "qkv"]))
    torch.testing.assert_close(sd["encoder.layers.2.norm2.weight"],
                               tok_sd["encode_transformer.transformer.layers.2.norm3.weight"].float())
    assert sd["decoder.pixel.pos"].shape == (1, 441, 512) and sd["decoder.registers"].shape == (1, 0, 512)
    torch.testing.assert_close(gpt.state_dict()["cls_embedding.table.weight"], gpt_sd[pw.TABLE].float())
    assert gpt.config.cls_rope == "zero" and (gpt.rope_cos[0] == 0).all()
    ids = torch.tensor([[5, 9, 700]])
    with torch.no_grad():
        assert gpt.forward_prefix(torch.tensor([3]), ids).shape == (1, 4, 16384)
        codes = tokenizer.encode(None, [torch.randn(1, 1024, 24, 24) for _ in range(4)])  # DINOv2 levels
    assert codes.shape == (1, 256) and int(codes.max()) < 16384  # (decoding 336 px: 20 s on a CPU)

    def gpt_only(name: str) -> list[str]:
        return import_weights.run(str(tmp_path), str(params), None, str(tmp_path / name), 256, None, "ema")

    (tmp_path / "not-ours.pt").write_bytes(b"PK\x03\x04 no checkpoint")
    with pytest.raises(import_weights.WeightsImportError, match=r"not-ours.pt: not readable as a PyTorch"):
        gpt_only("not-ours.pt")
    torch.save({"ema": {**gpt_sd, pw.TABLE: torch.zeros(1000, 768)}}, tmp_path / "no-null-class.pt")
    with pytest.raises(import_weights.WeightsImportError, match=r"no-null-class.pt: cls_embedding.embedding"):
        gpt_only("no-null-class.pt")


def test_params_that_would_refuse_the_imports_are_named(tmp_path):
    backbone = BackboneConfig(**pw.BACKBONE, weights="/w.safetensors")
    imported = [import_weights.Imported(tmp_path, "", {"tokenizer": to_dict(pw.tokenizer_config()),
                                                       "backbone": to_dict(backbone)})]
    p = load_profile("imagenet", REPO, check_paths=False)
    diffs = import_weights.params_differences(p, imported)
    assert "tokenizer.n_registers: 4 in params, 0 imported" in diffs
    assert "tokenizer.enc_pos_on_values: False in params, True imported" in diffs
    assert any(d.startswith("backbone.weights:") for d in diffs)


def test_a_foreign_gpt_file_is_refused_by_its_first_unmatched_key():
    gpt = {k: tuple(v) for k, v in FIXTURE["gpt"]["llamagen"]["models"]["GPT-B"]["params"].items()}
    foreign = {**gpt, "layers.0.attention.q_proj.weight": (768, 768), "lm_head.weight": (10, 768)}
    with pytest.raises(pw.PublicWeightsError, match=r"^layers.0.attention.q_proj.weight: no counterpart"):
        pw.gpt_config(foreign)
    buffers = {"freqs_cis": (257, 32, 2), "layers.3.attention.kv_cache.k_cache": (1,)}
    assert pw.gpt_config({**gpt, **buffers})[0] == "GPT-B"
