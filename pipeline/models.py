"""Trained models as later stages load them: the EMA tokenizer from ``data/tokenizer``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pipeline import artifacts
from pipeline.config import to_dict
from pipeline.datasets import SplitFeatures, SplitImages
from pipeline.params import Params
from vfmtok.backbones import build_backbone
from vfmtok.runtime import autocast
from vfmtok.tokenizer import Tokenizer, build_tokenizer

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def save_tokenizer(folder: Path, model: Tokenizer, params: Params) -> str:
    """EMA weights (safetensors, no frozen backbone) + the configs that rebuild the model.
    Returns the weights' sha256, which the token files record."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    artifacts.write_with(folder / WEIGHTS, lambda tmp: save_file(state, str(tmp)))
    digest = artifacts.sha256_file(folder / WEIGHTS)
    artifacts.write_json(folder / CONFIG, {
        "tokenizer": to_dict(params.tokenizer), "backbone": to_dict(params.backbone),
        "weights_sha256": digest,
    })  # fmt: skip
    return digest


def load_tokenizer(folder: Path, params: Params, device: torch.device) -> tuple[Tokenizer, str]:
    """The trained EMA tokenizer (eval mode) and its weights' sha256."""
    meta = json.loads((folder / CONFIG).read_text())
    if meta["tokenizer"] != to_dict(params.tokenizer):
        raise ValueError(f"{folder / CONFIG}: trained with another tokenizer config than params.yaml")
    backbone = build_backbone(params.backbone) if params.tokenizer.kind == "vfmtok" else None
    model = build_tokenizer(params.tokenizer, backbone)
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    return model.to(device).eval(), meta["weights_sha256"]


@torch.no_grad()
def reconstruct(
    model: Tokenizer, images: SplitImages, features: SplitFeatures | None,
    batch_size: int, device: torch.device, limit: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(originals uint8, reconstructions uint8, token ids) for the first ``limit`` (0 = all) images."""
    n = len(images) if limit <= 0 else min(limit, len(images))
    originals, recons, ids = [], [], []
    for i in range(0, n, batch_size):
        idx = torch.arange(i, min(i + batch_size, n))
        x = images.tensor(idx).to(device)
        levels = None if features is None else [lv.to(device) for lv in features.batch(idx)]
        with autocast(device):
            out = model(x, levels)
        originals.append(images.uint8(idx.numpy()))
        recons.append(to_uint8(out.recon))
        ids.append(out.indices.cpu().numpy())
    return np.concatenate(originals), np.concatenate(recons), np.concatenate(ids)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
