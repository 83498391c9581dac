"""Cached backbone features: what ``extract_features`` writes and the tokenizer stages read.

``data/features/``:
- ``<image shard stem>.safetensors``: one float16 (N, C_l, H_l, W_l) tensor per backbone level,
  keys ``level_0 .. level_{L-1}``, rows in the image shard's order;
- ``manifest.json``: the backbone config, the level shapes, the semantic level and the shards.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from pipeline.errors import FormatError
from pipeline.formats.prepared import SplitImages
from vfmtok import files

MANIFEST = "manifest.json"


def feature_file(image_shard: str) -> str:
    return Path(image_shard).with_suffix(".safetensors").name


def _key(level: int) -> str:
    return f"level_{level}"


def write_shard(folder: Path, image_shard: str, levels: list[Tensor]) -> None:
    """The levels of one image shard, each (N, C_l, H_l, W_l), stored as float16."""
    tensors = {_key(i): lv.to(torch.float16).contiguous() for i, lv in enumerate(levels)}
    files.write_with(folder / feature_file(image_shard), lambda tmp: save_file(tensors, str(tmp)))


def write_manifest(folder: Path, backbone: dict, level_channels: list[int],
                   level_shapes: list[tuple[int, int]], shards: list[str], splits: list[str]) -> None:
    files.write_json(folder / MANIFEST, {
        "backbone": backbone,
        "dtype": "float16",
        "levels": [{"channels": c, "height": h, "width": w}
                   for c, (h, w) in zip(level_channels, level_shapes, strict=True)],
        "semantic_level": len(level_channels) - 1,
        "shards": [{"image_shard": s, "file": feature_file(s)} for s in shards],
        "splits": splits,
    })  # fmt: skip


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise FormatError(f"{path}: not found; run the extract_features stage first")
    return json.loads(path.read_text())


def load_shard(folder: Path, image_shard: str) -> list[Tensor]:
    """The levels of one shard, each (N, C_l, H_l, W_l) float16."""
    path = folder / feature_file(image_shard)
    try:
        tensors = load_file(str(path))
    except (OSError, ValueError, RuntimeError) as e:
        raise FormatError(f"{path}: cannot read feature shard: {e}") from None
    try:
        return [tensors[_key(i)] for i in range(len(tensors))]
    except KeyError as e:
        raise FormatError(f"{path}: missing tensor {e.args[0]!r}") from None


class SplitFeatures:
    """The cached backbone levels of one split, in the same order as :class:`SplitImages`."""

    def __init__(self, folder: Path, images: SplitImages):
        per_shard = [load_shard(folder, s) for s in images.shard_names]
        self.levels = [torch.cat([lv[i] for lv in per_shard]) for i in range(len(per_shard[0]))]
        if len(self.levels[0]) != len(images):
            raise FormatError(f"{folder}: feature rows do not match the '{images.split}' image rows")

    def batch(self, indices) -> list[Tensor]:
        """float32 levels of the images at ``indices``: each (B, C_l, H_l, W_l)."""
        idx = torch.as_tensor(indices)
        return [lv[idx].float() for lv in self.levels]


def for_split(folder: Path, images: SplitImages, tokenizer_kind: str,
              extracted: list[str]) -> SplitFeatures | None:
    """The cached levels when they can stand in for the backbone (the vfmtok kind reads the
    backbone's levels; the split was extracted), else None: run the backbone instead."""
    if tokenizer_kind != "vfmtok" or images.split not in extracted:
        return None
    return SplitFeatures(folder, images)
