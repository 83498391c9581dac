"""Every generator by name: one registry, one :func:`build`.

A family (:mod:`vfmtok.gpt`'s raster GPT, :mod:`vfmtok.rar`'s RAR) registers its sizes where its
config is declared (:data:`vfmtok.generator_config.ZOO`, torch-free) and its model class by
subclassing :class:`~vfmtok.transformer.Generator`; this module ties the two together:
``build("RAR-L", num_classes=10)``, ``build_from_config(cfg)``, and :func:`from_pretrained` for a
model folder of either family (its ``config.json`` says which).
"""

from __future__ import annotations

from pathlib import Path

import torch

from vfmtok import gpt, model_folder, rar  # noqa: F401  (defining the classes registers the families)
from vfmtok.generator_config import ZOO, GPTConfig, RARConfig, generator_config
from vfmtok.transformer import Generator

# family -> model class ("gpt": GPT, "rar": RAR): filled by the families' imports above
FAMILIES: dict[str, type[Generator]] = Generator.families


def names() -> list[str]:
    """Every registered size, family by family (``GPT-Tiny`` .. ``RAR-XXL``)."""
    return list(ZOO)


def build_from_config(cfg: GPTConfig | RARConfig) -> Generator:
    """A freshly initialised model of ``cfg``'s family."""
    return FAMILIES[cfg.family](cfg)


def build(name: str, **overrides) -> Generator:
    """The zoo entry ``name`` of any family, with config ``overrides``."""
    return build_from_config(generator_config(name, **overrides))


def from_pretrained(folder: str | Path, device: str | torch.device = "cpu") -> Generator:
    """Whichever generator ``folder`` holds (its ``config.json``'s format), rebuilt from it alone."""
    fmt = model_folder.read_format(folder)
    family = fmt.removeprefix("vfmtok.")
    if family not in FAMILIES:
        expected = " or ".join(f"vfmtok.{f}" for f in FAMILIES)
        raise model_folder.ModelFolderError(f"{Path(folder) / model_folder.CONFIG}: format {fmt!r} is "
                                            f"not a generator (expected {expected})")
    return FAMILIES[family].from_pretrained(folder, device)
