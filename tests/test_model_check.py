"""``vfmtok-pipeline check`` builds the models on the meta device: the rules only a built model
knows (a timm ViT's depth and patch size, the levels its taps give) are the same one line as a
params rule, naming the file, the key as the user writes it and the value."""

from __future__ import annotations

import pytest
import torch
import yaml

from pipeline.cli import main
from pipeline.commands.model_check import build_models, check_models
from pipeline.params import load_params
from pipeline.params.profiles import load_profile, profile_data, profile_names, write_profile
from tests.conftest import FASHION_MNIST, REPO


def _write(tmp_path, profile: str, mutate) -> str:
    data = profile_data(profile, REPO)
    mutate(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _check(capsys, path: str, *flags: str) -> tuple[int, str]:
    rc = main(["check", *flags, path])
    out = capsys.readouterr()
    return rc, (out.err if rc else out.out).strip()


@pytest.mark.parametrize("profile,mutate,key,value", [
    ("imagenet", lambda d: d["backbone"].update(taps=[6, 12, 18, 30]), "backbone.taps", "[6, 12, 18, 30]"),
    ("imagenet", lambda d: d["judge"].update(taps=[25]), "judge.taps", "[25]"),
    ("imagenet", lambda d: d["backbone"].update(input_size=300), "backbone.input_size", "300"),
    ("imagenet", lambda d: (d["prepare"].update(resolution=320), d["tokenizer"].update(pixel_grid=20)),
     "prepare.resolution", "320"),
    ("imagenet", lambda d: d["tokenizer"].update(semantic_level=4), "tokenizer.semantic_level", "4"),
    ("imagenet", lambda d: d["judge"].update(model="vit_nonesuch"), "judge.model", "'vit_nonesuch'"),
    ("imagenet", lambda d: d["backbone"].update(model="resnet18"), "backbone.model", "'resnet18'"),
    ("imagenet", lambda d: d["backbone"].update(model="hf-hub:timm/vit_tiny_patch16_224"), "backbone.model",
     "'hf-hub:timm/vit_tiny_patch16_224'"),
    ("imagenet", lambda d: d["backbone"].update(model_kwargs={"depth": 3}), "backbone.taps",
     "[6, 12, 18, 24]"),
    ("imagenet", lambda d: d["backbone"].update(model_kwargs={"dept": 3}), "backbone.model_kwargs",
     "{'dept': 3}"),
    ("smoke", lambda d: d["tokenizer"].update(semantic_level=3), "tokenizer.semantic_level", "3"),
])
def test_a_rule_of_a_built_model_is_one_line_naming_the_key(tmp_path, capsys, profile, mutate, key, value):
    path = _write(tmp_path, profile, mutate)
    rc, line = _check(capsys, path, "--no-paths")
    assert rc == 2 and line.startswith(f"error: {path}: {key} = {value}: "), line
    assert "\n" not in line
    rc, line = _check(capsys, path, "--no-paths", "--no-build")  # the params rules alone pass it
    assert rc == 0 and line == f"{path}: ok"


@pytest.mark.parametrize("profile", profile_names(REPO))
def test_every_profile_checks_ok(tmp_path, capsys, profile):
    path = str(write_profile(profile, REPO, tmp_path / "params.yaml", check_paths=False))
    assert _check(capsys, path, "--no-paths") == (0, f"{path}: ok")


def test_models_are_built_as_configured_without_reading_weights():
    """The imagenet profile's files do not exist here: the meta build reads none of them."""
    params = load_profile("imagenet", REPO, check_paths=False)
    models = build_models(params)
    assert next(models.tokenizer.parameters()).is_meta and next(models.generator.parameters()).is_meta
    assert models.backbone.level_shapes == [(24, 24)] * 4 and models.backbone.level_channels == [1024] * 4
    assert models.judge is models.backbone  # the same config: built once
    assert models.generator.config.vocab_size == params.tokenizer.codebook_size
    assert models.tokenizer.n_tokens == models.generator.config.n_tokens == 256


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_a_device_this_machine_lacks_is_refused_unless_checking_for_elsewhere(tmp_path, capsys):
    path = _write(tmp_path, "smoke", lambda d: d["sample"].update(device="cuda"))
    rc, line = _check(capsys, path)
    assert rc == 2 and line.startswith(f"error: {path}: sample.device = 'cuda': this machine has no CUDA")
    params = load_params(path)
    check_models(params, machine=False)
    assert _check(capsys, path, "--no-paths") == (0, f"{path}: ok")
