"""Readers for the shards that ``prepare`` and ``extract_features`` write.

Image shards are ``.npy`` uint8 arrays (N, H, W, 3), memory-mapped so a stage touches only the
shard it works on; feature shards are safetensors files with one float16 (N, C_l, H_l, W_l) tensor
per backbone level. Both are indexed by ``data/prepared/manifest.parquet``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file


class ShardError(ValueError):
    """A shard or manifest that does not match what the stage that wrote it promised."""


def read_manifest(prepared: Path) -> pd.DataFrame:
    path = prepared / "manifest.parquet"
    if not path.is_file():
        raise ShardError(f"{path}: not found; run the prepare stage first")
    return pd.read_parquet(path)


def read_classes(prepared: Path) -> list[dict]:
    return json.loads((prepared / "classes.json").read_text())


def load_image_shard(prepared: Path, shard: str) -> np.ndarray:
    """(N, H, W, 3) uint8, memory-mapped."""
    path = prepared / "images" / shard
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ShardError(f"{path}: cannot read image shard: {e}") from None
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ShardError(f"{path}: expected (N, H, W, 3) uint8, got {arr.shape} {arr.dtype}")
    return arr


def images_to_tensor(batch: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1], the convention of every model here."""
    x = torch.from_numpy(np.array(batch))  # copy: shards are read-only memory maps
    x = x.permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def feature_shard_name(image_shard: str) -> str:
    return Path(image_shard).with_suffix(".safetensors").name


def load_feature_shard(features: Path, image_shard: str) -> list[torch.Tensor]:
    """The levels of one shard, each (N, C_l, H_l, W_l) float16."""
    path = features / feature_shard_name(image_shard)
    try:
        tensors = load_file(str(path))
    except (OSError, ValueError, RuntimeError) as e:
        raise ShardError(f"{path}: cannot read feature shard: {e}") from None
    return [tensors[f"level_{i}"] for i in range(len(tensors))]
