"""idx parsing, source scanning and image decoding (no Prefect involved)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from pipeline import sources
from tests.conftest import FASHION_MNIST


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
