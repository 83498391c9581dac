"""No params file passes ``vfmtok-pipeline check`` and then fails where a stage builds its models.

Every profile in ``params/`` and a few hundred seeded random edits of them (one to three fields at
a time, to plausible values: small integers, divisors and non-divisors, other choices and zoo
names, other taps and levels, another launch size) go through ``check`` (``load_params``, then
``pipeline.commands.model_check.check_models``) and through the models the stages build from them, the way
the stages build them (:func:`stage_models`: on the CPU with one tiny forward where that is cheap,
on the meta device otherwise). A stage that fails where check passed is a hole in check; a stage
that fails with anything but a ``ConfigError`` where check failed would print a traceback
instead of its one line. Weights and LPIPS files do not exist here: weights are random init of the
same architecture (``weights: random``) and LPIPS is swapped for the backbone distance.
"""

from __future__ import annotations

import copy
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.commands.model_check import check_models
from pipeline.params import Params, load_params
from pipeline.params.profiles import profile_data, profile_names
from tests.conftest import REPO
from vfmtok import distributed, zoo
from vfmtok.backbones import build_backbone
from vfmtok.config import BackboneConfig
from vfmtok.config_schema import ConfigError, to_dict
from vfmtok.losses import TokenizerLoss
from vfmtok.sampling import generate, sample_logits, sample_seeds
from vfmtok.tokenizer import build_tokenizer

PROFILES = profile_names(REPO)
N_EDITS, SEED = 200, 20240607
# The paper-scale profiles build on the meta device only (seconds each): fewer edits start there.
PROFILE_WEIGHTS = {"smoke": 4, "demo": 3, "claims": 2, "imagenet": 1, "imagenet_release": 1}

TIMM_MODELS = ["vit_tiny_patch16_224", "vit_small_patch14_dinov2", "vit_base_patch16_clip_224.openai",
               "vit_large_patch14_reg4_dinov2", "deit_tiny_distilled_patch16_224", "eva02_tiny_patch14_224",
               "resnet18", "swin_tiny_patch4_window7_224", "vit_no_such_model_224",
               "hf-hub:timm/vit_tiny_patch16_224"]
SMALL_VITS = {"vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "eva02_tiny_patch14_224",
              "vit_small_patch14_dinov2"}
SMALL_GENERATORS = {"GPT-Tiny", "GPT-Small", "RAR-Tiny"}
MULTS = [[1], [1, 2], [1, 1, 2], [1, 1, 2, 2], [1, 1, 2, 4], [1, 1, 2, 2, 4], [1, 1, 1, 1, 1, 1]]
TAPS = [[], [8, 16, 32], [4, 8, 16, 32], [2, 4], [32], [2], [16, 8], [64], [1, 2, 3, 4], [6, 12, 18, 24],
        [3, 6], [12], [0], [25], [4, 2], [1, 12], [24]]
CHOICES: dict[str, list] = {
    "prepare.resolution": [8, 16, 24, 28, 32, 48, 56, 64, 96, 112, 224, 336],
    "backbone.taps": TAPS, "judge.taps": TAPS,
    "backbone.input_size": [0, 28, 32, 56, 64, 100, 112], "judge.input_size": [0, 32, 56, 64, 100],
    "backbone.model": TIMM_MODELS, "judge.model": TIMM_MODELS,
    "tokenizer.kind": ["vfmtok", "vqgan"],
    "tokenizer.n_tokens": [1, 4, 9, 16, 25, 36, 64, 256, 441, 12],
    "tokenizer.dim": [8, 16, 24, 32, 48, 64, 128, 512],
    "tokenizer.n_heads": [1, 2, 3, 4, 6, 8],
    "tokenizer.n_points": [1, 2, 3, 4],
    "tokenizer.enc_layers": [1, 2, 3], "tokenizer.dec_layers": [1, 2],
    "tokenizer.enc_ffn_dim": [1, 16, 64, 256], "tokenizer.dec_ffn_dim": [1, 16, 64, 344],
    "tokenizer.codebook_size": [2, 16, 64, 512, 16384, 65536, 70000],
    "tokenizer.codebook_dim": [1, 2, 4, 8, 12],
    "tokenizer.pixel_grid": [1, 2, 3, 4, 7, 8, 16, 21],
    "tokenizer.n_registers": [0, 1, 4],
    "tokenizer.conv_ch": [1, 4, 8, 12, 16, 24], "tokenizer.conv_mult": MULTS,
    "tokenizer.conv_res_blocks": [1, 2], "tokenizer.conv_padding": ["zeros", "replicate", "reflect"],
    "tokenizer.vqgan_ch": [1, 4, 8, 16], "tokenizer.vqgan_mult": MULTS,
    "tokenizer.semantic": [True, False], "tokenizer.semantic_level": [-5, -4, -3, -2, -1, 0, 1, 2, 3, 4],
    "tokenizer.quant_batchnorm": [True, False], "tokenizer.dec_slot_skip": [True, False],
    "tokenizer.enc_pos_on_values": [True, False], "tokenizer.dec_out_norm": [True, False],
    "train_tokenizer.batch_size": [1, 2, 3, 4, 8, 64],
    "train_tokenizer.loss.gan_weight": [0.0, 0.1, 0.5],
    "train_tokenizer.loss.perceptual": ["backbone", "none"],
    "train_tokenizer.loss.gan_loss": ["hinge", "non_saturating"],
    "train_tokenizer.loss.disc_spectral_norm": [True, False],
    "ar_model.model": ["GPT-Tiny", "GPT-Small", "GPT-B", "GPT-L", "RAR-Tiny", "RAR-B"],
    "ar_model.cls_rope": ["identity", "zero"],
    "train_ar.batch_size": [1, 2, 3, 8, 64, 512],
    "train_ar.quality_every": [0, 3],
    "tokenize.splits": [["train", "val"], ["val"], ["train"]],
    "sample.top_p": [0.0, 0.5, 1.0], "sample.top_k": [0, 1, 50], "sample.temperature": [0.0, 0.7, 1.0],
    "sample.cfg_scale": [0.0, 1.0, 4.0], "sample.cfg_power": [0.0, 2.5],
    "backbone.kind": ["switch"], "judge.kind": ["switch"],  # with a model, random weights, default taps
    "WORLD_SIZE": [1, 2, 3, 4],  # the launch: torchrun's process count
}


def base(name: str) -> dict:
    """Profile ``name`` as a dict, with random init for its weights files and no LPIPS files."""
    if name not in _BASES:
        _BASES[name] = _read_base(name)
    return copy.deepcopy(_BASES[name])


_BASES: dict[str, dict] = {}


def _read_base(name: str) -> dict:
    data = profile_data(name, REPO)
    for section in ("backbone", "judge"):
        data[section].update(weights="random", allow_random_init=True)
    loss = data["train_tokenizer"]["loss"]
    if loss["perceptual"] == "lpips":
        loss.update(perceptual="backbone", lpips_vgg_weights="", lpips_lin_weights="")
    return data


def apply(data: dict, key: str, value) -> None:
    """Set dotted ``key`` (``WORLD_SIZE`` is the launch's, kept beside the sections)."""
    if key.endswith(".kind") and value == "switch":
        section = data[key.split(".")[0]]
        vit = section["kind"] != "timm_vit"
        section.update(kind="timm_vit" if vit else "efficientnet_lite0", taps=[],
                       model="vit_tiny_patch16_224" if vit else "", model_kwargs={"depth": 4} if vit else {})
        return
    *path, last = key.split(".")
    node = data
    for part in path:
        node = node[part]
    node[last] = copy.deepcopy(value)


def edits(rng: random.Random, n: int) -> list[tuple[str, list[tuple[str, object]]]]:
    names, weights = zip(*PROFILE_WEIGHTS.items(), strict=True)
    out = []
    for _ in range(n):
        keys = rng.sample(sorted(CHOICES), rng.choice([1, 1, 2, 2, 3]))
        out.append((rng.choices(names, weights)[0], [(k, rng.choice(CHOICES[k])) for k in keys]))
    return out


# ----------------------------------------------------------------------------- the stages' models


def _small_backbone(cfg: BackboneConfig) -> bool:
    if cfg.run_size > 128:
        return False
    return cfg.kind == "efficientnet_lite0" or cfg.model in SMALL_VITS


def small(params: Params) -> bool:
    """Cheap enough to build on the CPU and run once (a fraction of a second)."""
    t = params.tokenizer
    return (_small_backbone(params.backbone) and _small_backbone(params.judge) and t.dim <= 128
            and t.image_size <= 64 and t.n_tokens <= 64 and t.codebook_size <= 16384
            and params.ar_model.model in SMALL_GENERATORS)


_BUILT: dict[str, object] = {}


def _once(key: tuple, build):
    """Each distinct config is built once per test run (check's builds and the stages' apart): a
    builder is a deterministic function of its config (seeded), so an edit that leaves a model's
    config alone reuses the model, or its error."""
    k = repr(key)
    if k not in _BUILT:
        torch.manual_seed(0)
        try:
            _BUILT[k] = build()
        except Exception as e:  # noqa: BLE001 - replayed below, as the stage would raise it
            _BUILT[k] = e
    if isinstance(_BUILT[k], Exception):
        raise _BUILT[k]
    return _BUILT[k]


def stage_models(params: Params, world: int) -> None:
    """What each stage builds from ``params`` under a launch of ``world`` processes (see the
    stage modules), and on the CPU one tiny step of each where it is cheap."""
    distributed.per_rank_batch(params.train_tokenizer.batch_size, world)  # vfmtok.tokenizer_training
    distributed.per_rank_batch(params.train_ar.batch_size, world)  # pipeline/stages/train_ar.py
    dev = torch.device("cpu" if small(params) else "meta")
    t, vfm = params.tokenizer, params.tokenizer.kind == "vfmtok"

    def on(fn, *args):
        with dev:
            return fn(*args)

    backbone = _once((dev, to_dict(params.backbone)), lambda: on(build_backbone, params.backbone))
    tokenizer = _once((dev, to_dict(t), vfm and to_dict(params.backbone)),
                      lambda: on(build_tokenizer, t, backbone if vfm else None))
    loss = _once((dev, to_dict(params.train_tokenizer.loss), to_dict(params.backbone)),
                 lambda: on(TokenizerLoss, params.train_tokenizer.loss, backbone))
    gen_cfg = params.ar_model.model_config(t.codebook_size, t.n_tokens, 10)
    generator = _once((dev, type(gen_cfg).__name__, to_dict(gen_cfg)),
                      lambda: on(zoo.build_from_config, gen_cfg))
    judge = _once((dev, to_dict(params.judge)), lambda: on(build_backbone, params.judge))
    s = params.sample  # vfmtok.sampling.sample_logits with the sample stage's settings
    sample_logits(torch.randn(2, 7), s.temperature, s.top_k, s.top_p)
    if dev.type == "cpu":
        _one_step(params, world, backbone, tokenizer, loss, generator, judge)


def _one_step(params: Params, world: int, backbone, tokenizer, loss, generator, judge) -> None:
    """A train step's forward of the tokenizer (and its loss), encode/decode, a train step's
    forward of the generator and a few sampled tokens, the judge on the images."""
    torch.manual_seed(0)
    rows = min(2, params.train_tokenizer.batch_size // world)  # one process's share of the batch
    size = params.prepare.resolution
    x = torch.rand(rows, 3, size, size) * 2 - 1
    levels = backbone(x).levels if params.tokenizer.kind == "vfmtok" else None
    tokenizer.train()
    out = tokenizer(x, levels)
    loss.generator_losses(x, out.recon, 1.0, levels)
    loss.discriminator_loss(x, out.recon.detach(), 1.0, levels)
    tokenizer.eval()
    ids = tokenizer.encode(x, levels)
    tokenizer.decode(ids)
    n, vocab = generator.config.n_tokens, generator.config.vocab_size
    tokens, labels = torch.randint(0, vocab, (2, n)), torch.zeros(2, dtype=torch.long)
    step = generator.step_fn(params.train_ar)
    generator.train()
    step(generator, tokens, labels, 0) if step else generator(tokens, labels, targets=tokens)
    s = params.sample
    generate(generator, labels, min(n, 4), temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
             cfg_scale=s.cfg_scale, cfg_power=s.cfg_power, seeds=sample_seeds(s.seed, 0, 2))
    judge(x)


# ----------------------------------------------------------------------------- the comparison


def outcome(tmp_path: Path, data: dict, world: int, monkeypatch) -> tuple[str, str]:
    """``(verdict, detail)``: verdict "ok", "refused" (both refuse), "params" (load_params refuses),
    "hole" (check passes, a stage fails) or "traceback" (check refuses, a stage fails otherwise)."""
    monkeypatch.setenv("WORLD_SIZE", str(world))
    path = tmp_path / "params.yaml"
    path.write_text(yaml.dump(data, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper)))
    try:
        params = load_params(path, check_paths=False)
        params.check_launch(world)  # check's launch rules (both training stages)
    except ConfigError as e:
        return "params", e.key
    try:
        check_models(params, machine=False)
        refused = None
    except ConfigError as e:
        refused = e
    except Exception as e:  # noqa: BLE001 - check itself must fail with its one line
        return "traceback", f"check: {type(e).__name__}: {' '.join(str(e).split())[:160]}"
    try:
        stage_models(params, world)
    except Exception as e:  # noqa: BLE001 - any failure is a finding
        if refused is None:
            return "hole", f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
        if not isinstance(e, ConfigError):
            return "traceback", f"{refused.key} / {type(e).__name__}: {str(e)[:120]}"
        return "refused", refused.key
    if refused is not None:
        return "traceback", f"check refuses {refused.key} but the stages build it: {refused}"
    return "ok", ""


@pytest.fixture
def check_builds_once(monkeypatch):
    """check's builders (``pipeline.commands.model_check``'s names for them) behind :func:`_once`."""
    from pipeline.commands import model_check as buildcheck

    real = {name: getattr(buildcheck, name)
            for name in ("build_backbone", "build_tokenizer", "TokenizerLoss", "build_from_config")}

    def key(*configs):
        return ("check", *(c and (type(c).__name__, to_dict(c)) for c in configs))

    def config(backbone):
        return backbone.config if backbone is not None else None

    def bb(cfg):
        return _once(key(cfg), lambda: real["build_backbone"](cfg))

    def tok(cfg, backbone):
        return _once(key(cfg, config(backbone)), lambda: real["build_tokenizer"](cfg, backbone))

    def loss(cfg, backbone):
        return _once(key(cfg, config(backbone)), lambda: real["TokenizerLoss"](cfg, backbone))

    def gen(cfg):
        return _once(key(cfg), lambda: real["build_from_config"](cfg))

    for name, fn in (("build_backbone", bb), ("build_tokenizer", tok), ("TokenizerLoss", loss),
                     ("build_from_config", gen)):
        monkeypatch.setattr(buildcheck, name, fn)


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_passes_check_and_builds(tmp_path, monkeypatch, name):
    assert outcome(tmp_path, base(name), 1, monkeypatch) == ("ok", "")


@pytest.mark.slow
def test_random_edits_find_no_case_that_check_passes_and_a_stage_rejects(tmp_path, monkeypatch, one_thread,
                                                                          check_builds_once):
    rng, verdicts, findings = random.Random(SEED), Counter(), []
    for name, changes in edits(rng, N_EDITS):
        data, world = base(name), 1
        for key, value in changes:
            if key == "WORLD_SIZE":
                world = value
            else:
                apply(data, key, value)
        verdict, detail = outcome(tmp_path, data, world, monkeypatch)
        verdicts[verdict] += 1
        if verdict in ("hole", "traceback"):
            findings.append(f"{verdict}: {name} + {changes}: {detail}")
    assert not findings, f"{len(findings)} of {N_EDITS} edits ({dict(verdicts)}):\n" + "\n".join(findings)
    # The edits reach every outcome that matters: refused early, refused by a built model, built.
    assert verdicts["params"] and verdicts["refused"] and verdicts["ok"] > N_EDITS // 5, verdicts
