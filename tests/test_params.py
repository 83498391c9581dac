"""Every class of params error names the file, the dotted key and the value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.params import load_params, profile_path
from vfmtok.typed import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load(profile_path("smoke", REPO).read_text())
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
    p = load_params(profile_path(name, REPO), check_paths=False)
    assert p.backbone.image_size == p.tokenizer.image_size == p.prepare.resolution


def test_imagenet_profile_is_the_paper_setup():
    p = load_params(profile_path("imagenet", REPO), check_paths=False)
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
