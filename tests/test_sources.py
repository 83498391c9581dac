"""idx parsing, source scanning (every layout, every awkward entry), the listing and image decoding
(no Prefect involved)."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import sources
from tests.conftest import FASHION_MNIST
from tests.imagenet_trees import VAL_WNIDS, WNIDS, devkit_tree, jpeg, kaggle_tree


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}i", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def test_read_idx_plain_and_gzip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a-idx3-ubyte").write_bytes(_idx_bytes(arr))
    (tmp_path / "a-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(arr)))
    np.testing.assert_array_equal(sources.read_idx(tmp_path / "a-idx3-ubyte"), arr)
    np.testing.assert_array_equal(sources.read_idx(tmp_path / "a-idx3-ubyte.gz"), arr)


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(sources.SourceError, match="magic"):
        sources.read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(_idx_bytes(np.zeros((4, 2), np.uint8))[:-3])
    with pytest.raises(sources.SourceError, match="header says"):
        sources.read_idx(short)


def test_fashion_mnist_folder_of_four_files(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 7), ("val", 3)):
        split_files = sources.FASHION_MNIST_FILES[split]
        (tmp_path / split_files[0]).write_bytes(_idx_bytes(rng.integers(0, 256, (n, 28, 28))))
        (tmp_path / split_files[1]).write_bytes(_idx_bytes(np.arange(n) % 10))
    index = sources.scan("fashion_mnist", tmp_path)
    assert [it.split for it in index.items].count("train") == 7
    assert index.items[8].label == 1 and index.classes[1] == ("Trouser", "Trouser")
    assert sources.load_rgb(index.items[0], 32).shape == (32, 32, 3)


def test_fashion_mnist_missing_file_is_named(tmp_path):
    with pytest.raises(sources.SourceError, match="train-images-idx3-ubyte"):
        sources.scan("fashion_mnist", tmp_path)


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    images = sources.read_idx(FASHION_MNIST / "train-images-idx3-ubyte.gz")
    labels = sources.read_idx(FASHION_MNIST / "train-labels-idx1-ubyte.gz")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert sorted(np.unique(labels)) == list(range(10))
    assert np.bincount(labels).tolist() == [6000] * 10


def test_missing_and_empty_sources_are_clear_errors(tmp_path):
    with pytest.raises(sources.SourceError, match="does not exist"):
        sources.scan("imagefolder", tmp_path / "nope")
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(sources.SourceError, match="no images found"):
        sources.scan("imagefolder", tmp_path)
    with pytest.raises(sources.SourceError, match="train: folder not found"):
        sources.scan("imagenet", tmp_path / "train")
    (tmp_path / "in" / "train").mkdir(parents=True)
    with pytest.raises(sources.SourceError, match="no class folders"):
        sources.scan("imagenet", tmp_path / "in")


def test_limit_per_class_keeps_scan_order():
    items = [sources.SourceItem(str(i), "train", i % 2, "") for i in range(10)]
    kept = sources.limit_per_class(items, "train", 2)
    assert [it.image_id for it in kept] == ["0", "1", "2", "3"]
    assert len(sources.limit_per_class(items, "train", 0)) == 10
    assert sources.limit_per_class(items, "val", 0) == []


def test_imagefolder_without_splits_gets_a_stable_holdout(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(40):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / c / f"{i}.png")
    a = sources.scan("imagefolder", tmp_path, val_fraction=0.25)
    b = sources.scan("imagefolder", tmp_path, val_fraction=0.25)
    assert [it.split for it in a.items] == [it.split for it in b.items]
    n_val = sum(it.split == "val" for it in a.items)
    assert 5 <= n_val <= 40  # ~20 of 80


def test_resize_center_crop_takes_the_centre():
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, 20:60] = 255  # a white square in the middle of a wide image
    out = sources.resize_center_crop(Image.fromarray(img), 20)
    assert out.shape == (20, 20, 3) and out.mean() > 250


def test_modes_become_rgb(tmp_path):
    gray = Image.fromarray(np.full((10, 10), 77, np.uint8), mode="L")
    cmyk = Image.new("CMYK", (10, 10), (0, 255, 255, 0))  # pure red in CMYK
    pal = Image.new("P", (10, 10), 3)
    pal.putpalette([0, 0, 0] * 3 + [0, 0, 200] + [0, 0, 0] * 252)
    i16 = Image.fromarray(np.tile(np.arange(10, dtype=np.uint16) * 1000, (10, 1)))
    for name, img in (("g.png", gray), ("c.jpg", cmyk), ("p.png", pal), ("i.png", i16)):
        img.save(tmp_path / name)
    item = lambda name: sources.SourceItem(name, "train", 0, str(tmp_path / name))  # noqa: E731
    assert (sources.load_rgb(item("g.png"), 10) == 77).all()
    red = sources.load_rgb(item("c.jpg"), 10)
    assert red[..., 0].mean() > 200 and red[..., 1:].mean() < 40
    assert (sources.load_rgb(item("p.png"), 10)[..., 2] == 200).all()
    ramp = sources.load_rgb(item("i.png"), 10)
    assert ramp[0, 0, 0] == 0 and ramp[0, -1, 0] == 255


def test_broken_files_raise_bad_image(tmp_path):
    good = tmp_path / "x.JPEG"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(good, format="JPEG")
    (tmp_path / "trunc.JPEG").write_bytes(good.read_bytes()[:200])
    (tmp_path / "text.JPEG").write_text("not an image at all")
    for name in ("trunc.JPEG", "text.JPEG"):
        with pytest.raises(sources.BadImage):
            sources.load_rgb(sources.SourceItem(name, "train", 0, str(tmp_path / name)), 16)


# ---------------------------------------------------------------------------- robust walking


def test_walk_lists_loops_broken_links_unreadable_folders_and_special_files(tmp_path, monkeypatch):
    from pipeline.sources import walk

    cls = tmp_path / "train" / "a"
    cls.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(cls / "ok.png")
    (cls / "deep" / "er").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(cls / "deep" / "er" / "nested.png")
    os.symlink("../..", cls / "deep" / "up")  # back to train/: a loop through an enclosing folder
    os.symlink("self.png", cls / "self.png")  # a link to itself
    os.symlink("missing.png", cls / "gone.png")
    os.mkfifo(cls / "pipe.png")
    (cls / "locked").mkdir()
    (tmp_path / "train" / "b").symlink_to(cls)  # a class folder that links elsewhere is followed
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(walk.os, "scandir", scandir)
    index = sources.scan("imagefolder", tmp_path)
    assert [it.image_id for it in index.items] == ["train/a/deep/er/nested", "train/a/ok",
                                                   "train/b/deep/er/nested", "train/b/ok"]
    reasons = {str(Path(s.source_path).relative_to(tmp_path)): s.reason for s in index.skipped}
    loop = "symlink loop: links to an enclosing folder"
    assert reasons["train/a/deep/up"] == reasons["train/b/deep/up"] == loop
    assert reasons["train/a/self.png"] == "symlink loop" and reasons["train/a/gone.png"] == "broken symlink"
    assert reasons["train/a/pipe.png"] == "not a regular file"
    assert reasons["train/a/locked"].startswith("PermissionError: cannot list folder")
    assert {Path(f.path).name for f in index.files} == {"ok.png", "nested.png"} and len(index.files) == 4


def test_a_class_folder_linking_to_its_parent_is_a_listed_loop(tmp_path):
    for c in ("a", "b"):
        (tmp_path / "train" / c).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / c / "x.png")
    (tmp_path / "train" / "c").symlink_to(".")
    index = sources.scan("imagefolder", tmp_path)
    assert [c for c, _ in index.classes] == ["a", "b"]
    assert [(Path(s.source_path).name, s.reason) for s in index.skipped] == [
        ("c", "symlink loop: links to an enclosing folder")]


# ---------------------------------------------------------------------------- ImageNet layouts


def test_kaggle_layout_from_its_root_or_from_cls_loc(tmp_path):
    root = kaggle_tree(tmp_path / "kaggle")
    for path in (root, root / "ILSVRC" / "Data" / "CLS-LOC"):
        index = sources.scan("imagenet", path)
        assert index.layout == "imagenet/kaggle"
        assert index.classes == [(WNIDS[0], "tench"), (WNIDS[1], "goldfish")]
        val = [(it.image_id, it.label) for it in index.items if it.split == "val"]
        assert val == [(f"val/ILSVRC2012_val_{n:08d}", WNIDS.index(w)) for n, w in enumerate(VAL_WNIDS, 1)]
        names = {Path(f.path).name for f in index.files}
        assert {"LOC_val_solution.csv", "LOC_synset_mapping.txt"} <= names
        assert not any("test" in it.image_id for it in index.items)


def test_kaggle_and_devkit_label_problems(tmp_path):
    root = kaggle_tree(tmp_path / "k")
    val = root / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    jpeg(val / "ILSVRC2012_val_00000009.JPEG", (1, 2, 3))  # not in the CSV: skipped and listed
    index = sources.scan("imagenet", root)
    assert [(Path(s.source_path).name, s.reason.split(" in ")[0]) for s in index.skipped] == [
        ("ILSVRC2012_val_00000009.JPEG", "no row for it")]
    csv_file = root / "LOC_val_solution.csv"
    csv_file.write_text(csv_file.read_text() + "ILSVRC2012_val_00000009,n99999999 1 2 3 4\n")
    with pytest.raises(sources.SourceError, match=r"LOC_val_solution.csv: row 5: class 'n99999999'"):
        sources.scan("imagenet", root)
    csv_file.write_text("id,label\n")
    with pytest.raises(sources.SourceError, match="expected the columns ImageId,PredictionString"):
        sources.scan("imagenet", root)

    devkit = devkit_tree(tmp_path / "d")
    gt = devkit / "data" / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("2\n1\n")  # image 3 has no line
    index = sources.scan("imagenet", tmp_path / "d", devkit=str(devkit))
    assert index.layout == "imagenet/devkit"
    assert [it.label for it in index.items if it.split == "val"] == [0, 1]
    assert [Path(s.source_path).name for s in index.skipped] == ["ILSVRC2012_val_00000003.JPEG"]
    gt.write_text("7\n1\n1\n")
    with pytest.raises(sources.SourceError, match=r"ground_truth.txt: line 1: ILSVRC2012_ID 7"):
        sources.scan("imagenet", tmp_path / "d", devkit=str(devkit))


def test_flat_val_without_labels_names_both_layouts(tmp_path):
    devkit_tree(tmp_path)
    with pytest.raises(sources.SourceError, match=r"needs prepare.devkit .* LOC_val_solution.csv"):
        sources.scan("imagenet", tmp_path)


# ---------------------------------------------------------------------------- the listing


def test_listing_round_trip_and_diff(tmp_path):
    from pipeline.formats import source_listing

    root = kaggle_tree(tmp_path / "k")
    os.symlink("missing.JPEG", root / "ILSVRC" / "Data" / "CLS-LOC" / "train" / WNIDS[0] / "x.JPEG")
    index = sources.scan("imagenet", root)
    path = tmp_path / "listing.tsv"
    source_listing.write(path, index, "imagenet", root)
    entries = source_listing.read(path)
    assert entries == source_listing.entries(index, root)
    size = (root / "LOC_val_solution.csv").stat().st_size
    assert entries["LOC_val_solution.csv"].split("\t")[0] == str(size)
    assert entries[f"ILSVRC/Data/CLS-LOC/train/{WNIDS[0]}/x.JPEG"] == "!\tbroken symlink"
    lines = path.read_text().splitlines()
    assert lines[1:] == sorted(lines[1:]) and len(lines) == 1 + len(index.files) + len(index.skipped)
    changed = dict(entries, **{"new.JPEG": "1\t2"})
    changed.pop("LOC_synset_mapping.txt")
    changed["LOC_val_solution.csv"] = "0\t0"
    assert source_listing.diff(entries, changed) == {
        "added": ["new.JPEG"], "removed": ["LOC_synset_mapping.txt"], "changed": ["LOC_val_solution.csv"]}
    path.write_text("not a listing\n")
    with pytest.raises(sources.SourceError, match="not a source listing"):
        source_listing.read(path)
