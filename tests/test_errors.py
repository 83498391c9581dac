"""A user error is one line naming the file, key or row, a non-zero exit, and nothing written;
``--debug`` brings the traceback back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import stage
from pipeline.formats import prepared
from pipeline.params.profiles import profile_data
from tests.conftest import FASHION_MNIST, REPO
from tests.helpers import write_token_file


def _project(tmp_path: Path, **prepare) -> Path:
    params = profile_data("smoke", REPO)
    params["prepare"].update(prepare)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def _run_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_HOME": str(root / ".prefect")}
    return subprocess.run([sys.executable, "-m", "pipeline.stage", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def _only_error_line(captured: str) -> str:
    lines = [ln for ln in captured.splitlines() if ln.strip()]
    assert len(lines) == 1, captured[-3000:]
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.slow
def test_bad_source_path_is_one_line_and_writes_nothing(tmp_path):
    root = _project(tmp_path, path=str(tmp_path / "no-such-folder"))
    proc = _run_cli(root, "prepare")
    line = _only_error_line(proc.stderr)
    assert proc.returncode == 2 and "params.yaml" in line and "prepare.path" in line
    assert "no-such-folder" in line and not (root / "data").exists()
    debug = _run_cli(root, "prepare", "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.slow
def test_flat_val_without_labels_is_one_line_and_writes_nothing(tmp_path, capfd):
    src = tmp_path / "imagenet"
    (src / "train" / "n01440764").mkdir(parents=True)
    (src / "val").mkdir()
    (src / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"")
    (tmp_path / "proj").mkdir()
    root = _project(tmp_path / "proj", source="imagenet", path=str(src))
    rc = stage.main(["prepare", "--root", str(root), "--params", str(root / "params.yaml")])
    line = _only_error_line(capfd.readouterr().err)
    assert rc == 2 and "flat val folder needs prepare.devkit" in line and str(src / "val") in line
    assert not (root / "data").exists()


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
@pytest.mark.slow
def test_bad_token_file_names_the_row_before_training(tmp_path, capfd):
    root = _project(tmp_path)
    (root / "data" / "prepared").mkdir(parents=True)
    (root / "data" / "prepared" / prepared.CLASSES).write_text('[{"label": 0, "key": "a", "name": "a"}]')
    tokens = root / "data" / "tokens"
    write_token_file(tokens / "train.parquet", n=20, codebook=64, n_tokens=16, row_group=8)
    write_token_file(tokens / "val.parquet", n=10, codebook=64, n_tokens=16, split="val")
    bad = yaml.safe_load((root / "params.yaml").read_text())
    bad["tokenizer"]["codebook_size"] = 64
    (root / "params.yaml").write_text(yaml.safe_dump(bad))
    # Rewrite train with one id of 99 while the file's metadata still says 64 codes.
    table = pq.read_table(tokens / "train.parquet")
    col = table.column("tokens").combine_chunks()
    values = col.values.to_numpy().copy()
    values[16 * 13 + 2] = 99  # row 13
    fixed = pa.ListArray.from_arrays(col.offsets, pa.array(values, pa.uint16()))
    pq.write_table(table.set_column(table.schema.get_field_index("tokens"), "tokens", fixed),
                   tokens / "train.parquet", row_group_size=8)
    rc = stage.main(["train_ar", "--root", str(root), "--params", str(root / "params.yaml")])
    line = _only_error_line(capfd.readouterr().err)
    assert rc == 2 and "train.parquet" in line and "row 13" in line
    assert not (root / "data" / "generator").exists() and not (root / "data" / "checkpoints").exists()


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
@pytest.mark.slow
def test_missing_model_folder_is_one_line(tmp_path, capfd):
    root = _project(tmp_path)
    rc = stage.main(["tokenize", "--root", str(root), "--params", str(root / "params.yaml")])
    line = _only_error_line(capfd.readouterr().err)
    assert rc == 2 and str(root / "data" / "tokenizer" / "config.json") in line
    assert not (root / "data" / "tokens").exists()


def test_a_generator_folder_of_the_other_family_or_size_is_refused(tmp_path):
    """``data/generator`` holds whichever family trained last: the sample stage loads it only when it is
    the family and config that ``ar_model`` makes, and says which key differs when not."""
    from pipeline.layout import Layout
    from pipeline.models.trained import load_generator
    from pipeline.params import load_params
    from vfmtok import zoo
    from vfmtok.config_schema import ConfigError
    from vfmtok.model_folder import ConfigMismatch
    from vfmtok.rar import RAR

    def params_with(model: str):
        params = profile_data("smoke", REPO)
        params["ar_model"]["model"] = model
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        return load_params(tmp_path / "params.yaml", check_paths=False)

    rar_params, layout = params_with("RAR-Tiny"), Layout(tmp_path)
    t = rar_params.tokenizer
    model = zoo.build_from_config(rar_params.ar_model.model_config(t.codebook_size, t.n_tokens, 10))
    model.save_pretrained(layout.generator, name="RAR-Tiny")
    assert isinstance(load_generator(layout, rar_params, 10, "cpu"), RAR)
    with pytest.raises(ConfigError, match="format = 'vfmtok.rar': expected 'vfmtok.gpt'"):
        load_generator(layout, params_with("GPT-Tiny"), 10, "cpu")
    with pytest.raises(ConfigMismatch, match="rar.num_classes is 10 there, 7 in params.yaml"):
        load_generator(layout, rar_params, 7, "cpu")


def test_a_launch_plan_the_batch_does_not_split_over_is_one_line(tmp_path, capfd, monkeypatch):
    """``launch.nproc_per_node: 3``: each of 3 processes would take batch_size / 3 rows. The stage
    command stops before any process starts (no torchrun, no torch), as ``check`` does."""
    from pipeline.cli import main

    root = _project(tmp_path)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["launch"]["nproc_per_node"] = 3
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    rc = stage.main(["train_tokenizer", "--root", str(root), "--params", str(root / "params.yaml")])
    line = _only_error_line(capfd.readouterr().err)
    assert rc == 2 and line.startswith(f"error: {root / 'params.yaml'}: train_tokenizer.batch_size = 8: ")
    assert "3 processes" in line and not (root / "data").exists() and not (root / "logs").exists()
    assert main(["check", "--no-build", str(root / "params.yaml")]) == 2
    assert "train_tokenizer.batch_size = 8: must be divisible by the 3" in capfd.readouterr().err


@pytest.mark.slow
def test_a_launch_the_batch_does_not_split_over_is_one_line(tmp_path, capfd, monkeypatch):
    """Under an enclosing torchrun each of WORLD_SIZE processes takes batch_size / WORLD_SIZE rows:
    a stage of a launch that does not divide the batch stops before it starts, as ``check`` does."""
    from pipeline.cli import main

    root = _project(tmp_path)
    for var, value in {"WORLD_SIZE": "3", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(var, value)
    rc = stage.main(["train_ar", "--root", str(root), "--params", str(root / "params.yaml")])
    line = _only_error_line(capfd.readouterr().err)
    assert rc == 2 and line.startswith(f"error: {root / 'params.yaml'}: train_ar.batch_size = 8: ")
    assert "3 processes" in line and not (root / "data").exists()
    assert main(["check", "--no-build", str(root / "params.yaml")]) == 2  # both training stages
    assert "train_tokenizer.batch_size = 8: must be divisible by the 3" in capfd.readouterr().err


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
@pytest.mark.slow
def test_a_rule_of_a_built_model_stops_the_stage_with_the_line_of_check(tmp_path, capfd, monkeypatch):
    """Taps beyond a ViT's depth are known once the ViT is built: ``check`` builds it on the meta
    device, the stage for real, and both print the same line (exit 2: not retried)."""
    from pipeline.cli import main
    from pipeline.orchestration.lazy_prefect import FOLD_ENV
    from pipeline.stages.prepare import prepare_flow

    root = _project(tmp_path)
    params = root / "params.yaml"
    monkeypatch.setenv(FOLD_ENV, "1")  # the stages run in this process, without Prefect
    prepare_flow(params_file=str(params), root=str(root))
    data = yaml.safe_load(params.read_text())
    data["backbone"].update(kind="timm_vit", model="vit_tiny_patch16_224", weights="random",
                            allow_random_init=True, model_kwargs={"depth": 2}, taps=[1, 3])
    params.write_text(yaml.safe_dump(data))
    capfd.readouterr()
    rc = stage.main(["extract_features", "--root", str(root), "--params", str(params)])
    line = _only_error_line(capfd.readouterr().err)
    assert rc == 2 and line == (f"error: {params}: backbone.taps = [1, 3]: must be increasing 1-based "
                                "block indices in [1, 2] (vit_tiny_patch16_224 has 2 blocks)")
    assert not (root / "data" / "features").exists()
    assert main(["check", str(params)]) == 2
    assert _only_error_line(capfd.readouterr().err) == line
