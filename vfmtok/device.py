"""Device choice and mixed precision, in one place so every stage behaves the same on CPU and CUDA."""

from __future__ import annotations

import contextlib

import torch


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` takes CUDA when present; asking for ``cuda`` without one is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
    return torch.device(name)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (TF32 on for the fp32 parts); plain fp32 on CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast disabled, for a region computed in fp32 whatever the caller's autocast. The meta
    device (the shape-only passes that size a step's memory) has no autocast: nothing to disable."""
    if device_type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)
