"""Model folders: ``model.safetensors`` + ``config.json``, enough to rebuild a model from the folder
alone (the way timm and Hugging Face keep a model's config beside its weights).

``config.json`` holds ``{"format": "vfmtok.<kind>", "version": 1, <config sections>...,
"weights_sha256": ...}``. The sections are the dataclasses of :mod:`vfmtok.config` as plain dicts
and are read back with :func:`vfmtok.config_schema.from_dict`, so a hand-edited or foreign file fails with
the file, key and value, like a params file. The models' own ``save_pretrained`` /
``from_pretrained`` (``vfmtok.tokenizer``, ``vfmtok.transformer.Generator`` for the GPT and RAR)
are built on these helpers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vfmtok import files
from vfmtok.config_schema import ConfigError, differences, from_dict

WEIGHTS, CONFIG = "model.safetensors", "config.json"
VERSION = 1


class ModelFolderError(FileNotFoundError):
    """A model folder that is missing, incomplete or of another kind; names the file."""


class ConfigMismatch(ValueError):
    """A stored model config that differs from the one a caller expects; names every key."""


def save_folder(folder: str | Path, kind: str, state: dict, sections: dict[str, Any]) -> str:
    """Write ``state`` (tensors) and the config sections atomically; returns the weights' sha256."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    files.write_with(folder / WEIGHTS, lambda tmp: save_file(tensors, str(tmp)))
    digest = files.sha256_file(folder / WEIGHTS)
    files.write_json(folder / CONFIG, {"format": f"vfmtok.{kind}", "version": VERSION, **sections,
                                       "weights_sha256": digest})
    return digest


def _read_json(folder: str | Path) -> dict[str, Any] | Any:
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise ModelFolderError(f"{path}: not found (a model folder holds {WEIGHTS} and {CONFIG})")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError("<file>", str(path), f"not valid JSON: {e}", path) from None


def read_format(folder: str | Path) -> str:
    """The folder's ``config.json`` format (``vfmtok.<kind>``), to pick the class that loads it."""
    meta = _read_json(folder)
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if not isinstance(fmt, str):
        raise ConfigError("format", fmt, "missing: not a vfmtok model folder", Path(folder) / CONFIG)
    return fmt


def read_config(folder: str | Path, kind: str) -> dict[str, Any]:
    """The folder's ``config.json``, checked to be a ``kind`` model of a known version."""
    path = Path(folder) / CONFIG
    meta = _read_json(folder)
    if not isinstance(meta, dict) or meta.get("format") != f"vfmtok.{kind}":
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ConfigError("format", found, f"expected 'vfmtok.{kind}'", path)
    if meta.get("version") != VERSION:
        raise ConfigError("version", meta.get("version"), f"this code reads version {VERSION}", path)
    return meta


def section(meta: dict, name: str, cls: type, folder: str | Path) -> Any:
    """Config section ``name`` of a ``config.json`` as dataclass ``cls`` (errors name the file)."""
    try:
        return from_dict(cls, meta.get(name), name)
    except ConfigError as e:
        raise e.in_file(Path(folder) / CONFIG) from None


def load_weights(folder: str | Path, device: str = "cpu") -> dict:
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise ModelFolderError(f"{path}: not found (a model folder holds {WEIGHTS} and {CONFIG})")
    return load_file(str(path), device=str(device))


def weights_sha256(folder: str | Path) -> str:
    """The weights' sha256 as recorded at save time (what token files cite)."""
    meta = json.loads((Path(folder) / CONFIG).read_text())
    return str(meta["weights_sha256"])


def require_same(folder: str | Path, name: str, stored: dict, expected: dict, source: str) -> None:
    """Refuse a model whose stored section ``name`` differs from ``expected`` (from ``source``,
    e.g. "params.yaml"), naming every differing key with both values."""
    diffs = differences(stored, expected, f"{name}.")
    if diffs:
        shown = "; ".join(f"{k} is {a!r} there, {b!r} in {source}" for k, a, b in diffs[:4])
        more = f" (+{len(diffs) - 4} more)" if len(diffs) > 4 else ""
        raise ConfigMismatch(f"{Path(folder) / CONFIG}: trained with another config: {shown}{more}")
