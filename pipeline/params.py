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
    ARTrainConfig,
    BackboneConfig,
    Device,
    GPTConfig,
    GPTRegularization,
    RARConfig,
    TokenizerConfig,
    TokenizerTrainConfig,
    generator_config,
    generator_family,
)
from vfmtok.typed import NEUTRAL, ConfigError, from_dict

PROFILES_DIR = "params"
# (section, key) filled in from another key, never written in params.yaml.
DERIVED = {("backbone", "image_size"): ("prepare", "resolution"),
           ("tokenizer", "image_size"): ("prepare", "resolution"),
           ("judge", "image_size"): ("prepare", "resolution")}


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
    # How shards store images: "raw" uint8 arrays (.npy, no decoding) or "jpeg" (WebDataset-style
    # .tar of JPEGs re-encoded at `resolution`, ~8x smaller at 336 px, decoded on read).
    encoding: Literal["raw", "jpeg"] = "raw"
    jpeg_quality: int = field(default=95, metadata={"min": 1, "max": 100})
    # chroma subsampling 4:2:0 / 4:2:2 / 4:4:4 (spelled so that no YAML reader takes "4:2:0" for
    # the base-60 number 14520)
    jpeg_subsampling: Literal["yuv420", "yuv422", "yuv444"] = "yuv420"


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
    """A generator of either zoo by name (``GPT-*``: raster LlamaGen GPT, ``RAR-*``: RAR; one switch
    for the whole pipeline) and its regularisation; vocabulary, token count and classes come from
    the tokenizer and the data (:meth:`model_config`)."""

    model: str
    # "zero" for GPTs imported from VFMTok / LlamaGen (vfmtok.config.GPTConfig.cls_rope)
    cls_rope: Literal["identity", "zero"] = "identity"

    @property
    def family(self) -> str:
        """``gpt`` or ``rar``: the model folder's kind."""
        return generator_family(self.model) or ""

    def validate(self) -> None:
        if not self.family:
            generator_config(self.model)  # raises, naming every known size
        if self.family == "rar" and self.cls_rope != "identity":
            raise ConfigError("cls_rope", self.cls_rope, "is a GPT option (imported LlamaGen/VFMTok GPTs)")

    def model_config(self, vocab_size: int, n_tokens: int, num_classes: int) -> GPTConfig | RARConfig:
        reg = {f: getattr(self, f) for f in GPTRegularization.__dataclass_fields__}
        extra = {"cls_rope": self.cls_rope} if self.family == "gpt" else {}
        return generator_config(self.model, **reg, **extra, vocab_size=vocab_size, n_tokens=n_tokens,
                                num_classes=num_classes)


@dataclass(kw_only=True)
class TrainARParams(ARTrainConfig):
    """The generator's optimisation plus the pipeline's evaluation of it."""

    val_rows: int = field(default=0, metadata={"min": 0})  # val rows per val-loss pass; 0 = all
    report_thresholds: list[float] = field(default_factory=list)  # steps to reach these val losses
    # The sample-quality checks every quality_every steps (pipeline/sample_quality.py): this many
    # samples per class, the judge's classifier fit on up to quality_probe_train train images.
    quality_per_class: int = field(default=10, metadata={"min": 1})
    quality_probe_train: int = field(default=2000, metadata={"min": 0})


@dataclass(kw_only=True)
class SampleParams:
    """Class-conditional sampling (CFG scale 1.0 = off: the demo samples without guidance)."""

    per_class: int = field(metadata={"min": 1})
    batch_size: int = field(metadata={"min": 1})
    temperature: float = field(default=1.0, metadata={"min": 0.0})
    top_k: int = field(default=0, metadata={"min": 0})
    top_p: float = field(default=1.0, metadata={"min": 0.0, "max": 1.0})
    cfg_scale: float = field(default=1.0, metadata={"min": 0.0})
    # 0: constant cfg_scale; p > 0: RAR's ramp from 1 at the first token to cfg_scale at the last,
    # 1 + (s - 1) * (1 - cos(pi * (t / N) ** p)) / 2 (vfmtok.generate; RAR-L published: s 15.5, p 2.5)
    cfg_power: float = field(default=0.0, metadata={"min": 0.0})
    seed: int = 0  # sample i draws from its own seed, derived from (seed, i), whatever its batch
    speed_batch: int = field(default=8, metadata={"min": 1})  # batch for the KV-cache speed test
    compile: bool = field(default=False, metadata=NEUTRAL)  # torch.compile the cached decode step
    device: Device = field(default="auto", metadata=NEUTRAL)


@dataclass(kw_only=True)
class EvaluateParams:
    """How many images the metrics use, and the optional full Inception weights for IS."""

    fid_images: int = field(metadata={"min": 0})  # reference images and samples each (0 = all)
    probe_train: int = field(metadata={"min": 0})  # train images for the probes (0 = all)
    batch_size: int = field(default=64, metadata={"min": 1})
    kid_subset_size: int = field(default=100, metadata={"min": 2})
    inception_full_weights: str = ""  # torch-fidelity weights with logits -> Inception Score
    # An ADM-format reference batch (.npz: arr_0 images and/or mu/sigma pool3 statistics), e.g.
    # VIRTUAL_imagenet256_labeled.npz, to score samples as published; "" = the val images.
    reference_npz: str = ""
    resolution: int = field(default=0, metadata={"min": 0, "max": 2048})  # 0 = the dataset's
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
    # The frozen network that scores samples and reconstructions in its feature space (class
    # accuracy, FD): fixed across compared runs, whatever backbone the tokenizer itself reads.
    judge: BackboneConfig
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
                 ("evaluate.inception_full_weights", self.evaluate.inception_full_weights),
                 ("evaluate.reference_npz", self.evaluate.reference_npz)]
        for name in ("backbone", "judge"):
            weights = getattr(self, name).weights
            if weights not in ("bundled", "random"):
                files.append((f"{name}.weights", weights))
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
