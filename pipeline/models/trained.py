"""The trained models as the later stages load them: from their folders alone, then checked
against ``params.yaml``, so a model trained with other settings is refused with the keys that
differ instead of producing numbers that belong to neither."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.errors import UserError
from pipeline.layout import Layout
from pipeline.params import Params
from vfmtok import model_folder, zoo
from vfmtok.config import BackboneConfig, TokenizerConfig
from vfmtok.config_schema import to_dict
from vfmtok.tokenizer import Tokenizer


def _stored(folder, meta: dict, name: str, cls: type) -> dict:
    """A stored config section with the defaults of fields added since it was written filled in
    (a folder from before a new switch existed was built with the switch's default)."""
    return to_dict(model_folder.section(meta, name, cls, folder))


def load_tokenizer(layout: Layout, params: Params, device: torch.device,
                   backbone: torch.nn.Module | None = None) -> tuple[Tokenizer, str]:
    """The EMA tokenizer of ``data/tokenizer`` (eval mode) and its weights' sha256."""
    folder = layout.tokenizer
    meta = model_folder.read_config(folder, "tokenizer")
    model_folder.require_same(folder, "tokenizer", _stored(folder, meta, "tokenizer", TokenizerConfig),
                            to_dict(params.tokenizer), "params.yaml")
    if params.tokenizer.kind == "vfmtok":
        model_folder.require_same(folder, "backbone", _stored(folder, meta, "backbone", BackboneConfig),
                                to_dict(params.backbone), "params.yaml")
    model = Tokenizer.from_pretrained(folder, device, backbone=backbone)
    return model, str(meta["weights_sha256"])


def generator_folder(layout: Layout, folder: Path | None = None) -> Path:
    """``folder``, or the project's ``data/generator``; a project that still has the folder under
    its earlier name, ``data/gpt``, is told to rename it instead of being told nothing is there."""
    if folder is not None:
        return folder
    legacy = layout.data / "gpt"
    if not (layout.generator / model_folder.CONFIG).is_file() and (legacy / model_folder.CONFIG).is_file():
        raise UserError(f"{legacy}: the generator's folder is now {layout.generator}; rename it "
                        f"(mv {legacy} {layout.generator}) and run again")
    return layout.generator


def load_generator(layout: Layout, params: Params, num_classes: int,
                   device: torch.device) -> zoo.Generator:
    """The generator of ``data/generator`` (eval mode; a GPT or RAR folder), checked to be the
    family and config that ``ar_model`` and the tokenizer's size make."""
    folder, family = generator_folder(layout), params.ar_model.family
    meta = model_folder.read_config(folder, family)  # a folder of the other family: named here
    expected = params.ar_model.model_config(params.tokenizer.codebook_size, params.tokenizer.n_tokens,
                                            num_classes)
    cls = zoo.FAMILIES[family]
    stored = _stored(folder, meta, family, cls.config_cls)
    model_folder.require_same(folder, family, stored, to_dict(expected), "params.yaml")
    return cls.from_pretrained(folder, device)
