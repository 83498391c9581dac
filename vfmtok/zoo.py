"""The two generator families by name: LlamaGen-style raster GPT (:mod:`vfmtok.gpt`) and RAR
(:mod:`vfmtok.rar`). A zoo name (``GPT-B``, ``RAR-L``, ...; :data:`vfmtok.config.GENERATOR_SIZES`)
or a config picks the family; a model folder's ``config.json`` says which one it holds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from vfmtok import model_folder
from vfmtok.config import ARTrainConfig, GPTConfig, RARConfig, generator_config
from vfmtok.gpt import GPT
from vfmtok.rar import RAR, annealed_step
from vfmtok.transformer import Generator

FAMILIES: dict[str, type[Generator]] = {"gpt": GPT, "rar": RAR}


def build_generator(cfg: GPTConfig | RARConfig) -> Generator:
    """A freshly initialised model of ``cfg``'s family."""
    return GPT(cfg) if isinstance(cfg, GPTConfig) else RAR(cfg)


def build(name: str, **overrides) -> Generator:
    """The zoo entry ``name`` of either family, with config ``overrides``."""
    return build_generator(generator_config(name, **overrides))


def from_pretrained(folder: str | Path, device: str | torch.device = "cpu") -> Generator:
    """Whichever generator ``folder`` holds (its ``config.json``'s format), rebuilt from it alone."""
    fmt = model_folder.read_format(folder)
    family = fmt.removeprefix("vfmtok.")
    if family not in FAMILIES:
        raise model_folder.ModelFolderError(f"{Path(folder) / model_folder.CONFIG}: format {fmt!r} is "
                                          f"not a generator (expected vfmtok.gpt or vfmtok.rar)")
    return FAMILIES[family].from_pretrained(folder, device)


StepFn = Callable[[nn.Module, Tensor, Tensor, int], Tensor]


def training_step(model: nn.Module, cfg: ARTrainConfig) -> StepFn | None:
    """The ``step_fn`` of :func:`vfmtok.generator_training.train_ar` for ``model``: RAR's annealed random
    orders; None (plain raster teacher forcing) for the GPT."""
    if isinstance(model, RAR):
        return annealed_step(cfg.randomness_anneal_start, cfg.randomness_anneal_end)
    return None
