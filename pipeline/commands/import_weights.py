"""``vfmtok-pipeline import-weights``: released VFMTok / LlamaGen checkpoints -> model folders.

Converts the public tokenizer and GPT checkpoints (the files ``vfmtok.released_weights`` lists)
into ``data/tokenizer`` and ``data/generator`` (the released generators are GPTs), the
``save_pretrained`` folders the later stages read (``Tokenizer.from_pretrained`` /
``GPT.from_pretrained`` load them outside the pipeline too).
A file that is not one of them is refused with one line naming its first unmatched key; nothing
is written then. The stages accept the imported folders when ``params.yaml`` describes the same
models (``params/imagenet_release.yaml`` does); the differences are printed otherwise.

    vfmtok-pipeline profile imagenet_release
    dvc repro extract_features                 # prepare + val features (DINOv2 from backbone.weights)
    vfmtok-pipeline import-weights --tokenizer vfmtok-tokenizer.pt --generator GPT-B-300e.pt
    dvc repro --single-item tokenize sample evaluate

torch and the models load inside the functions that convert (``vfmtok-pipeline --help`` imports
this module).
"""

from __future__ import annotations

import argparse
import pickle
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from pipeline.commands import Command
from pipeline.errors import UserError
from pipeline.layout import Layout
from vfmtok import model_folder
from vfmtok.config_schema import differences, to_dict

if TYPE_CHECKING:
    import torch

    from pipeline.params import Params

DINOV2_L_336 = SimpleNamespace(level_channels=[1024] * 4, level_shapes=[(24, 24)] * 4, image_size=336)


class WeightsImportError(UserError):
    """A checkpoint that is not one of the accepted public files, or cannot be read safely."""


@dataclass
class Imported:
    folder: Path
    summary: str
    sections: dict  # the config sections written, for the comparison with params.yaml


def _public_state(path: Path, prefer: str) -> tuple[str, dict]:
    from vfmtok import released_weights as pw

    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    try:
        return pw.state_dict(pw.load_checkpoint(str(path)), prefer)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsImportError(f"{path}: not readable as a PyTorch checkpoint with weights_only=True: "
                                 f"{first}") from None
    except pw.PublicWeightsError as e:
        raise WeightsImportError(f"{path}: {e}") from None


def _convert(path: Path, public: dict, rules: list, ignored: dict, model: torch.nn.Module) -> dict:
    from vfmtok import released_weights as pw

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        return pw.convert(public, rules, ignored, expected)
    except pw.PublicWeightsError as e:
        raise WeightsImportError(f"{path}: {e}") from None


def import_tokenizer(path: Path, folder: Path, backbone_weights: str, prefer: str = "ema") -> Imported:
    """The public VFMTok tokenizer -> a tokenizer folder (its frozen DINOv2 from ``backbone_weights``)."""
    import torch

    from vfmtok import released_weights as pw
    from vfmtok.config import BackboneConfig
    from vfmtok.tokenizer import build_tokenizer

    if not Path(backbone_weights).is_file():
        raise FileNotFoundError(f"{backbone_weights}: DINOv2 ViT-L/14-reg4 weights file not found "
                                "(backbone.weights, or --backbone-weights)")
    entry, public = _public_state(path, prefer)
    cfg = pw.tokenizer_config()
    with torch.device("meta"):
        model = build_tokenizer(cfg, DINOV2_L_336)
    state = _convert(path, public, pw.tokenizer_rules(cfg), pw.TOKENIZER_IGNORED, model)
    backbone = BackboneConfig(**pw.BACKBONE, weights=str(backbone_weights))
    sections = {"tokenizer": to_dict(cfg), "backbone": to_dict(backbone)}
    model_folder.save_folder(folder, "tokenizer", state, {**sections, "imported_from": {
        "file": path.name, "entry": entry, "bytes": path.stat().st_size}})
    n = sum(t.numel() for t in state.values())
    return Imported(folder, f"{path.name} [{entry}] -> {folder}: VFMTok tokenizer, {n / 1e6:.1f}M parameters",
                    sections)


def import_gpt(path: Path, folder: Path, n_tokens: int = 256, prefer: str = "ema") -> Imported:
    """A public VFMTok / LlamaGen class-conditional GPT -> a GPT folder."""
    import torch

    from vfmtok import released_weights as pw
    from vfmtok.gpt import GPT

    entry, public = _public_state(path, prefer)
    try:
        name, cfg = pw.gpt_config({k: tuple(v.shape) for k, v in public.items()}, n_tokens)
    except pw.PublicWeightsError as e:
        raise WeightsImportError(f"{path}: {e}") from None
    with torch.device("meta"):
        model = GPT(cfg)
    state = _convert(path, public, pw.gpt_rules(cfg.n_layer), pw.GPT_IGNORED, model)
    model_folder.save_folder(folder, "gpt", state, {"gpt": to_dict(cfg), "zoo_name": name, "imported_from": {
        "file": path.name, "entry": entry, "bytes": path.stat().st_size}})
    n = sum(t.numel() for t in state.values())
    return Imported(folder, f"{path.name} [{entry}] -> {folder}: {name}, {n / 1e6:.1f}M parameters, "
                    f"{n_tokens} tokens", {"gpt": to_dict(cfg), "zoo_name": name})


def _diffs(name: str, stored: dict, expected: dict) -> list[str]:
    return [f"{k}: {b!r} in params, {a!r} imported" for k, a, b in differences(stored, expected, f"{name}.")]


def params_differences(params: Params, imported: list[Imported]) -> list[str]:
    """What in ``params.yaml`` would make the stages refuse the imported folders (the checks of
    ``pipeline/models/trained.py``)."""
    out = []
    for imp in imported:
        s = imp.sections
        if "tokenizer" in s:
            out += _diffs("tokenizer", s["tokenizer"], to_dict(params.tokenizer))
            out += _diffs("backbone", s["backbone"], to_dict(params.backbone))
        if "gpt" in s:
            if params.ar_model.model != s["zoo_name"]:
                out.append(f"ar_model.model: {params.ar_model.model!r} in params, {s['zoo_name']!r} imported")
            expected = params.ar_model.model_config(params.tokenizer.codebook_size, params.tokenizer.n_tokens,
                                                    s["gpt"]["num_classes"])
            out += _diffs("gpt", s["gpt"], to_dict(expected))
    return out


def run(root: str, params_file: str, tokenizer: str | None, generator: str | None, n_tokens: int,
        backbone_weights: str | None, prefer: str) -> list[str]:
    """Import what is given; returns the lines to print."""
    from pipeline.params import load_params

    if not tokenizer and not generator:
        raise WeightsImportError("import-weights: give --tokenizer FILE, --generator FILE or both")
    layout = Layout(Path(root))
    params = load_params(params_file, check_paths=False)
    done = []
    if tokenizer:
        weights = backbone_weights or params.backbone.weights
        done.append(import_tokenizer(Path(tokenizer), layout.tokenizer, weights, prefer))
    if generator:
        done.append(import_gpt(Path(generator), layout.generator, n_tokens, prefer))
    lines = [imp.summary for imp in done]
    diffs = params_differences(params, done)
    if diffs:
        lines.append(f"note: the stages will refuse these folders until {params_file} matches them "
                     f"(params/imagenet_release.yaml does): " + "; ".join(diffs))
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", metavar="FILE", help="VFMTok's vfmtok-tokenizer.pt")
    parser.add_argument("--generator", metavar="FILE",
                        help="a released generator, a GPT: VFMTok's GPT-*-*e.pt or LlamaGen's c2i_*_*.pt")
    parser.add_argument("--n-tokens", type=int, default=256, help="the generator's tokens per image: 256, "
                        "or 576 for LlamaGen's c2i_*_384.pt (default 256)")
    parser.add_argument("--backbone-weights", metavar="FILE", help="DINOv2 ViT-L/14-reg4 weights for the "
                        "tokenizer (default: backbone.weights of the params file)")
    parser.add_argument("--weights", choices=["ema", "model"], default="ema",
                        help="which weights of a training checkpoint (default: ema when present)")
    parser.add_argument("--params", default="params.yaml")


def main(args: argparse.Namespace) -> None:
    for line in run(args.root, args.params, args.tokenizer, args.generator, args.n_tokens,
                    args.backbone_weights, args.weights):
        print(line)


HELP = ("released VFMTok / LlamaGen checkpoints -> data/tokenizer, data/generator "
        "(see docs/imagenet.md: Importing released weights)")
COMMAND = Command("import-weights", HELP, add_arguments, main)
