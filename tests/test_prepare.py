"""The prepare (and list_source, extract_features) flows on generated ILSVRC-2012 trees: broken
files, every layout, both shard encodings, the listing check."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file

from pipeline.errors import SourceError
from pipeline.formats import prepared
from pipeline.params.profiles import profile_data
from pipeline.stages.extract_features import extract_features_flow
from pipeline.stages.list_source import list_source_flow
from pipeline.stages.prepare import prepare_flow
from tests.imagenet_trees import WNIDS, class_folder_tree, devkit_tree, kaggle_tree
from vfmtok import files
from vfmtok.config_schema import ConfigError
from vfmtok.metrics import batch_psnr

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # the stages' flows end to end, as Prefect flow runs against its API


def make_project(tmp: Path, source_root: Path, name: str = "proj", **prepare) -> Path:
    params = profile_data("smoke", REPO)
    params["prepare"].update({"source": "imagenet", "path": str(source_root), "devkit": "",
                              "max_per_class_train": 0, "max_per_class_val": 0, "shard_size": 4, **prepare})
    (tmp / name).mkdir()
    path = tmp / name / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _run(params: Path) -> dict:
    return prepare_flow(params_file=str(params), root=str(params.parent))


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _manifest(params: Path) -> pd.DataFrame:
    return pd.read_parquet(params.parent / "data" / "prepared" / "manifest.parquet")


def test_prepare_skips_broken_converts_modes_and_is_byte_identical(tmp_path):
    src = class_folder_tree(tmp_path / "imagenet")
    os.symlink("..", src / "train" / WNIDS[1] / "loop")  # a folder link back to the class folder
    os.symlink("nowhere.JPEG", src / "train" / WNIDS[1] / "dangling.JPEG")
    params = make_project(tmp_path, src)
    root = params.parent
    report = _run(params)

    assert report["layout"] == "imagenet/class-folders" and report["shard_encoding"] == "raw"
    assert report["skipped"] == 4 and report["images_train"] == 9 and report["images_val"] == 2
    listed = json.loads((root / "reports" / "prepare.json").read_text())["skipped_files"]
    reasons = {Path(s["source_path"]).name: s["reason"] for s in listed}
    assert sorted(reasons) == ["dangling.JPEG", "loop", "notes.JPEG", "trunc.JPEG"]
    assert reasons["loop"].startswith("symlink loop") and reasons["dangling.JPEG"] == "broken symlink"
    assert report["bytes_per_image"] == 32 * 32 * 3

    man = _manifest(params)
    assert list(man.columns) == ["image_id", "split", "label", "class_name", "source_path",
                                 "content_hash", "shard", "index", "offset", "size"]
    assert set(man["class_name"]) == set(WNIDS)
    classes = json.loads((root / "data" / "prepared" / "classes.json").read_text())
    assert [c["key"] for c in classes] == WNIDS

    train = prepared.SplitImages(root / "data" / "prepared", "train")

    def pixels(name: str) -> np.ndarray:
        return train.uint8(np.flatnonzero(train.rows["image_id"] == f"train/{WNIDS[0]}/{name}"))[0]

    gray, cmyk = pixels("gray"), pixels("cmyk")
    assert gray.shape == (32, 32, 3) and np.ptp(gray.astype(int), axis=-1).max() <= 1
    assert cmyk[..., 0].mean() > 200 and cmyk[..., 1:].mean() < 60
    (pal_at,) = np.flatnonzero(train.rows["image_id"].str.endswith("palette"))
    assert (train.uint8([pal_at])[0][..., 1] == 180).all() and train.labels[pal_at] == 1
    row = train.rows.iloc[pal_at]  # the byte range in the manifest is the image in the .npy file
    raw = (root / "data" / "prepared" / "images" / row["shard"]).read_bytes()[row["offset"]:][: row["size"]]
    assert raw == train.uint8([pal_at])[0].tobytes() and prepared.content_hash(raw) == row["content_hash"]

    first = _tree_bytes(root / "data")
    _run(params)
    assert _tree_bytes(root / "data") == first  # same input + params -> same bytes


def test_jpeg_shards_are_webdataset_tars_close_to_raw_and_byte_identical(tmp_path):
    src = class_folder_tree(tmp_path / "imagenet", awkward=False)
    raw_params = make_project(tmp_path, src, "raw")
    jpg_params = make_project(tmp_path, src, "jpeg", encoding="jpeg", jpeg_quality=95)
    _run(raw_params)
    report = _run(jpg_params)
    folder = jpg_params.parent / "data" / "prepared"
    assert report["shard_encoding"] == "jpeg" and report["shard_quality"] == 95
    assert report["bytes_per_image"] < 32 * 32 * 3

    man = _manifest(jpg_params)
    shard = man["shard"].iloc[0]
    assert shard == "train-00000.tar"
    meta = prepared.read_shard_manifest(folder, shard)
    with tarfile.open(folder / "images" / shard) as tar:
        members = tar.getmembers()
        assert [m.name for m in members[:4]] == ["000000.jpg", "000000.cls", "000001.jpg", "000001.cls"]
        assert all(m.mtime == 0 and m.uid == 0 and m.mode == 0o644 for m in members)
        jpgs = [m for m in members if m.name.endswith(".jpg")]
        assert [m.offset_data for m in jpgs] == [x["offset"] for x in meta["members"]]
        first = tar.extractfile(jpgs[0]).read()
        assert int(tar.extractfile(members[1]).read()) == meta["members"][0]["label"]
    assert prepared.content_hash(first) == man["content_hash"].iloc[0] == meta["members"][0]["content_hash"]
    assert meta["count"] == len(jpgs) and meta["sha256"] == files.sha256_file(folder / "images" / shard)

    for split in ("train", "val"):
        a = prepared.SplitImages(raw_params.parent / "data" / "prepared", split)
        b = prepared.SplitImages(folder, split, decode_threads=2)
        assert b.resolution == 32 and (a.rows["image_id"] == b.rows["image_id"]).all()
        decoded = b.uint8(np.arange(len(b)))
        assert decoded.dtype == np.uint8 and batch_psnr(a.uint8(np.arange(len(a))), decoded, 255) > 30
        np.testing.assert_array_equal(decoded[1], b[1])  # threads and one-by-one agree
        batches = [[len(b) - 1, 0], [1]]
        loaded = list(prepared.decode_batches(b, batches, workers=2))  # DataLoader worker processes
        for got, idx in zip(loaded, batches, strict=True):
            np.testing.assert_array_equal(got, decoded[idx])
    shard_view = prepared.load_image_shard(folder, shard)
    np.testing.assert_array_equal(shard_view[1:3], prepared.SplitImages(folder, "train").uint8([1, 2]))

    again = _tree_bytes(jpg_params.parent / "data")
    _run(jpg_params)
    assert _tree_bytes(jpg_params.parent / "data") == again


def test_devkit_and_kaggle_layouts_prepare_the_same_data_and_extract(tmp_path):
    devkit = devkit_tree(tmp_path / "devkit-layout")
    kaggle = kaggle_tree(tmp_path / "kaggle-layout")
    a = make_project(tmp_path, tmp_path / "devkit-layout", "a", devkit=str(devkit))
    b = make_project(tmp_path, kaggle, "b", encoding="jpeg")
    assert _run(a)["layout"] == "imagenet/devkit" and _run(b)["layout"] == "imagenet/kaggle"
    man_a, man_b = _manifest(a), _manifest(b)
    val = man_a[man_a["split"] == "val"].sort_values("image_id")
    # ground truth -> ILSVRC IDs 2, 1, 1 -> wnids[0], wnids[1], wnids[1] -> labels 0, 1, 1
    assert val["image_id"].tolist() == [f"val/ILSVRC2012_val_{n:08d}" for n in (1, 2, 3)]
    assert val["label"].tolist() == [0, 1, 1]
    assert val["class_name"].tolist() == ["tench", "goldfish", "goldfish"]
    cols = ["image_id", "split", "label", "class_name"]
    pd.testing.assert_frame_equal(man_a[cols], man_b[cols])  # Kaggle's test/ is not read

    report = extract_features_flow(params_file=str(b), root=str(b.parent))
    assert report["images"] == len(man_b) and report["images_per_s"] > 0
    feats = b.parent / "data" / "features"
    meta = json.loads((feats / "manifest.json").read_text())
    assert [lv["channels"] for lv in meta["levels"]] == [40, 112, 320]
    for shard in meta["shards"]:
        assert shard["image_shard"].endswith(".tar") and shard["file"].endswith(".safetensors")
        levels = load_file(str(feats / shard["file"]))
        n = int((man_b["shard"] == shard["image_shard"]).sum())
        assert levels["level_0"].shape == (n, 40, 4, 4) and str(levels["level_0"].dtype) == "torch.float16"


def test_listing_notices_changes_and_a_stale_listing_is_refused(tmp_path):
    src = class_folder_tree(tmp_path / "imagenet", awkward=False)
    params = make_project(tmp_path, src)
    root = params.parent
    first = list_source_flow(params_file=str(params), root=str(root))
    listing = root / "data" / "source_listing.tsv"
    lines = listing.read_text().splitlines()
    assert first["files"] == 8 and len(lines) == 9 and lines[0].startswith("# vfmtok source listing v1")
    path, size, mtime = lines[1].split("\t")
    assert path == f"train/{WNIDS[0]}/{WNIDS[0]}_0.JPEG" and int(size) == (src / path).stat().st_size
    assert int(mtime) == (src / path).stat().st_mtime_ns
    _run(params)  # the listing matches: fine

    (src / "train" / WNIDS[1] / "extra.JPEG").write_bytes((src / path).read_bytes())
    with pytest.raises(SourceError, match=r"changed since it was listed \(1 added \(first: train/n01443537/"):
        _run(params)
    again = list_source_flow(params_file=str(params), root=str(root))
    assert (again["added"], again["removed"], again["changed"]) == (1, 0, 0)
    os.utime(src / path, ns=(1, 1))
    assert list_source_flow(params_file=str(params), root=str(root))["changed"] == 1
    assert _run(params)["images_train"] == 7


def test_prepare_missing_source_is_a_clear_error(tmp_path):
    params = make_project(tmp_path, tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="prepare.path"):
        _run(params)
