"""The prepare and extract_features flows on a generated ILSVRC-2012-layout tree with broken files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from safetensors.torch import load_file

from pipeline.params import profile_path
from pipeline.stages.extract_features import extract_features_flow
from pipeline.stages.prepare import prepare_flow
from vfmtok.typed import ConfigError

REPO = Path(__file__).resolve().parents[1]
WNIDS = ["n01440764", "n01443537"]


def _jpeg(path: Path, color, mode="RGB", size=(48, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format="JPEG")


def make_imagenet_tree(root: Path, flat_val: bool = False) -> None:
    """Two classes; train holds every kind of awkward file ImageNet really has."""
    for k, wnid in enumerate(WNIDS):
        for i in range(3):
            _jpeg(root / "train" / wnid / f"{wnid}_{i}.JPEG", (200 * k, 40 * i, 90))
    cls0 = root / "train" / WNIDS[0]
    (cls0 / "trunc.JPEG").write_bytes((cls0 / f"{WNIDS[0]}_0.JPEG").read_bytes()[:300])
    (cls0 / "notes.JPEG").write_text("this is a text file")
    _jpeg(cls0 / "gray.JPEG", 128, mode="L")
    _jpeg(cls0 / "cmyk.JPEG", (0, 255, 255, 0), mode="CMYK")  # red
    pal = Image.new("P", (30, 30), 1)
    pal.putpalette([0, 0, 0, 0, 180, 0] + [0] * 762)
    pal.save(root / "train" / WNIDS[1] / "palette.JPEG", format="PNG")  # a PNG named .JPEG
    if not flat_val:
        for k, wnid in enumerate(WNIDS):
            _jpeg(root / "val" / wnid / f"ILSVRC2012_val_0000000{k + 1}.JPEG", (50, 50, 50))
        return
    from scipy.io import savemat

    for n in (1, 2, 3):
        _jpeg(root / "val" / f"ILSVRC2012_val_{n:08d}.JPEG", (10 * n, 0, 0))
    data = root / "devkit" / "data"
    data.mkdir(parents=True)
    synsets = np.zeros(2, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")])
    synsets[0] = (1, WNIDS[1], "goldfish, Carassius auratus")  # IDs do not follow wnid order
    synsets[1] = (2, WNIDS[0], "tench, Tinca tinca")
    savemat(data / "meta.mat", {"synsets": synsets})
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("2\n1\n1\n")


def make_project(tmp: Path, source_root: Path, devkit: str = "") -> Path:
    params = yaml.safe_load(profile_path("smoke", REPO).read_text())
    params["prepare"].update(source="imagenet", path=str(source_root), devkit=devkit,
                             max_per_class_train=0, max_per_class_val=0, shard_size=4)
    (tmp / "proj").mkdir()
    path = tmp / "proj" / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_prepare_skips_broken_converts_modes_and_is_byte_identical(tmp_path):
    make_imagenet_tree(tmp_path / "imagenet")
    params = make_project(tmp_path, tmp_path / "imagenet")
    root = params.parent
    report = prepare_flow(params_file=str(params), root=str(root))

    assert report["skipped"] == 2 and report["images_train"] == 9 and report["images_val"] == 2
    listed = json.loads((root / "reports" / "prepare.json").read_text())["skipped_files"]
    assert sorted(Path(s["source_path"]).name for s in listed) == ["notes.JPEG", "trunc.JPEG"]

    man = pd.read_parquet(root / "data" / "prepared" / "manifest.parquet")
    assert list(man.columns) == ["image_id", "split", "label", "class_name", "source_path",
                                 "content_hash", "shard", "index"]
    assert set(man["class_name"]) == set(WNIDS)
    classes = json.loads((root / "data" / "prepared" / "classes.json").read_text())
    assert [c["key"] for c in classes] == WNIDS

    def pixels(name: str) -> np.ndarray:
        row = man[man["image_id"] == f"train/{WNIDS[0]}/{name}"].iloc[0]
        return np.load(root / "data" / "prepared" / "images" / row["shard"])[row["index"]]

    gray, cmyk = pixels("gray"), pixels("cmyk")
    assert gray.shape == (32, 32, 3) and np.ptp(gray.astype(int), axis=-1).max() <= 1
    assert cmyk[..., 0].mean() > 200 and cmyk[..., 1:].mean() < 60
    row = man[man["image_id"].str.endswith("palette")].iloc[0]
    pal = np.load(root / "data" / "prepared" / "images" / row["shard"])[row["index"]]
    assert (pal[..., 1] == 180).all() and row["label"] == 1

    first = _tree_bytes(root / "data")
    prepare_flow(params_file=str(params), root=str(root))
    assert _tree_bytes(root / "data") == first  # same input + params -> same bytes


def test_prepare_flat_val_with_devkit_and_extract(tmp_path):
    make_imagenet_tree(tmp_path / "imagenet", flat_val=True)
    params = make_project(tmp_path, tmp_path / "imagenet", devkit=str(tmp_path / "imagenet/devkit"))
    root = params.parent
    prepare_flow(params_file=str(params), root=str(root))
    man = pd.read_parquet(root / "data" / "prepared" / "manifest.parquet")
    val = man[man["split"] == "val"].sort_values("image_id")
    # ground truth 2, 1, 1 -> ILSVRC IDs map to wnids[0], wnids[1], wnids[1] -> labels 0, 1, 1
    assert val["label"].tolist() == [0, 1, 1]
    assert val["class_name"].tolist() == ["tench", "goldfish", "goldfish"]

    report = extract_features_flow(params_file=str(params), root=str(root))
    assert report["images"] == len(man) and report["images_per_s"] > 0
    feats = root / "data" / "features"
    meta = json.loads((feats / "manifest.json").read_text())
    assert [lv["channels"] for lv in meta["levels"]] == [40, 112, 320]
    for shard in meta["shards"]:
        levels = load_file(str(feats / shard["file"]))
        n = len(np.load(root / "data" / "prepared" / "images" / shard["image_shard"]))
        assert levels["level_0"].shape == (n, 40, 4, 4) and str(levels["level_0"].dtype) == "torch.float16"
        assert levels["level_2"].shape == (n, 320, 1, 1)


def test_prepare_missing_source_is_a_clear_error(tmp_path):
    params = make_project(tmp_path, tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="prepare.path"):
        prepare_flow(params_file=str(params), root=str(params.parent))
