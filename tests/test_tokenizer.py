"""Tests for the VFMTok tokenizer and the pixel-only VQGAN baseline (vfmtok/tokenizer.py)."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import demo_tokenizer_config, smooth_images
from vfmtok.backbones import build_backbone
from vfmtok.config import BackboneConfig, TokenizerConfig
from vfmtok.config_schema import ConfigError, to_dict, validate
from vfmtok.model_folder import ConfigMismatch, require_same
from vfmtok.tokenizer import Tokenizer, build_tokenizer
from vfmtok.training import num_params


def demo_config(kind: str = "vfmtok", **overrides) -> TokenizerConfig:
    return demo_tokenizer_config(kind, **overrides)


@pytest.fixture(scope="module")
def backbone():
    return build_backbone(BackboneConfig(kind="efficientnet_lite0", image_size=64))


@pytest.fixture(scope="module")
def model(backbone):
    torch.manual_seed(0)
    return build_tokenizer(demo_config(), backbone)


def test_paper_config_has_about_73m_trainable_parameters():
    fake = SimpleNamespace(level_channels=[1024] * 4, level_shapes=[(24, 24)] * 4, image_size=336)
    cfg = TokenizerConfig(kind="vfmtok", image_size=336, n_tokens=256)
    with torch.device("meta"):
        model = build_tokenizer(cfg, fake)
    n = num_params(model)
    assert abs(n - 73e6) / 73e6 < 0.10, n
    assert n == 73_515_183  # exact count at the paper config (documents the architecture)
    # the conv decoder upsamples 21 -> 336 and the semantic head predicts 1024 channels at 24x24
    assert model.decoder.semantic_head.out_features == 1024
    assert model.decoder.semantic.pos.shape == (1, 576, 512)
    assert model.encoder.reference_points.shape == (1, 256, 2)


def test_vfmtok_forward_encode_decode_shapes(model, backbone):
    images = smooth_images(4)
    model.train()
    out = model(images)
    assert out.recon.shape == (4, 3, 64, 64)
    assert out.indices.shape == (4, 16) and out.indices.dtype == torch.long
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < 1024
    assert torch.isfinite(out.vq.loss) and out.vq.loss.item() > 0
    assert 0.0 < out.semantic_loss.item() <= 2.0
    model.eval()
    out_eval = model(images)
    assert float(out_eval.semantic_loss) == 0.0  # the semantic branch runs in training only
    ids = model.encode(images)
    assert torch.equal(ids, out_eval.indices)
    recon = model.decode(ids)
    assert recon.shape == (4, 3, 64, 64)
    assert float(recon.min()) >= -1.0 and float(recon.max()) <= 1.0
    torch.testing.assert_close(recon, out_eval.recon.clamp(-1, 1), atol=1e-5, rtol=1e-5)
    feats = model.token_features(ids)
    assert feats.shape == (4, 16, 8)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(4, 16))
    assert model.n_tokens == 16 and model.codebook_size == 1024


def test_cached_levels_give_the_same_result_as_the_backbone(model, backbone):
    images = smooth_images(3, seed=1)
    levels = backbone(images).levels
    model.eval()
    a, b = model(images), model(images, levels)
    assert torch.equal(a.indices, b.indices)
    torch.testing.assert_close(a.recon, b.recon)
    assert torch.equal(model.encode(None, levels), a.indices)
    with pytest.raises(ValueError, match="do not match"):
        model(images, levels[:-1] + [levels[-1][:, :10]])


def test_state_dict_excludes_backbone_and_round_trips(model, backbone):
    sd = model.state_dict()
    assert sd and not any(k.startswith("backbone.") for k in sd)
    assert any(k.startswith("encoder.") for k in sd) and "quantizer.embedding.weight" in sd
    torch.manual_seed(123)
    fresh = build_tokenizer(demo_config(), backbone)
    images = smooth_images(2, seed=2)
    model.eval(), fresh.eval()
    assert not torch.equal(fresh.decode(model.encode(images)), model.decode(model.encode(images)))
    result = fresh.load_state_dict(sd)  # strict: the missing backbone keys are not an error
    assert not result.missing_keys and not result.unexpected_keys
    a, b = model(images), fresh(images)
    assert torch.equal(a.indices, b.indices)
    torch.testing.assert_close(a.recon, b.recon)
    with pytest.raises(RuntimeError, match="Missing key"):
        fresh.load_state_dict({k: v for k, v in sd.items() if k != "post_quant.weight"})


def test_deformable_detr_init_survives_construction(model):
    for layer in model.encoder.layers:
        attn = layer.deform
        pattern = attn.offset_bias_pattern().flatten()
        assert pattern.abs().sum() > 0
        torch.testing.assert_close(attn.sampling_offsets.bias.detach(), pattern)
        assert attn.sampling_offsets.weight.abs().sum() == 0
        assert attn.attention_weights.weight.abs().sum() == 0
        assert attn.attention_weights.bias.abs().sum() == 0
    # the anchors sit on the centres of a 4x4 grid, raster order (x fastest)
    ref = model.encoder.reference_points[0]
    assert ref.shape == (16, 2)
    torch.testing.assert_close(ref[1], torch.tensor([1.5 / 4, 0.5 / 4]))
    torch.testing.assert_close(ref[4], torch.tensor([0.5 / 4, 1.5 / 4]))


def test_gradients_reach_every_trained_part(backbone):
    torch.manual_seed(0)
    model = build_tokenizer(demo_config(), backbone).train()
    images = smooth_images(4, seed=3)
    out = model(images)
    (2 * F.mse_loss(out.recon, images) + out.semantic_loss + out.vq.loss).backward()
    enc = model.encoder
    named = {
        "anchor queries": enc.queries, "query pos": enc.query_pos,
        "projection": enc.projections[0].mlp[0].weight, "last projection": enc.projections[-1].mlp[3].weight,
        "deform offsets": enc.layers[0].deform.sampling_offsets.weight,
        "encoder self-attn": enc.layers[-1].self_attn.qkv.weight,
        "pre quant": model.pre_quant.weight, "codebook": model.quantizer.embedding.weight,
        "post quant": model.post_quant.weight, "decoder block": model.decoder.blocks[0].attn.qkv.weight,
        "registers": model.decoder.registers, "semantic head": model.decoder.semantic_head.weight,
        "semantic mask": model.decoder.semantic.mask, "pixel mask": model.decoder.pixel.mask,
        "conv in": model.pixel_decoder.conv_in.weight, "conv out": model.pixel_decoder.conv_out.weight,
    }  # fmt: skip
    for name, p in named.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.backbone.parameters())
    trained = [p for p in model.parameters() if p.requires_grad]
    assert not any(p is q for p in trained for q in model.backbone.parameters())


def test_quant_batchnorm_off_and_eval_determinism(backbone):
    torch.manual_seed(0)
    plain = build_tokenizer(demo_config(quant_batchnorm=False), backbone)
    assert plain.quant_norm is None and not any("quant_norm" in k for k in plain.state_dict())
    with_bn = build_tokenizer(demo_config(), backbone)
    assert num_params(plain) == num_params(with_bn)  # the BatchNorm has no parameters
    assert "quant_norm.running_mean" in with_bn.state_dict()
    images = smooth_images(4, seed=6)
    with_bn.eval()
    ids = with_bn.encode(images)
    # eval uses running statistics: an image's codes do not depend on the rest of the batch
    assert torch.equal(with_bn.encode(images[:2]), ids[:2])
    plain.train()
    assert plain(images).indices.shape == (4, 16)


def test_semantic_false_has_no_semantic_branch(backbone):
    model = build_tokenizer(demo_config(semantic=False), backbone).train()
    assert model.decoder.semantic is None
    out = model(smooth_images(2))
    assert float(out.semantic_loss) == 0.0
    full = build_tokenizer(demo_config(), backbone)
    assert num_params(full) > num_params(model)


def test_vqgan_kind_needs_no_backbone():
    torch.manual_seed(0)
    model = build_tokenizer(demo_config("vqgan"), None).train()
    images = smooth_images(3, seed=4)
    out = model(images, levels=None)
    assert out.recon.shape == (3, 3, 64, 64)
    assert out.indices.shape == (3, 16) and int(out.indices.min()) >= 0 and int(out.indices.max()) < 1024
    assert float(out.semantic_loss) == 0.0
    assert not hasattr(model, "backbone") and model.decoder.semantic is None
    (2 * F.mse_loss(out.recon, images) + out.vq.loss).backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quantizer.embedding.weight.grad.abs().sum() > 0
    model.eval()
    ids = model.encode(images)
    assert torch.equal(ids, model(images).indices)
    recon = model.decode(ids)
    assert recon.shape == (3, 3, 64, 64) and float(recon.abs().max()) <= 1.0
    assert model.token_features(ids).shape == (3, 16, 8)
    with pytest.raises(ValueError, match="expected images"):
        model(smooth_images(1, size=32))


def codes_per_position(indices: torch.Tensor) -> float:
    """Mean number of distinct codes at a token position across the batch (1 = collapsed)."""
    return sum(indices[:, j].unique().numel() for j in range(indices.shape[1])) / indices.shape[1]


def test_tokens_depend_on_the_image_at_init(backbone):
    # Regression guard for the failure that ANCHOR_GAIN and the pre-quant BatchNorm fix: with
    # unit-gain anchors and no BatchNorm, 8 different images share nearly all codes at init.
    torch.manual_seed(0)
    model = build_tokenizer(demo_config(), backbone).train()
    out = model(smooth_images(8, seed=5))
    assert codes_per_position(out.indices) >= 5.0
    torch.testing.assert_close(model.encoder.norm_queries.weight.detach(), torch.full((128,), 0.1))


def _image_share(model: Tokenizer, images: torch.Tensor) -> float:
    """The share of the pixel features' variance (mask-token outputs) that differs between images."""
    with torch.no_grad():
        slots = model._quantize(model._latents(images, None)[0])[0]  # (B, N, D)
        out = model.decoder.pixel_features(slots)  # (B, D, G, G)
    return float(out.var(dim=0).mean() / out.var(dim=(0, 2, 3)).mean())


def test_slot_skip_makes_the_pixel_branch_depend_on_the_tokens_at_init(backbone):
    images = smooth_images(16, seed=3)
    torch.manual_seed(0)
    plain = build_tokenizer(demo_config(n_tokens=64), backbone).train()
    torch.manual_seed(0)
    skip = build_tokenizer(demo_config(n_tokens=64, dec_slot_skip=True), backbone).train()
    assert plain.state_dict().keys() == skip.state_dict().keys()  # no parameters of its own
    # measured: 5% of the variance depends on the image without the skip, 52% with it
    without, with_skip = _image_share(plain, images), _image_share(skip, images)
    assert without < 0.1 and with_skip > 0.3 and with_skip > 5 * without, (without, with_skip)
    out = skip(images)
    assert out.recon.shape == images.shape


@pytest.mark.slow
def test_tiny_overfit_halves_pixel_mse_without_code_collapse(backbone):
    torch.manual_seed(0)
    model = build_tokenizer(demo_config(), backbone).train()
    images = smooth_images(8, seed=5)
    levels = backbone(images).levels
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3, betas=(0.9, 0.95))
    losses = []
    for _ in range(70):
        out = model(images, levels)
        mse = F.mse_loss(out.recon, images)
        opt.zero_grad()
        (2 * mse + out.vq.loss + out.semantic_loss).backward()
        opt.step()
        losses.append(mse.item())
    first, last = losses[0], sum(losses[-3:]) / 3
    assert last <= 0.5 * first, (first, last)
    assert codes_per_position(out.indices) >= 6.0  # the 8 images keep (mostly) distinct codes


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(n_tokens=60), "perfect square"),
        (dict(pixel_grid=16), "must equal image_size"),
        (dict(conv_mult=[1, 2, 4]), "must equal image_size"),
        (dict(kind="vqgan", vqgan_mult=[1, 2, 4]), "sqrt\\(n_tokens\\)"),
        (dict(kind="vqgan", n_tokens=64), "sqrt\\(n_tokens\\)"),
        (dict(dim=130), "must divide dim"),
        (dict(dec_slot_skip=True), "pixel_grid\\*\\*2"),  # 16 tokens, an 8 x 8 grid
    ],
)
def test_validate_rejects_inconsistent_configs(overrides, message):
    cfg = dataclasses.replace(demo_config(), **overrides)
    with pytest.raises(ConfigError, match=message) as info:
        validate(cfg, "tokenizer")
    assert info.value.key.startswith("tokenizer.")
    with pytest.raises(ValueError, match=message):
        build_tokenizer(cfg, None)


def test_build_errors_for_backbone_mismatch(backbone):
    with pytest.raises(ValueError, match="needs the frozen backbone"):
        build_tokenizer(demo_config(), None)
    cfg = demo_config(image_size=128, pixel_grid=16)
    with pytest.raises(ValueError, match="backbone image_size 64"):
        build_tokenizer(cfg, backbone)


@pytest.mark.parametrize("kind", ["vfmtok", "vqgan"])
def test_save_pretrained_rebuilds_from_the_folder_alone(tmp_path, backbone, kind):
    torch.manual_seed(0)
    model = build_tokenizer(demo_config(kind), backbone if kind == "vfmtok" else None).eval()
    digest = model.save_pretrained(tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["config.json", "model.safetensors"]
    loaded = Tokenizer.from_pretrained(tmp_path / "tok")  # builds its own backbone from config.json
    assert not loaded.training and type(loaded) is type(model) and len(digest) == 64
    images = smooth_images(3, seed=4)
    assert torch.equal(loaded.encode(images), model.encode(images))
    torch.testing.assert_close(loaded.decode(model.encode(images)), model.decode(model.encode(images)))


def test_model_folder_errors_name_the_file_and_key(tmp_path, model):
    with pytest.raises(FileNotFoundError, match="config.json"):
        Tokenizer.from_pretrained(tmp_path / "nothing")
    model.save_pretrained(tmp_path / "tok")
    cfg_file = tmp_path / "tok" / "config.json"
    meta = json.loads(cfg_file.read_text())
    meta["tokenizer"]["n_tokens"] = 15
    cfg_file.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="tokenizer.n_tokens") as info:
        Tokenizer.from_pretrained(tmp_path / "tok")
    assert str(cfg_file) in str(info.value)
    # A stored config that differs from what the caller expects names the key and both values.
    with pytest.raises(ConfigMismatch, match=r"tokenizer\.dim is 128 there, 64 in params.yaml"):
        require_same(tmp_path / "tok", "tokenizer", to_dict(demo_config()), to_dict(demo_config(dim=64)),
                     "params.yaml")


@pytest.mark.cuda
def test_bf16_autocast_training_step_on_cuda(backbone):
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = build_tokenizer(demo_config(), backbone).to(dev).train()
    images = smooth_images(4).to(dev)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(images)
        loss = 2 * F.mse_loss(out.recon.float(), images) + out.vq.loss + out.semantic_loss
    loss.backward()
    assert torch.isfinite(loss) and out.recon.shape == (4, 3, 64, 64)
    assert model.encoder.queries.grad.abs().sum() > 0
    model.eval()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ids = model.encode(images)
        recon = model.decode(ids)
    assert ids.shape == (4, 16) and recon.shape == (4, 3, 64, 64)
    assert float(recon.float().abs().max()) <= 1.0
