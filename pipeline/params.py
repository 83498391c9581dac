"""``params.yaml``: one section per stage, each a typed dataclass, validated up front.

The model sections *are* the model package's configs (``vfmtok.config``: backbone, tokenizer,
train_tokenizer, train_ar; ``ar_model`` is a zoo name plus the GPT's regularisation); the others
are the pipeline's own. Values that one key decides for several models are not repeated: the
image size is ``prepare.resolution`` alone (:data:`DERIVED`). DVC tracks these keys (``params:``
in ``dvc.yaml``), so a change re-runs exactly the stages that read it. Every error names the
file, the dotted key and the value. Nothing here imports torch: ``vfmtok-pipeline check`` is fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from vfmtok.config import (
    GPT_SIZES,
    ARTrainConfig,
    BackboneConfig,
    Device,
    GPTConfig,
    GPTRegularization,
    TokenizerConfig,
    TokenizerTrainConfig,
)
from vfmtok.typed import NEUTRAL, ConfigError, from_dict

PROFILES_DIR = "params"
# (section, key) filled in from another key, never written in params.yaml.
DERIVED = {("backbone", "image_size"): ("prepare", "resolution"),
           ("tokenizer", "image_size"): ("prepare", "resolution")}


@dataclass(kw_only=True)
class PrepareParams:
    """Where the images come from and how they are cut to size."""

    source: Literal["fashion_mnist", "imagenet", "imagefolder"]
    path: str  # folder holding the source (idx files, ILSVRC-2012 tree or ImageFolder tree)
    resolution: int = field(metadata={"min": 8, "max": 2048})  # the one image size of the pipeline
    max_per_class_train: int = field(metadata={"min": 0})  # 0 = every image
    max_per_class_val: int = field(metadata={"min": 0})
    shard_size: int = field(metadata={"min": 1})
    workers: int = field(default=0, metadata={"min": 0, **NEUTRAL})  # decode processes; 0 = in-process
    devkit: str = ""  # ImageNet flat val/: ILSVRC2012 devkit dir (data/meta.mat + ground truth)
    val_fraction: float = field(default=0.1, metadata={"min": 0.0, "max": 0.9})  # imagefolder


@dataclass(kw_only=True)
class ExtractParams:
    """How the frozen backbone is run over the prepared images."""

    batch_size: int = field(metadata={"min": 1})
    splits: list[Literal["train", "val"]]
    device: Device = field(default="auto", metadata=NEUTRAL)
    retries: int = field(default=2, metadata={"min": 0, **NEUTRAL})


@dataclass(kw_only=True)
class TokenizeParams:
    """Encoding every prepared image to token ids (Parquet)."""

    batch_size: int = field(metadata={"min": 1})
    splits: list[Literal["train", "val"]]
    flip_copies: bool = False  # also encode horizontally flipped train images
    row_group_size: int = field(default=8192, metadata={"min": 1})
    device: Device = field(default="auto", metadata=NEUTRAL)


@dataclass(kw_only=True)
class ARModelParams(GPTRegularization):
    """A GPT of the zoo by name and its regularisation; vocabulary, token count and classes come
    from the tokenizer and the data (:meth:`gpt_config`)."""

    model: str

    def validate(self) -> None:
        if self.model not in GPT_SIZES:
            raise ConfigError("model", self.model, f"must be one of {', '.join(GPT_SIZES)}")

    def gpt_config(self, vocab_size: int, n_tokens: int, num_classes: int) -> GPTConfig:
        reg = {f: getattr(self, f) for f in GPTRegularization.__dataclass_fields__}
        return GPTConfig(**GPT_SIZES[self.model], **reg, vocab_size=vocab_size, n_tokens=n_tokens,
                         num_classes=num_classes)


@dataclass(kw_only=True)
class TrainARParams(ARTrainConfig):
    """The generator's optimisation plus the pipeline's evaluation of it."""

    val_rows: int = field(default=0, metadata={"min": 0})  # val rows per val-loss pass; 0 = all
    report_thresholds: list[float] = field(default_factory=list)  # steps to reach these val losses


@dataclass(kw_only=True)
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
    device: Device = field(default="auto", metadata=NEUTRAL)


@dataclass(kw_only=True)
class EvaluateParams:
    """How many images the metrics use, and the optional full Inception weights for IS."""

    fid_images: int = field(metadata={"min": 0})  # reference images and samples each (0 = all)
    probe_train: int = field(metadata={"min": 0})  # train images for the probes (0 = all)
    batch_size: int = field(default=64, metadata={"min": 1})
    kid_subset_size: int = field(default=100, metadata={"min": 2})
    inception_full_weights: str = ""  # torch-fidelity weights with logits -> Inception Score
    device: Device = field(default="auto", metadata=NEUTRAL)


@dataclass(kw_only=True)
class PromoteParams:
    """The promotion gate of a retrain: its model becomes the current one only when it beats the
    current one on ``metric`` by at least ``min_delta`` (``pipeline/orchestration/promotion.py``).
    Read by the orchestrator, no stage: changing it re-runs nothing."""

    metric: str = "gfid"  # a key of one DVC metrics file, or FILE:KEY (reports/train_ar.json:val_loss)
    mode: Literal["min", "max"] = "min"  # min: lower is better
    min_delta: float = field(default=0.0, metadata={"min": 0.0})  # the least improvement that promotes

    def validate(self) -> None:
        if not self.metric.strip():
            raise ConfigError("metric", self.metric, "must name a metric")


@dataclass(kw_only=True)
class Params:
    """The whole params file."""

    prepare: PrepareParams
    backbone: BackboneConfig
    extract_features: ExtractParams
    tokenizer: TokenizerConfig
    train_tokenizer: TokenizerTrainConfig
    tokenize: TokenizeParams
    ar_model: ARModelParams
    train_ar: TrainARParams
    sample: SampleParams
    evaluate: EvaluateParams
    promote: PromoteParams = field(default_factory=PromoteParams)

    def check_paths(self) -> None:
        """Inputs that must exist on this machine (skipped to inspect a profile from elsewhere)."""
        files = [("train_tokenizer.loss.lpips_vgg_weights", self.train_tokenizer.loss.lpips_vgg_weights),
                 ("train_tokenizer.loss.lpips_lin_weights", self.train_tokenizer.loss.lpips_lin_weights),
                 ("evaluate.inception_full_weights", self.evaluate.inception_full_weights)]
        if self.backbone.weights not in ("bundled", "random"):
            files.append(("backbone.weights", self.backbone.weights))
        if not Path(self.prepare.path).exists():
            raise ConfigError("prepare.path", self.prepare.path, "source folder does not exist")
        if self.prepare.devkit and not Path(self.prepare.devkit).is_dir():
            raise ConfigError("prepare.devkit", self.prepare.devkit, "devkit folder does not exist")
        for key, path in files:
            if path and not Path(path).is_file():
                raise ConfigError(key, path, "file does not exist")


def _fill_derived(data: dict) -> None:
    for (section, key), (src_section, src_key) in DERIVED.items():
        part = data.get(section)
        if not isinstance(part, dict):
            continue  # from_dict reports the missing or malformed section
        if key in part:
            raise ConfigError(f"{section}.{key}", part[key],
                              f"is set by {src_section}.{src_key}; remove this key")
        source = data.get(src_section)
        if isinstance(source, dict) and src_key in source:
            part[key] = source[src_key]


def load_params(path: str | Path = "params.yaml", check_paths: bool = True) -> Params:
    """Read and validate a params file; every error names ``path``, the key and the value."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("<file>", str(path), "params file not found", path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError("<file>", str(path), f"not valid YAML: {' '.join(str(e).split())}", path) from None
    try:
        if isinstance(data, dict):
            _fill_derived(data)
        params = from_dict(Params, data)
        if check_paths:
            params.check_paths()
        return params
    except ConfigError as e:
        raise e.in_file(path) from None


def load_promote(path: str | Path = "params.yaml") -> PromoteParams:
    """Only the ``promote`` section (default values when absent): what the orchestrator needs, also
    in a project whose other sections are not this pipeline's."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else {}
        section = (data or {}).get("promote", {}) if isinstance(data, dict) else {}
        return from_dict(PromoteParams, section, "promote")
    except yaml.YAMLError as e:
        raise ConfigError("<file>", str(path), f"not valid YAML: {' '.join(str(e).split())}", path) from None
    except ConfigError as e:
        raise e.in_file(path) from None


def profile_path(name: str, root: str | Path = ".") -> Path:
    """``params/<name>.yaml``: the demo, smoke and imagenet profiles."""
    return Path(root) / PROFILES_DIR / f"{name}.yaml"
