"""Profiles are the base plus what each changes: ``vfmtok-pipeline profile NAME`` writes the merge
as a complete, commented params.yaml; a profile file repeats no value of the base."""

from __future__ import annotations

import pytest
import yaml

from pipeline.cli import main
from pipeline.errors import UserError
from pipeline.params.profiles import BASE, merge, profile_data, profile_names, profile_text, write_profile
from tests.conftest import REPO


def _leaves(data: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in data.items():
        out |= _leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


@pytest.mark.parametrize("name", profile_names(REPO))
def test_a_profile_holds_only_what_it_changes(name):
    base = _leaves(yaml.safe_load((REPO / "params" / f"{BASE}.yaml").read_text()))
    overrides = _leaves(yaml.safe_load((REPO / "params" / f"{name}.yaml").read_text()) or {})
    assert not [k for k, v in overrides.items() if k in base and base[k] == v], "repeats the base"
    merged = _leaves(profile_data(name, REPO))
    assert set(merged) == set(base) | set(overrides) and all(merged[k] == v for k, v in overrides.items())


def test_the_written_params_are_complete_and_keep_the_comments(tmp_path):
    (tmp_path / "params").mkdir()
    for name in (BASE, "smoke"):
        (tmp_path / "params" / f"{name}.yaml").write_text((REPO / "params" / f"{name}.yaml").read_text())
    root = str(tmp_path)
    assert main(["--root", root, "profile", "smoke"]) == 0
    text = (tmp_path / "params.yaml").read_text()
    data = profile_data("smoke", tmp_path)
    assert yaml.safe_load(text) == data == yaml.safe_load(profile_text("smoke", tmp_path))
    assert text.startswith("# The smoke profile")  # the profile's header
    assert "source: fashion_mnist            # fashion_mnist | imagenet | imagefolder" in text  # the base's
    assert "n_tokens: 16                     # 4x4 anchor grid" in text  # the profile's own comment wins
    assert 'devkit: ""' in text  # quotes as written


def test_the_base_is_not_a_profile_and_an_unknown_one_is_named(tmp_path, capsys):
    assert main(["--root", str(REPO), "profile", BASE]) == 2
    assert "params/base.yaml: the base every profile starts from" in capsys.readouterr().err
    with pytest.raises(UserError, match="params/nope.yaml: no such profile .known: claims, demo"):
        write_profile("nope", REPO, tmp_path / "params.yaml")
    assert not (tmp_path / "params.yaml").exists()


def test_sections_merge_key_by_key_and_a_list_replaces_whole():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 2}
    assert merge(base, {"a": {"y": [3]}}) == {"a": {"x": 1, "y": [3]}, "b": 2}
    with pytest.raises(UserError, match="a.x is a section in one file and a value in the other"):
        merge(base, {"a": {"x": {"deep": 1}}})
