"""Generated ILSVRC-2012 trees in the layouts it ships in: class folders, a flat val/ with the
devkit, and Kaggle's (LOC_val_solution.csv + LOC_synset_mapping.txt + ILSVRC/Data/CLS-LOC)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

WNIDS = ["n01440764", "n01443537"]
WORDS = {"n01440764": "tench, Tinca tinca", "n01443537": "goldfish, Carassius auratus"}
VAL_WNIDS = ["n01440764", "n01443537", "n01443537"]  # the class of val images 1, 2, 3


def jpeg(path: Path, color, mode: str = "RGB", size: tuple[int, int] = (48, 40)) -> None:
    """A JPEG with a horizontal ramp over ``color`` (so re-encoding has something to lose)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode != "RGB":
        Image.new(mode, size, color).save(path, format="JPEG")
        return
    ramp = np.linspace(0, 60, size[0])[None, :, None]
    pixels = np.clip(np.asarray(color, float)[None, None, :] + ramp, 0, 255).astype(np.uint8)
    Image.fromarray(np.broadcast_to(pixels, (size[1], size[0], 3)).copy()).save(path, format="JPEG")


def _train(data: Path, awkward: bool) -> None:
    for k, wnid in enumerate(WNIDS):
        for i in range(3):
            jpeg(data / "train" / wnid / f"{wnid}_{i}.JPEG", (200 * k, 40 * i, 90))
    if not awkward:
        return
    cls0 = data / "train" / WNIDS[0]
    (cls0 / "trunc.JPEG").write_bytes((cls0 / f"{WNIDS[0]}_0.JPEG").read_bytes()[:300])
    (cls0 / "notes.JPEG").write_text("this is a text file")
    jpeg(cls0 / "gray.JPEG", 128, mode="L")
    jpeg(cls0 / "cmyk.JPEG", (0, 255, 255, 0), mode="CMYK")  # red
    pal = Image.new("P", (30, 30), 1)
    pal.putpalette([0, 0, 0, 0, 180, 0] + [0] * 762)
    pal.save(data / "train" / WNIDS[1] / "palette.JPEG", format="PNG")  # a PNG named .JPEG


def _flat_val(data: Path) -> None:
    for n in range(1, len(VAL_WNIDS) + 1):
        jpeg(data / "val" / f"ILSVRC2012_val_{n:08d}.JPEG", (10 * n, 0, 0))


def class_folder_tree(root: Path, awkward: bool = True) -> Path:
    """train/<wnid>/ (with broken, grayscale, CMYK and palette files when ``awkward``) and val/<wnid>/."""
    _train(root, awkward)
    for k, wnid in enumerate(WNIDS):
        jpeg(root / "val" / wnid / f"ILSVRC2012_val_0000000{k + 1}.JPEG", (50, 50, 50))
    return root


def devkit_tree(root: Path, awkward: bool = False) -> Path:
    """A flat val/ and ``root/devkit`` (meta.mat + ground truth); returns the devkit folder."""
    from scipy.io import savemat

    _train(root, awkward)
    _flat_val(root)
    data = root / "devkit" / "data"
    data.mkdir(parents=True)
    synsets = np.zeros(2, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")])
    synsets[0] = (1, WNIDS[1], WORDS[WNIDS[1]])  # IDs do not follow wnid order
    synsets[1] = (2, WNIDS[0], WORDS[WNIDS[0]])
    savemat(data / "meta.mat", {"synsets": synsets})
    ids = {WNIDS[1]: 1, WNIDS[0]: 2}
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{ids[w]}\n" for w in VAL_WNIDS))
    return root / "devkit"


def kaggle_tree(root: Path, awkward: bool = False) -> Path:
    """imagenet-object-localization-challenge/ as Kaggle unpacks it; returns ``root``."""
    data = root / "ILSVRC" / "Data" / "CLS-LOC"
    _train(data, awkward)
    _flat_val(data)
    (data / "test").mkdir()
    jpeg(data / "test" / "ILSVRC2012_test_00000001.JPEG", (0, 0, 0))
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} {WORDS[w]}\n" for w in WNIDS))
    rows = [f"ILSVRC2012_val_{n:08d},{w} 10 20 30 40 {w} 1 2 3 4"
            for n, w in enumerate(VAL_WNIDS, start=1)]
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows[::-1]) + "\n")
    return root
