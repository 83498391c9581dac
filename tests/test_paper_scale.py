"""params/imagenet.yaml builds the paper's models, checked on the meta device (no memory, no
weights, no download): the tokenizer's ~73M trainable parameters on the frozen DINOv2-L/14-reg4
(~304M), and the GPT and RAR zoos at their published counts with the profile's codebook, tokens
and classes.
(tests/test_gpt.py checks the zoo with LlamaGen's defaults; this checks what the profile builds.)
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline.params.profiles import load_profile
from tests.conftest import REPO
from vfmtok import distributed, zoo
from vfmtok.backbones import build_backbone
from vfmtok.gpt import GPT
from vfmtok.rar import RAR
from vfmtok.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def params():
    return load_profile("imagenet", REPO, check_paths=False)


@pytest.fixture(scope="module")
def paper_tokenizer(params):
    """DINOv2-L + tokenizer on meta: timm's own random init, never the weights file."""
    cfg = dataclasses.replace(params.backbone, weights="random", allow_random_init=True)
    with torch.device("meta"):
        backbone = build_backbone(cfg)
        tokenizer = build_tokenizer(params.tokenizer, backbone)
    return backbone, tokenizer


def test_profile_is_the_paper_setup(params):
    assert params.prepare.resolution == params.backbone.image_size == params.tokenizer.image_size == 336
    assert (params.backbone.model, params.backbone.taps) == ("vit_large_patch14_reg4_dinov2", [6, 12, 18, 24])
    tok = params.tokenizer
    assert (tok.n_tokens, tok.codebook_size, tok.codebook_dim, tok.dim) == (256, 16384, 12, 512)
    assert (tok.enc_layers, tok.dec_layers, tok.n_heads, tok.n_points) == (6, 6, 8, 4)
    assert tok.pixel_grid * 2 ** (len(tok.conv_mult) - 1) == 336
    assert params.train_tokenizer.ema_decay == 0.9999 and params.train_tokenizer.lr == 1e-4
    ar = params.train_ar
    assert (params.ar_model.model, ar.batch_size, ar.lr, ar.weight_decay) == ("GPT-L", 512, 1e-4, 0.05)
    assert distributed.per_rank_batch(ar.batch_size, 8) == 64  # the global batch splits over 8 GPUs
    assert (ar.parallel, ar.compile) == ("auto", False)


def test_tokenizer_at_paper_size_on_meta(paper_tokenizer):
    backbone, tokenizer = paper_tokenizer
    assert all(p.is_meta for p in tokenizer.parameters())
    frozen = sum(p.numel() for p in backbone.parameters())
    assert not any(p.requires_grad for p in backbone.parameters())
    assert abs(frozen - 304e6) / 304e6 < 0.01, f"DINOv2-L: {frozen / 1e6:.1f}M"
    trainable = sum(p.numel() for p in tokenizer.parameters() if p.requires_grad)
    assert abs(trainable - 73e6) / 73e6 < 0.02, f"tokenizer: {trainable / 1e6:.1f}M trainable"
    # four 1024-channel 24x24 levels (336 / 14), the last one also the semantic target
    assert backbone.level_channels == [1024] * 4 and backbone.level_shapes == [(24, 24)] * 4
    assert tokenizer.encoder.queries.shape == (1, 256, 512)
    assert tokenizer.quantizer.embedding.weight.shape == (16384, 12)  # L2-normalised 12-d codes
    # checkpoints carry the trainable tokenizer only: the backbone comes from its own file
    keys = tokenizer.state_dict().keys()
    assert keys and not any(k.startswith("backbone.") for k in keys)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("GPT-B", 111e6), ("GPT-L", 343e6), ("GPT-XL", 775e6), ("GPT-XXL", 1.4e9)],
)
def test_gpt_zoo_with_the_profile(params, name, expected):
    ar_model = dataclasses.replace(params.ar_model, model=name)
    cfg = ar_model.model_config(params.tokenizer.codebook_size, params.tokenizer.n_tokens, num_classes=1000)
    with torch.device("meta"):
        model = GPT(cfg)  # ImageNet-1k
    assert model.config.vocab_size == 16384 and model.config.n_tokens == 256
    n = sum(q.numel() for q in model.parameters())
    assert abs(n - expected) / expected < 0.02, f"{name}: {n / 1e6:.1f}M vs {expected / 1e6:.0f}M"
    # under torchrun with parallel "auto", XL and larger are sharded with FSDP2, B and L use DDP
    assert (n >= distributed.FSDP_MIN_PARAMS) == (name in ("GPT-XL", "GPT-XXL"))


@pytest.mark.parametrize("name", ["RAR-B", "RAR-L", "RAR-XL", "RAR-XXL"])
def test_rar_zoo_with_the_profile(params, name):
    """RAR over the profile's tokens: the published counts (1024 codes; tests/test_rar.py) plus the
    larger vocabulary's token table and biased head, 15360 more rows of (2 dim + 1)."""
    published = {"RAR-B": 261e6, "RAR-L": 461e6, "RAR-XL": 955e6, "RAR-XXL": 1499e6}[name]
    ar_model = dataclasses.replace(params.ar_model, model=name)
    cfg = ar_model.model_config(params.tokenizer.codebook_size, params.tokenizer.n_tokens, num_classes=1000)
    with torch.device("meta"):
        model = zoo.build_from_config(cfg)
    assert isinstance(model, RAR) and model.config.vocab_size == 16384 and model.config.n_tokens == 256
    n = sum(q.numel() for q in model.parameters())
    expected = published + (16384 - 1024) * (2 * cfg.dim + 1)
    assert abs(n - expected) / expected < 0.02, f"{name}: {n / 1e6:.1f}M vs {expected / 1e6:.0f}M"
    assert (n >= distributed.FSDP_MIN_PARAMS) == (name in ("RAR-XL", "RAR-XXL"))
