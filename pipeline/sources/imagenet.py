"""ILSVRC-2012 in the three layouts it is distributed in.

- class folders: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``;
- devkit: a flat ``val/ILSVRC2012_val_NNNNNNNN.JPEG`` whose labels come from the devkit
  (``prepare.devkit``: ``data/meta.mat`` maps ILSVRC2012_IDs to wnids, and
  ``data/ILSVRC2012_validation_ground_truth.txt`` gives one ID per val image);
- Kaggle (``imagenet-object-localization-challenge``): ``prepare.path`` is the folder holding
  ``LOC_synset_mapping.txt``, ``LOC_val_solution.csv`` and ``ILSVRC/Data/CLS-LOC/{train,val}``
  (or ``CLS-LOC`` itself, the CSVs then being three levels up or beside it); the first wnid of
  each ``PredictionString`` labels a val image.

Labels are the index of the wnid among the sorted train folders in every layout, and image ids
are the path under the folder that holds ``train/`` and ``val/`` (``val/ILSVRC2012_val_00000001``),
so one set of images gives the same prepared data whichever way it was unpacked. A val image
without a label is skipped and listed; a label file that names an unknown class is an error.
"""

from __future__ import annotations

import csv
from pathlib import Path

from pipeline.errors import SourceError
from pipeline.sources.imagefolder import class_dirs, image_id, items_from_class_dirs
from pipeline.sources.items import Skipped, SourceFile, SourceIndex, SourceItem
from pipeline.sources.walk import image_files, subdirs

KAGGLE_DATA = ("ILSVRC", "Data", "CLS-LOC")
KAGGLE_VAL, KAGGLE_SYNSETS = "LOC_val_solution.csv", "LOC_synset_mapping.txt"
DEVKIT_META, DEVKIT_GT = "data/meta.mat", "data/ILSVRC2012_validation_ground_truth.txt"


def _kaggle_dirs(root: Path) -> tuple[Path, Path | None]:
    """(the folder holding train/ and val/, the folder holding the Kaggle CSVs or None)."""
    data = root.joinpath(*KAGGLE_DATA)
    if data.is_dir():
        return data, root
    candidates = [root] + ([root.parents[2]] if root.parts[-3:] == KAGGLE_DATA else [])
    return root, next((c for c in candidates if (c / KAGGLE_VAL).is_file()), None)


def _need(path: Path, why: str) -> Path:
    if not path.is_file():
        raise SourceError(f"{path}: file not found ({why})")
    return path


def _devkit_synsets(devkit: Path) -> list:
    from scipy.io import loadmat  # scipy comes with scikit-image

    return list(loadmat(_need(devkit / DEVKIT_META, "ILSVRC2012 devkit"), squeeze_me=True)["synsets"])


def _val_from_devkit(data: Path, devkit: Path, labels: dict[str, int], files: list[SourceFile],
                     skipped: list[Skipped]) -> list[SourceItem]:
    """The ground-truth file numbers classes by ILSVRC2012_ID, which ``meta.mat`` maps to wnids."""
    gt_file = _need(devkit / DEVKIT_GT, "needed for a flat val/ folder")
    id_to_wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in _devkit_synsets(devkit)}
    files += [SourceFile.stat(gt_file), SourceFile.stat(devkit / DEVKIT_META)]
    gt = [int(x) for x in gt_file.read_text().split()]
    items = []
    for f in image_files(data / "val", skipped):
        stem = Path(f.path).stem.rsplit("_", 1)[-1]  # ILSVRC2012_val_00000001 -> 00000001
        number = int(stem) if stem.isdigit() else 0
        if not 1 <= number <= len(gt):
            skipped.append(Skipped(f.path, f"no line for it in {gt_file}"))
            continue
        wnid = id_to_wnid.get(gt[number - 1], "")
        if wnid not in labels:
            raise SourceError(f"{gt_file}: line {number}: ILSVRC2012_ID {gt[number - 1]} is "
                              f"{wnid or 'not in meta.mat'}, not among the train classes")
        files.append(f)
        items.append(SourceItem(image_id(data, f.path), "val", labels[wnid], f.path))
    return items


def _val_from_kaggle(data: Path, meta: Path, labels: dict[str, int], files: list[SourceFile],
                     skipped: list[Skipped]) -> list[SourceItem]:
    path = meta / KAGGLE_VAL
    files.append(SourceFile.stat(path))
    wnid_of = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"ImageId", "PredictionString"} <= set(reader.fieldnames or []):
            raise SourceError(f"{path}: expected the columns ImageId,PredictionString")
        for row_no, row in enumerate(reader, start=2):
            wnid = (row["PredictionString"] or "").split(" ", 1)[0]
            if wnid not in labels:
                raise SourceError(f"{path}: row {row_no}: class {wnid!r} of {row['ImageId']} is "
                                  "not among the train classes")
            wnid_of[row["ImageId"]] = wnid
    items = []
    for f in image_files(data / "val", skipped):
        wnid = wnid_of.get(Path(f.path).stem)
        if wnid is None:
            skipped.append(Skipped(f.path, f"no row for it in {path}"))
            continue
        files.append(f)
        items.append(SourceItem(image_id(data, f.path), "val", labels[wnid], f.path))
    return items


def _names(wnids: list[str], devkit: Path | None, meta: Path | None, files: list[SourceFile]) -> list[str]:
    """Human-readable class names (the first synonym), from the devkit or Kaggle's mapping."""
    words: dict[str, str] = {}
    if devkit is not None and (devkit / DEVKIT_META).is_file():
        words = {str(s["WNID"]): str(s["words"]).split(",")[0] for s in _devkit_synsets(devkit)}
    elif meta is not None and (meta / KAGGLE_SYNSETS).is_file():
        files.append(SourceFile.stat(meta / KAGGLE_SYNSETS))
        for line in (meta / KAGGLE_SYNSETS).read_text().splitlines():
            wnid, _, rest = line.strip().partition(" ")
            words[wnid] = rest.split(",")[0].strip() or wnid
    return [words.get(w, w) for w in wnids]


def scan_imagenet(root: Path, devkit: Path | None) -> SourceIndex:
    data, meta = _kaggle_dirs(root)
    files: list[SourceFile] = []
    skipped: list[Skipped] = []
    dirs = class_dirs(data / "train", skipped)
    wnids = [d.name for d in dirs]
    labels = {w: i for i, w in enumerate(wnids)}
    items = list(items_from_class_dirs(data, "train", dirs, labels, files, skipped))
    val, layout = data / "val", "imagenet/class-folders"
    if val.is_dir() and subdirs(val, []):
        items += items_from_class_dirs(data, "val", class_dirs(val, skipped), labels, files, skipped)
    elif val.is_dir():
        if devkit is not None:
            val_items, layout = _val_from_devkit(data, devkit, labels, files, skipped), "imagenet/devkit"
        elif meta is not None:
            val_items, layout = _val_from_kaggle(data, meta, labels, files, skipped), "imagenet/kaggle"
        else:
            raise SourceError(f"{val}: flat val folder needs prepare.devkit (ILSVRC2012 devkit) or, "
                              f"for the Kaggle layout, {KAGGLE_VAL} and {KAGGLE_SYNSETS} in {root}")
        if not val_items and any(s.source_path.startswith(str(val)) for s in skipped):
            raise SourceError(f"{val}: no val image has a label ({layout.split('/')[1]} labels)")
        items += val_items
    classes = list(zip(wnids, _names(wnids, devkit, meta, files), strict=True))
    return SourceIndex(classes, items, layout, sorted(files, key=lambda f: f.path), skipped)
