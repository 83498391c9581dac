"""Every class of params error names the file, the dotted key and the value."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path

import pytest
import yaml

from pipeline.params import Params, load_params
from pipeline.params.profiles import load_profile, profile_data
from vfmtok.config_schema import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, mutate) -> Path:
    data = profile_data("smoke", REPO)
    mutate(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _error(tmp_path: Path, mutate) -> ConfigError:
    path = _write(tmp_path, mutate)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert str(path) in str(info.value)
    return info.value


@pytest.mark.parametrize("name", ["demo", "claims", "smoke", "imagenet"])
def test_every_profile_validates_and_sizes_come_from_the_resolution(name):
    p = load_profile(name, REPO, check_paths=False)
    assert p.backbone.image_size == p.tokenizer.image_size == p.prepare.resolution


def test_imagenet_profile_is_the_paper_setup():
    p = load_profile("imagenet", REPO, check_paths=False)
    assert p.backbone.model == "vit_large_patch14_reg4_dinov2"
    assert p.backbone.taps == [6, 12, 18, 24] and p.prepare.resolution == 336


def test_unknown_key(tmp_path):
    e = _error(tmp_path, lambda d: d["prepare"].update(resolutoin=64))
    assert e.key == "prepare.resolutoin" and "unknown key" in str(e) and "64" in str(e)


def test_unknown_section(tmp_path):
    e = _error(tmp_path, lambda d: d.update(extra={"a": 1}))
    assert e.key == "extra"


def test_wrong_type(tmp_path):
    e = _error(tmp_path, lambda d: d["prepare"].update(resolution="big"))
    assert e.key == "prepare.resolution" and "'big'" in str(e) and "integer" in str(e)


def test_bool_is_not_an_integer(tmp_path):
    e = _error(tmp_path, lambda d: d["extract_features"].update(batch_size=True))
    assert e.key == "extract_features.batch_size"


def test_wrong_list_item_type(tmp_path):
    e = _error(tmp_path, lambda d: d["extract_features"].update(splits=["train", "test"]))
    assert e.key == "extract_features.splits[1]" and "'test'" in str(e)


def test_out_of_range(tmp_path):
    e = _error(tmp_path, lambda d: d["prepare"].update(resolution=4))
    assert e.key == "prepare.resolution" and ">= 8" in str(e) and "4" in str(e)


def test_bad_choice(tmp_path):
    e = _error(tmp_path, lambda d: d["prepare"].update(source="mnist"))
    assert e.key == "prepare.source" and "'mnist'" in str(e) and "fashion_mnist" in str(e)


def test_missing_key(tmp_path):
    e = _error(tmp_path, lambda d: d["prepare"].pop("shard_size"))
    assert e.key == "prepare.shard_size" and "missing" in str(e)


def test_missing_source_path(tmp_path):
    e = _error(tmp_path, lambda d: d["prepare"].update(path="/no/such/folder"))
    assert e.key == "prepare.path" and "/no/such/folder" in str(e)


def test_missing_weights_file(tmp_path):
    def mutate(d):
        d["backbone"].update(kind="timm_vit", model="vit_small_patch14_dinov2", weights="/no/w.pt")

    e = _error(tmp_path, mutate)
    assert e.key == "backbone.weights" and "/no/w.pt" in str(e)


def test_random_init_refused_unless_allowed(tmp_path):
    e = _error(tmp_path, lambda d: d["backbone"].update(weights="random"))
    assert e.key == "backbone.weights" and "allow_random_init" in str(e)
    ok = _write(tmp_path, lambda d: d["backbone"].update(weights="random", allow_random_init=True))
    assert load_params(ok).backbone.weights == "random"


def test_derived_keys_are_refused(tmp_path):
    e = _error(tmp_path, lambda d: d["backbone"].update(image_size=48))
    assert e.key == "backbone.image_size" and "set by prepare.resolution" in str(e)
    e = _error(tmp_path, lambda d: d["tokenizer"].update(image_size=48))
    assert e.key == "tokenizer.image_size"


def test_cross_field_rules_name_the_key(tmp_path):
    e = _error(tmp_path, lambda d: d["tokenizer"].update(n_tokens=15))
    assert e.key == "tokenizer.n_tokens" and "perfect square" in str(e)
    e = _error(tmp_path, lambda d: d["ar_model"].update(model="GPT-Huge"))
    assert e.key == "ar_model.model" and "GPT-Tiny" in str(e) and "RAR-L" in str(e)
    e = _error(tmp_path, lambda d: d["train_ar"].update(randomness_anneal_start=5, randomness_anneal_end=3))
    assert e.key == "train_ar.randomness_anneal_end"
    e = _error(tmp_path, lambda d: d["train_tokenizer"]["loss"].update(perceptual="lpips"))
    assert e.key == "train_tokenizer.loss.lpips_vgg_weights"


def test_ar_model_maps_onto_either_family(tmp_path):
    p = load_params(_write(tmp_path, lambda d: d["ar_model"].update(token_dropout=0.25)))
    cfg = p.ar_model.model_config(vocab_size=64, n_tokens=16, num_classes=10)
    got = (type(cfg).__name__, cfg.dim, cfg.n_layer, cfg.token_dropout, cfg.vocab_size, cfg.num_classes)
    assert got == ("GPTConfig", 128, 4, 0.25, 64, 10) and p.ar_model.family == "gpt"
    p = load_params(_write(tmp_path, lambda d: d["ar_model"].update(model="RAR-L", attn_dropout=0.1)))
    cfg = p.ar_model.model_config(vocab_size=16384, n_tokens=256, num_classes=1000)
    got = (type(cfg).__name__, cfg.dim, cfg.n_layer, cfg.mlp_dim, cfg.attn_dropout, cfg.vocab_size)
    assert got == ("RARConfig", 1024, 24, 4096, 0.1, 16384) and p.ar_model.family == "rar"


def test_missing_and_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("prepare: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_params(bad)
    assert str(bad) in str(info.value)


# ----------------------------------------------------------------------------- non-finite floats


def _float_fields(cls: type, prefix: str = "") -> list[tuple[str, bool]]:
    """``(dotted key, is a list)`` of every float-typed field of dataclass ``cls``, recursively:
    ``float``, ``float | None`` and ``list[float]`` (a field added later is covered as well)."""
    out = []
    for name, tp in typing.get_type_hints(cls).items():
        if name not in {f.name for f in dataclasses.fields(cls) if f.init}:
            continue
        key = f"{prefix}{name}"
        args = set(typing.get_args(tp))
        if dataclasses.is_dataclass(tp):
            out += _float_fields(tp, f"{key}.")
        elif typing.get_origin(tp) is list:
            if args == {float}:
                out.append((key, True))
        elif tp is float or (float in args and args <= {float, type(None)}):
            out.append((key, False))
    return out


FLOAT_FIELDS = _float_fields(Params)


def _set(data: dict, key: str, value) -> None:
    *path, last = key.split(".")
    for part in path:
        data = data.setdefault(part, {})
    data[last] = value


def test_the_float_fields_are_found():
    keys = {k for k, _ in FLOAT_FIELDS}
    assert {"train_ar.lr", "sample.top_p", "train_tokenizer.ema_decay", "tokenizer.beta",
            "train_tokenizer.loss.gan_start", "ar_model.class_dropout", "promote.min_delta",
            "train_ar.report_thresholds", "prepare.val_fraction"} <= keys
    assert ("train_ar.report_thresholds", True) in FLOAT_FIELDS and len(keys) >= 25


@pytest.mark.parametrize("key,is_list", FLOAT_FIELDS, ids=[k for k, _ in FLOAT_FIELDS])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_every_float_must_be_finite(tmp_path, capsys, key, is_list, value):
    """YAML's .nan / .inf / -.inf in any float field (a list's items too) is the usual one line,
    from load_params and from ``vfmtok-pipeline check``."""
    from pipeline.cli import main

    path = _write(tmp_path, lambda d: _set(d, key, [value] if is_list else value))
    assert (".nan" if math.isnan(value) else ".inf") in path.read_text()
    with pytest.raises(ConfigError) as info:
        load_params(path)
    want = f"{key}[0]" if is_list else key
    assert info.value.key == want and "must be a finite number" in str(info.value)
    assert main(["check", "--no-build", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {path}: {want} = {value!r}: must be a finite number"


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_a_model_folder_config_json_must_be_finite_too(tmp_path, text):
    """config.json sections go through the same conversion (Python's json reads NaN/Infinity)."""
    from vfmtok import model_folder
    from vfmtok.generator_config import GPTConfig

    meta = json.loads('{"gpt": {"ffn_dim_multiplier": TEXT, "norm_eps": 1e-5}}'.replace("TEXT", text))
    with pytest.raises(ConfigError, match="must be a finite number") as info:
        model_folder.section(meta, "gpt", GPTConfig, tmp_path)
    assert info.value.key == "gpt.ffn_dim_multiplier" and str(tmp_path / "config.json") in str(info.value)


def test_python_built_configs_must_be_finite_too():
    from vfmtok.config import TokenizerConfig
    from vfmtok.config_schema import validate

    cfg = TokenizerConfig(kind="vqgan", image_size=64, n_tokens=64, pixel_grid=4, beta=math.nan)
    with pytest.raises(ConfigError, match="must be a finite number") as info:
        validate(cfg, "tokenizer")
    assert info.value.key == "tokenizer.beta"


# ----------------------------------------------------------------------------- rules the stages meet


@pytest.mark.parametrize("mutate,key,words", [
    (lambda d: d["sample"].update(top_p=0.0), "sample.top_p", "must be > 0"),
    (lambda d: d["evaluate"].update(fid_images=3), "evaluate.fid_images", "more than 3"),
    (lambda d: d["evaluate"].update(probe_train=1), "evaluate.probe_train", "two classes"),
    (lambda d: d["train_ar"].update(quality_every=2, quality_probe_train=1), "train_ar.quality_probe_train",
     "two classes"),
    (lambda d: d["tokenize"].update(splits=["val"]), "tokenize.splits", "'train'"),
    (lambda d: d["train_ar"].update(lr_schedule="cosine", lr=0.001, min_lr=0.01), "train_ar.min_lr", "lr"),
    (lambda d: (d["prepare"].update(resolution=8), d["tokenizer"].update(pixel_grid=1, dec_slot_skip=False),
                d["train_tokenizer"]["loss"].update(perceptual="lpips", lpips_vgg_weights="v.pth",
                                                    lpips_lin_weights="l.pth")),
     "train_tokenizer.loss.perceptual", "resolution >= 16"),
    (lambda d: (d["tokenizer"].update(n_tokens=1, dec_slot_skip=False),
                d["train_tokenizer"].update(batch_size=1)), "train_tokenizer.batch_size", "quant_batchnorm"),
])
def test_what_a_stage_would_refuse_is_refused_up_front(tmp_path, mutate, key, words):
    path = _write(tmp_path, mutate)
    with pytest.raises(ConfigError) as info:
        load_params(path, check_paths=False).check_launch(1)  # check's launch rules too
    assert info.value.key == key and words in str(info.value) and str(path) in str(info.value)


def test_allowed_edge_values_pass(tmp_path):
    def mutate(d):
        d["sample"].update(top_p=0.01, temperature=0.0)
        d["evaluate"].update(fid_images=4, probe_train=2)
        d["train_ar"].update(quality_every=0, quality_probe_train=1)  # no quality checks: no probe

    load_params(_write(tmp_path, mutate), check_paths=False)


@pytest.mark.parametrize("world,ok", [("1", True), ("2", True), ("4", True), ("3", False), ("x", False)])
def test_global_batches_must_split_over_the_launch(tmp_path, monkeypatch, world, ok):
    """torchrun's WORLD_SIZE: each process takes batch_size / WORLD_SIZE rows (smoke: 8 and 8). A
    launch rule, not a params one: the file itself loads whatever the launch."""
    from pipeline.params import launch_world_size

    monkeypatch.setenv("WORLD_SIZE", world)
    params = load_params(_write(tmp_path, lambda d: None), check_paths=False)
    if ok:
        params.check_launch(launch_world_size())
        return
    with pytest.raises(ConfigError) as info:
        params.check_launch(launch_world_size())
    if world == "x":
        assert info.value.key == "WORLD_SIZE"
    else:
        assert info.value.key == "train_tokenizer.batch_size" and "3 processes" in str(info.value)
    with pytest.raises(ConfigError, match="train_ar.batch_size = 8: must be divisible by the 3"):
        params.check_launch(3, ("train_ar",))  # each training stage asks for its own batch alone


def test_a_config_remembers_its_key_and_file(tmp_path):
    """What lets a model builder's error name the key as the user writes it (vfmtok.config_schema)."""
    from vfmtok.config_schema import config_error, key_of, replace

    path = _write(tmp_path, lambda d: None)
    p = load_params(path, check_paths=False)
    assert key_of(p.judge, "taps") == "judge.taps"
    assert key_of(p.backbone, "image_size") == key_of(p.tokenizer, "image_size") == "prepare.resolution"
    assert key_of(p.train_tokenizer.loss, "gan_weight") == "train_tokenizer.loss.gan_weight"
    e = config_error(replace(p.judge, taps=[9]), "taps", [9], "too deep")
    assert str(e) == f"{path}: judge.taps = [9]: too deep"
