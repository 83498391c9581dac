"""Every knob of the pipeline: one dataclass per ``params.yaml`` section.

DVC tracks these keys (``params:`` in ``dvc.yaml``), so a change to any of them re-runs exactly the
stages that read it. Loading validates everything up front and fails with the file, key and value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from pipeline.config import ParamsError, from_dict
from vfmtok.backbones import BackboneConfig
from vfmtok.gpt import GPT_MODELS
from vfmtok.tokenizer import TokenizerConfig
from vfmtok.train_ar import ARTrainConfig
from vfmtok.train_tokenizer import TokenizerTrainConfig

PROFILES_DIR = "params"
Device = Literal["auto", "cpu", "cuda"]


@dataclass
class PrepareParams:
    """Where the images come from and how they are cut to size."""

    source: Literal["fashion_mnist", "imagenet", "imagefolder"]
    path: str  # folder holding the source (idx files, ILSVRC-2012 tree or ImageFolder tree)
    resolution: int = field(metadata={"min": 8, "max": 2048})
    max_per_class_train: int = field(metadata={"min": 0})  # 0 = every image
    max_per_class_val: int = field(metadata={"min": 0})
    shard_size: int = field(metadata={"min": 1})
    workers: int = field(default=0, metadata={"min": 0})  # decode processes; 0 = in-process
    devkit: str = ""  # ImageNet flat val/: ILSVRC2012 devkit dir (data/meta.mat + ground truth)
    val_fraction: float = field(default=0.1, metadata={"min": 0.0, "max": 0.9})  # imagefolder



@dataclass
class ExtractParams:
    """How the frozen backbone is run over the prepared images."""

    batch_size: int = field(metadata={"min": 1})
    splits: list[Literal["train", "val"]]
    device: Device = "auto"
    retries: int = field(default=2, metadata={"min": 0})


@dataclass
class TrainTokenizerParams(TokenizerTrainConfig):
    """The tokenizer's optimisation (``vfmtok.train_tokenizer``) plus where it runs."""

    device: Device = "auto"


@dataclass
class TokenizeParams:
    """Encoding every prepared image to token ids (Parquet)."""

    batch_size: int = field(metadata={"min": 1})
    splits: list[Literal["train", "val"]]
    flip_copies: bool = False  # also encode horizontally flipped train images
    row_group_size: int = field(default=8192, metadata={"min": 1})
    device: Device = "auto"


@dataclass
class ARModelParams:
    """Which GPT of the zoo (``vfmtok.gpt.GPT_MODELS``) and its regularisation; the vocabulary,
    token count and classes come from the tokenizer and the data."""

    model: str
    class_dropout: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0})
    token_dropout: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0})
    resid_dropout: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0})
    attn_dropout: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})

    def check(self) -> None:
        if self.model not in GPT_MODELS:
            raise ParamsError("model", self.model, f"must be one of {', '.join(GPT_MODELS)}")


@dataclass
class TrainARParams(ARTrainConfig):
    """The generator's optimisation (``vfmtok.train_ar``) plus evaluation and placement."""

    val_rows: int = field(default=0, metadata={"min": 0})  # val rows per val-loss pass; 0 = all
    report_thresholds: list[float] = field(default_factory=list)  # steps to reach these val losses
    device: Device = "auto"


@dataclass
class SampleParams:
    """Class-conditional sampling (CFG scale 1.0 = off: the demo samples without guidance)."""

    per_class: int = field(metadata={"min": 1})
    batch_size: int = field(metadata={"min": 1})
    temperature: float = field(default=1.0, metadata={"min": 0.0})
    top_k: int = field(default=0, metadata={"min": 0})
    top_p: float = field(default=1.0, metadata={"min": 0.0, "max": 1.0})
    cfg_scale: float = field(default=1.0, metadata={"min": 0.0})
    seed: int = 0
    speed_batch: int = field(default=8, metadata={"min": 1})  # batch for the KV-cache speed test
    device: Device = "auto"


@dataclass
class EvaluateParams:
    """How many images the metrics use, and the optional full Inception weights for IS."""

    fid_images: int = field(metadata={"min": 0})  # reference images and samples each (0 = all)
    probe_train: int = field(metadata={"min": 0})  # train images for the probes (0 = all)
    batch_size: int = field(default=64, metadata={"min": 1})
    kid_subset_size: int = field(default=100, metadata={"min": 2})
    inception_full_weights: str = ""  # torch-fidelity weights with logits -> Inception Score
    device: Device = "auto"


@dataclass
class Params:
    """The whole params file."""

    prepare: PrepareParams
    backbone: BackboneConfig
    extract_features: ExtractParams
    tokenizer: TokenizerConfig
    train_tokenizer: TrainTokenizerParams
    tokenize: TokenizeParams
    ar_model: ARModelParams
    train_ar: TrainARParams
    sample: SampleParams
    evaluate: EvaluateParams

    def check(self) -> None:
        bb = self.backbone
        if bb.weights == "random" and not bb.allow_random_init:
            raise ParamsError(
                "backbone.weights", bb.weights,
                "random init is for tests only; set backbone.allow_random_init: true to allow it",
            )
        if self.tokenizer.image_size != self.prepare.resolution:
            raise ParamsError(
                "tokenizer.image_size", self.tokenizer.image_size,
                f"must equal prepare.resolution ({self.prepare.resolution})",
            )
        if bb.image_size != self.prepare.resolution:
            raise ParamsError(
                "backbone.image_size", bb.image_size,
                f"must equal prepare.resolution ({self.prepare.resolution})",
            )


    def check_paths(self) -> None:
        """Inputs that must exist on this machine (skipped to inspect a profile from elsewhere)."""
        if not Path(self.prepare.path).exists():
            raise ParamsError("prepare.path", self.prepare.path, "source folder does not exist")
        if self.prepare.devkit and not Path(self.prepare.devkit).is_dir():
            raise ParamsError("prepare.devkit", self.prepare.devkit, "devkit folder does not exist")
        loss = self.train_tokenizer.loss
        if loss.perceptual == "lpips":
            for key in ("lpips_vgg_weights", "lpips_lin_weights"):
                path = getattr(loss, key)
                if not Path(path).is_file():
                    raise ParamsError(f"train_tokenizer.loss.{key}", path, "weights file does not exist")
        full = self.evaluate.inception_full_weights
        if full and not Path(full).is_file():
            raise ParamsError("evaluate.inception_full_weights", full, "weights file does not exist")
        bb = self.backbone
        if bb.weights not in ("bundled", "random") and not Path(bb.weights).is_file():
            raise ParamsError("backbone.weights", bb.weights, "weights file does not exist")


def load_params(path: str | Path = "params.yaml", check_paths: bool = True) -> Params:
    """Read and validate a params file; every error names ``path``, the key and the value."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError("<file>", str(path), "params file not found", path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ParamsError("<file>", str(path), f"not valid YAML: {e}", path) from None
    try:
        params = from_dict(Params, data)
        if check_paths:
            params.check_paths()
        return params
    except ParamsError as e:
        raise e.in_file(path) from None


def profile_path(name: str, root: str | Path = ".") -> Path:
    """``params/<name>.yaml``: the demo, smoke and imagenet profiles."""
    return Path(root) / PROFILES_DIR / f"{name}.yaml"
