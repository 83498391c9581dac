"""Frozen backbones: real EfficientNet weights, level shapes, taps, local loading, freezing."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch a hub

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vfmtok.backbones import build_backbone
from vfmtok.config import BackboneConfig

TINY = dict(depth=4, embed_dim=64, num_heads=2)
# (timm name, image size, prefix tokens to drop, expected normalisation mean)
VITS = {
    "dinov2_reg": ("vit_small_patch14_reg4_dinov2", 56, 5, (0.485, 0.456, 0.406)),
    "clip": ("vit_base_patch16_clip_224", 64, 1, (0.48145466, 0.4578275, 0.40821073)),
    "siglip": ("vit_base_patch16_siglip_224", 64, 0, (0.5, 0.5, 0.5)),
}
TAPS = [1, 2, 4]


def _vit_cfg(key: str, **over) -> BackboneConfig:
    name, size, _, _ = VITS[key]
    kw = dict(kind="timm_vit", model=name, weights="random", image_size=size, taps=TAPS,
              allow_random_init=True, model_kwargs=dict(TINY))
    kw.update(over)
    return BackboneConfig(**kw)


def _images(b: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1  # [-1, 1]


@pytest.fixture(scope="module")
def effnet64():
    return build_backbone(BackboneConfig(kind="efficientnet_lite0", image_size=64))


def test_bundled_efficientnet_classifies_chelsea_as_cat():
    import skimage.data

    bb = build_backbone(BackboneConfig(kind="efficientnet_lite0", image_size=224))
    img = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1).float()[None] / 127.5 - 1
    img = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True)
    logits = bb.classify(img)
    assert logits.shape == (1, 1000)
    assert 281 <= logits.argmax(-1).item() <= 285  # ImageNet domestic cats
    assert logits.softmax(-1).max().item() > 0.5


def test_efficientnet_level_shapes(effnet64):
    out = effnet64(_images(2, 64))
    shapes = [tuple(y.shape[1:]) for y in out.levels]
    assert shapes == [(40, 8, 8), (112, 4, 4), (320, 2, 2)]
    assert effnet64.level_channels == [40, 112, 320]
    assert effnet64.level_shapes == [(8, 8), (4, 4), (2, 2)]
    assert effnet64.semantic_channels == 320
    assert out.semantic is out.levels[-1]
    assert all(torch.isfinite(y).all() and y.dtype == torch.float32 for y in out.levels)


def test_efficientnet_levels_match_reference_forward(effnet64):
    # Independent reference: stem + blocks by hand, taps at the last block of each stage.
    net, x = effnet64.net, _images(1, 64, seed=1)
    with torch.no_grad():
        h = net._swish(net._bn0(net._conv_stem(x)))  # [-1, 1] input is the TF-lite norm
        ref = {}
        for i, blk in enumerate(net._blocks):
            h = blk(h)
            ref[i] = h
    out = effnet64(x)
    for y, i in zip(out.levels, (4, 10, 15), strict=True):
        torch.testing.assert_close(y, ref[i])


@pytest.mark.parametrize("key", list(VITS))
def test_vit_levels_raw_except_last_normed(key):
    name, size, n_prefix, mean = VITS[key]
    bb = build_backbone(_vit_cfg(key))
    vit, grid = bb.vit, size // (14 if "patch14" in name else 16)
    assert vit.num_prefix_tokens == n_prefix
    assert bb.level_shapes == [(grid, grid)] * 3 and bb.level_channels == [64] * 3
    torch.testing.assert_close(bb.in_scale.flatten(), 0.5 / torch.tensor(vit.pretrained_cfg["std"]))
    assert vit.pretrained_cfg["mean"] == pytest.approx(mean)

    x = _images(2, size)
    out = bb(x)
    assert [tuple(y.shape) for y in out.levels] == [(2, 64, grid, grid)] * 3
    assert out.semantic is out.levels[-1]

    # Reference: walk the blocks by hand on the normalised input, drop the prefix tokens.
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(vit.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        t = vit.norm_pre(vit._pos_embed(vit.patch_embed(((x + 1) / 2 - mean_t) / std_t)))
        raw = {}
        for i, blk in enumerate(vit.blocks):
            t = blk(t)
            raw[i + 1] = t[:, n_prefix:]  # (B, N, C)
        normed_last = vit.norm(raw[TAPS[-1]])

    def as_map(tok):
        return tok.transpose(1, 2).reshape(2, 64, grid, grid)

    for y, tap in zip(out.levels[:-1], TAPS[:-1], strict=True):
        torch.testing.assert_close(y, as_map(raw[tap]))
    torch.testing.assert_close(out.levels[-1], as_map(normed_last))
    assert not torch.allclose(out.levels[-1], as_map(raw[TAPS[-1]]), atol=1e-2)


def test_vit_prunes_blocks_after_last_tap():
    bb = build_backbone(_vit_cfg("dinov2_reg", taps=[1, 2]))
    assert len(bb.vit.blocks) == 2
    assert [tuple(y.shape) for y in bb(_images(1, 56)).levels] == [(1, 64, 4, 4)] * 2


@pytest.mark.parametrize("key", ["dinov2_reg", "clip"])
def test_vit_loads_local_safetensors(tmp_path, key):
    name, size, _, _ = VITS[key]
    torch.manual_seed(0)
    src = timm.create_model(name, pretrained=False, img_size=size, num_classes=0, **TINY)
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path))

    bb = build_backbone(_vit_cfg(key, weights=str(path), allow_random_init=False, taps=[2, 4]))
    own = bb.vit.state_dict()
    assert len(own) > 20
    for k, v in own.items():
        torch.testing.assert_close(v, sd[k], rtol=0, atol=0, msg=k)
    # And a random build of the same architecture differs, so the equality above is not luck.
    rnd = build_backbone(_vit_cfg(key, taps=[2, 4]))
    assert not torch.equal(rnd.vit.blocks[0].attn.qkv.weight, own["blocks.0.attn.qkv.weight"])


def test_vit_pos_embed_resampled_to_image_size(tmp_path):
    # Real DINOv2 files are at 518 px (37x37); here a 98 px (7x7) file is built at 56 px (4x4).
    name = VITS["dinov2_reg"][0]
    src = timm.create_model(name, pretrained=False, img_size=98, num_classes=0, **TINY)
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    path = tmp_path / "big.safetensors"
    save_file(sd, str(path))
    bb = build_backbone(_vit_cfg("dinov2_reg", weights=str(path), allow_random_init=False))
    assert sd["pos_embed"].shape[1] == 49 and bb.vit.pos_embed.shape[1] == 16
    torch.testing.assert_close(bb.vit.blocks[3].mlp.fc2.weight, sd["blocks.3.mlp.fc2.weight"])
    assert [tuple(y.shape) for y in bb(_images(1, 56)).levels] == [(1, 64, 4, 4)] * 3


def test_vit_file_with_missing_keys_is_refused(tmp_path):
    # CLIP's timm cfg has a classifier, so timm loads non-strictly: we must still refuse.
    name, size, _, _ = VITS["clip"]
    src = timm.create_model(name, pretrained=False, img_size=size, num_classes=0, **TINY)
    sd = {k: v.contiguous() for k, v in src.state_dict().items() if not k.startswith("blocks.1.")}
    path = tmp_path / "partial.safetensors"
    save_file(sd, str(path))
    with pytest.raises(RuntimeError, match="blocks.1"):
        build_backbone(_vit_cfg("clip", weights=str(path), allow_random_init=False))


def test_missing_weights_file_names_the_path(tmp_path):
    path = str(tmp_path / "nope" / "dinov2.safetensors")
    with pytest.raises(FileNotFoundError, match="nope/dinov2.safetensors"):
        build_backbone(_vit_cfg("dinov2_reg", weights=path))
    with pytest.raises(FileNotFoundError, match="nope/dinov2.safetensors"):
        build_backbone(BackboneConfig(kind="efficientnet_lite0", weights=path))


def test_random_init_refused_unless_allowed():
    with pytest.raises(ValueError, match="allow_random_init"):
        build_backbone(_vit_cfg("siglip", allow_random_init=False))
    with pytest.raises(ValueError, match="allow_random_init"):
        build_backbone(BackboneConfig(kind="efficientnet_lite0", weights="random"))
    ok = build_backbone(BackboneConfig(kind="efficientnet_lite0", weights="random",
                                       allow_random_init=True))
    assert ok.level_channels == [40, 112, 320]


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="taps"):
        build_backbone(_vit_cfg("clip", taps=[2, 5]))
    with pytest.raises(ValueError, match="taps"):
        build_backbone(_vit_cfg("clip", taps=[3, 2]))
    with pytest.raises(ValueError, match="local weights file"):
        build_backbone(_vit_cfg("clip", weights="bundled"))
    with pytest.raises(ValueError, match="hub"):
        build_backbone(_vit_cfg("clip", model="hf-hub:timm/vit_base_patch16_clip_224.openai"))
    bb = build_backbone(_vit_cfg("clip"))
    with pytest.raises(ValueError, match="64x64"):
        bb(_images(1, 32))


@pytest.mark.parametrize("kind", ["efficientnet", "vit"])
def test_frozen_eval_and_no_grad(kind, effnet64):
    bb = effnet64 if kind == "efficientnet" else build_backbone(_vit_cfg("dinov2_reg"))
    size = bb.image_size
    assert all(not p.requires_grad for p in bb.parameters())
    assert bb.train() is bb
    assert not bb.training and not any(m.training for m in bb.modules())
    x = _images(2, size).requires_grad_(True)
    out = bb(x)
    assert all(not y.requires_grad and y.grad_fn is None for y in out.levels)
    # Deterministic: eval mode means no dropout / drop-path noise between calls.
    torch.testing.assert_close(bb(x.detach()).semantic, out.semantic, rtol=0, atol=0)


def test_bf16_autocast_cpu(effnet64):
    vit = build_backbone(_vit_cfg("siglip"))
    for bb in (effnet64, vit):
        x = _images(2, bb.image_size)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = bb(x)
        ref = bb(x)
        for y, r in zip(out.levels, ref.levels, strict=True):
            assert y.dtype == torch.float32 and torch.isfinite(y).all()
            assert (y - r).abs().mean() < 0.1 * r.abs().mean()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_autocast():
    for cfg in (BackboneConfig(kind="efficientnet_lite0", image_size=64), _vit_cfg("dinov2_reg")):
        bb = build_backbone(cfg).cuda()
        x = _images(2, cfg.image_size).cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = bb(x)
        fp32 = bb(x)
        for y, r in zip(out.levels, fp32.levels, strict=True):
            assert y.is_cuda and y.dtype == torch.float32 and not y.requires_grad
            assert torch.isfinite(y).all()
            assert (y - r).abs().mean() < 0.1 * r.abs().mean()
