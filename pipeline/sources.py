"""Image sources for ``prepare``: Fashion-MNIST idx files, an ILSVRC-2012 tree, any ImageFolder tree.

A source is scanned into a flat, sorted list of :class:`SourceItem` (so the same folder always gives
the same order and the same shards) and a class index. Decoding happens later, per shard, in
:func:`load_rgb`, which turns every way an image can be broken into one :class:`BadImage`.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import SourceError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class BadImage(Exception):
    """One input that cannot be decoded; ``prepare`` skips, counts and lists it."""


@dataclass(frozen=True)
class SourceItem:
    image_id: str
    split: str
    label: int
    source_path: str
    pixels: np.ndarray | None = None  # in-memory images (idx files); None: decode source_path


@dataclass
class SourceIndex:
    classes: list[tuple[str, str]]  # per label: (key, human-readable name), e.g. (wnid, "tench")
    items: list[SourceItem]


# ---------------------------------------------------------------------------- idx (Fashion-MNIST)


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an idx file (optionally gzipped): 0, 0, dtype code, ndim, big-endian dims, data."""
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise SourceError(f"{path}: not an idx file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise SourceError(f"{path}: unknown idx data type code 0x{raw[2]:02x}")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4).astype(int)
    dtype = np.dtype(dtypes[raw[2]])
    expected = 4 + 4 * ndim + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise SourceError(f"{path}: idx file has {len(raw)} bytes, header says {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    raise SourceError(f"{folder}: missing Fashion-MNIST file {stem}[.gz]")


def scan_fashion_mnist(folder: Path) -> SourceIndex:
    items = []
    for split, (img_stem, lbl_stem) in FASHION_MNIST_FILES.items():
        img_path, lbl_path = _find_idx(folder, img_stem), _find_idx(folder, lbl_stem)
        images, labels = read_idx(img_path), read_idx(lbl_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise SourceError(f"{img_path}: shape {images.shape} does not match labels {labels.shape}")
        for i, (img, lbl) in enumerate(zip(images, labels, strict=True)):
            items.append(SourceItem(f"{split}/{i:05d}", split, int(lbl), f"{img_path}#{i}", img))
    classes = [(name, name) for name in FASHION_MNIST_CLASSES]
    return SourceIndex(classes, items)


# ---------------------------------------------------------------------------- image folders


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _class_dirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise SourceError(f"{folder}: folder not found")
    dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not dirs:
        raise SourceError(f"{folder}: no class folders")
    return dirs


def _items_from_class_dirs(root: Path, split: str, folder: Path, labels: dict[str, int]):
    for d in _class_dirs(folder):
        if d.name not in labels:
            raise SourceError(f"{d}: class folder {d.name!r} is not among the train classes")
        for f in _image_files(d):
            rel = f.relative_to(root).with_suffix("").as_posix()
            yield SourceItem(rel, split, labels[d.name], str(f))


def _imagenet_val_from_devkit(root: Path, devkit: Path, labels: dict[str, int]) -> list[SourceItem]:
    """Flat ``val/`` (ILSVRC2012_val_00000001.JPEG ...): labels from the devkit's ground truth.

    The ground-truth file numbers classes by ILSVRC2012_ID, which ``data/meta.mat`` maps to wnids.
    """
    from scipy.io import loadmat  # scipy comes with scikit-image

    gt_file = devkit / "data" / "ILSVRC2012_validation_ground_truth.txt"
    meta_file = devkit / "data" / "meta.mat"
    for f in (gt_file, meta_file):
        if not f.is_file():
            raise SourceError(f"{f}: devkit file not found (needed for a flat val/ folder)")
    synsets = loadmat(meta_file, squeeze_me=True)["synsets"]
    id_to_wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
    gt = [int(x) for x in gt_file.read_text().split()]
    items = []
    for f in _image_files(root / "val"):
        number = int(f.stem.rsplit("_", 1)[-1])  # ILSVRC2012_val_00000001 -> 1
        if not 1 <= number <= len(gt):
            raise SourceError(f"{f}: no ground-truth line {number} in {gt_file}")
        wnid = id_to_wnid[gt[number - 1]]
        items.append(SourceItem(f.relative_to(root).with_suffix("").as_posix(), "val",
                                labels[wnid], str(f)))
    return items


def _imagenet_names(devkit: Path | None, wnids: list[str]) -> list[str]:
    if devkit is None or not (devkit / "data" / "meta.mat").is_file():
        return wnids
    from scipy.io import loadmat

    synsets = loadmat(devkit / "data" / "meta.mat", squeeze_me=True)["synsets"]
    words = {str(s["WNID"]): str(s["words"]).split(",")[0] for s in synsets}
    return [words.get(w, w) for w in wnids]


def scan_imagenet(root: Path, devkit: Path | None) -> SourceIndex:
    wnids = [d.name for d in _class_dirs(root / "train")]
    labels = {w: i for i, w in enumerate(wnids)}
    items = list(_items_from_class_dirs(root, "train", root / "train", labels))
    val = root / "val"
    if val.is_dir() and any(d.is_dir() for d in val.iterdir()):
        items += _items_from_class_dirs(root, "val", val, labels)
    elif val.is_dir():
        if devkit is None:
            raise SourceError(f"{val}: flat val folder needs prepare.devkit (ILSVRC2012 devkit)")
        items += _imagenet_val_from_devkit(root, devkit, labels)
    return SourceIndex(list(zip(wnids, _imagenet_names(devkit, wnids), strict=True)), items)


def _holdout(image_id: str, fraction: float) -> bool:
    """A stable val split for trees without one: the same file always lands on the same side."""
    digest = hashlib.sha256(image_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def scan_imagefolder(root: Path, val_fraction: float) -> SourceIndex:
    if (root / "train").is_dir():
        names = [d.name for d in _class_dirs(root / "train")]
        labels = {n: i for i, n in enumerate(names)}
        items = list(_items_from_class_dirs(root, "train", root / "train", labels))
        if (root / "val").is_dir():
            items += _items_from_class_dirs(root, "val", root / "val", labels)
    else:
        names = [d.name for d in _class_dirs(root)]
        labels = {n: i for i, n in enumerate(names)}
        items = [
            SourceItem(it.image_id, "val" if _holdout(it.image_id, val_fraction) else "train",
                       it.label, it.source_path)
            for it in _items_from_class_dirs(root, "train", root, labels)
        ]
    return SourceIndex([(n, n) for n in names], items)


# ---------------------------------------------------------------------------- scan + decode


def scan(source: str, path: str | Path, devkit: str = "", val_fraction: float = 0.1) -> SourceIndex:
    """Index a source; a missing or empty source is a :class:`SourceError` naming the folder."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path}: source folder does not exist")
    if source == "fashion_mnist":
        index = scan_fashion_mnist(path)
    elif source == "imagenet":
        index = scan_imagenet(path, Path(devkit) if devkit else None)
    elif source == "imagefolder":
        index = scan_imagefolder(path, val_fraction)
    else:
        raise SourceError(f"unknown source kind {source!r}")
    if not index.items:
        raise SourceError(f"{path}: no images found")
    return index


def limit_per_class(items: Iterable[SourceItem], split: str, limit: int) -> list[SourceItem]:
    """The first ``limit`` items of each class (in scan order) of one split; 0 keeps all."""
    seen: dict[int, int] = {}
    kept = []
    for it in items:
        if it.split != split:
            continue
        if limit and seen.get(it.label, 0) >= limit:
            continue
        seen[it.label] = seen.get(it.label, 0) + 1
        kept.append(it)
    return kept


def _to_rgb(img: Image.Image) -> Image.Image:
    """Grayscale, 16-bit, CMYK, palette and alpha images all become 8-bit RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        img = Image.fromarray(np.round(a).astype(np.uint8), mode="L")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def resize_center_crop(img: Image.Image, size: int) -> np.ndarray:
    """Shorter side to ``size`` (bicubic, antialiased), then the central ``size`` x ``size``."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def load_rgb(item: SourceItem, size: int) -> np.ndarray:
    """Decode one item to (size, size, 3) uint8, or raise :class:`BadImage` saying why."""
    try:
        if item.pixels is not None:
            img = Image.fromarray(np.ascontiguousarray(item.pixels))
        else:
            with Image.open(item.source_path) as f:
                f.load()  # a truncated file fails here, not later
                img = ImageOps.exif_transpose(f)
        return resize_center_crop(_to_rgb(img), size)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadImage(f"{type(e).__name__}: {e}") from None
