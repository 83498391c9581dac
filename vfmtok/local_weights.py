"""Reading weights from local files only: nothing in this project downloads."""

from __future__ import annotations

import os

import torch
from torch import Tensor


def read_state_dict(path: str, what: str = "weights") -> dict[str, Tensor]:
    """A local .safetensors or torch state dict (tensors only, ``weights_only=True``), unwrapping
    a ``{"state_dict": ...}`` or ``{"model": ...}`` checkpoint. A missing file names the path."""
    if not path:
        raise FileNotFoundError(f"no {what} file given (path is empty); nothing is downloaded")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path!r} (weights are only read from local files; "
                                "nothing is downloaded)")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ValueError(f"{what} file {path!r} does not hold a state dict")
    return sd
