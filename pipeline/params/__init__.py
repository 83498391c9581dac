"""``params.yaml``: one section per stage, each a typed dataclass, validated up front.

The model sections *are* the model package's configs (``vfmtok.config``: backbone, tokenizer,
train_tokenizer, train_ar; ``ar_model`` is a zoo name plus the GPT's regularisation); the others
are the pipeline's own. Values that one key decides for several models are not repeated: the
image size is ``prepare.resolution`` alone (:data:`DERIVED`). DVC tracks these keys (``params:``
in ``dvc.yaml``), so a change re-runs exactly the stages that read it. Every error names the
file, the dotted key and the value. Nothing here imports torch: ``vfmtok-pipeline check`` is fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from vfmtok.config import ARTrainConfig, BackboneConfig, Device, TokenizerConfig, TokenizerTrainConfig
from vfmtok.config_schema import NEUTRAL, ConfigError, config_error, from_dict, mark_alias, mark_file
from vfmtok.generator_config import (
    ZOO,
    GeneratorDropouts,
    GPTConfig,
    RARConfig,
    generator_config,
    generator_family,
)

# yaml.safe_load's rules, parsed by libyaml where PyYAML has it (10x faster than the pure Python
# parser: every stage and every check reads the file first).
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# (section, key) filled in from another key, never written in params.yaml.
DERIVED = {("backbone", "image_size"): ("prepare", "resolution"),
           ("tokenizer", "image_size"): ("prepare", "resolution"),
           ("judge", "image_size"): ("prepare", "resolution")}


KNN_K = 3  # precision/recall's k (vfmtok.fid.distribution_metrics)
LPIPS_MIN_SIZE = 16  # VGG16 halves the image 4 times before relu5_3, LPIPS' last tap (vfmtok.lpips)


def _two_classes(key: str, n: int) -> None:
    """A probe fit on ``n`` train images (0 = all), taken a class at a time: one image is one class,
    and a classifier needs two (scikit-learn refuses)."""
    if n == 1:
        raise ConfigError(key, n, "must be 0 (all) or at least 2: the linear classifier needs two classes")


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
class ARModelParams(GeneratorDropouts):
    """A generator by its zoo name (``GPT-*``: raster LlamaGen GPT, ``RAR-*``: RAR; one switch for
    the whole pipeline) and its regularisation; vocabulary, token count and classes come from the
    tokenizer and the data (:meth:`model_config`)."""

    model: str
    # "zero" for GPTs imported from VFMTok / LlamaGen (vfmtok.generator_config.GPTConfig.cls_rope)
    cls_rope: Literal["identity", "zero"] = "identity"

    @property
    def family(self) -> str:
        """``gpt`` or ``rar``: the model folder's kind."""
        return generator_family(self.model) or ""

    def _takes_cls_rope(self) -> bool:
        return "cls_rope" in ZOO[self.model].config_cls.__dataclass_fields__

    def validate(self) -> None:
        if not self.family:
            generator_config(self.model)  # raises, naming every known size
        if self.cls_rope != "identity" and not self._takes_cls_rope():
            raise ConfigError("cls_rope", self.cls_rope, "is a GPT option (imported LlamaGen/VFMTok GPTs)")

    def model_config(self, vocab_size: int, n_tokens: int, num_classes: int) -> GPTConfig | RARConfig:
        reg = {f: getattr(self, f) for f in GeneratorDropouts.__dataclass_fields__}
        extra = {"cls_rope": self.cls_rope} if self._takes_cls_rope() else {}
        return generator_config(self.model, **reg, **extra, vocab_size=vocab_size, n_tokens=n_tokens,
                                num_classes=num_classes)


@dataclass(kw_only=True)
class TrainARParams(ARTrainConfig):
    """The generator's optimisation plus the pipeline's evaluation of it."""

    val_rows: int = field(default=0, metadata={"min": 0})  # val rows per val-loss pass; 0 = all
    report_thresholds: list[float] = field(default_factory=list)  # steps to reach these val losses
    # The sample-quality checks every quality_every steps (pipeline/evaluation/sample_quality.py): this many
    # samples per class, the judge's classifier fit on up to quality_probe_train train images.
    quality_per_class: int = field(default=10, metadata={"min": 1})
    quality_probe_train: int = field(default=2000, metadata={"min": 0})

    def validate(self) -> None:
        super().validate()
        if self.quality_every:
            _two_classes("quality_probe_train", self.quality_probe_train)


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
    # 1 + (s - 1) * (1 - cos(pi * (t / N) ** p)) / 2 (vfmtok.sampling; RAR-L published: s 15.5, p 2.5)
    cfg_power: float = field(default=0.0, metadata={"min": 0.0})
    seed: int = 0  # sample i draws from its own seed, derived from (seed, i), whatever its batch
    speed_batch: int = field(default=8, metadata={"min": 1})  # batch for the KV-cache speed test
    compile: bool = field(default=False, metadata=NEUTRAL)  # torch.compile the cached decode step
    device: Device = field(default="auto", metadata=NEUTRAL)

    def validate(self) -> None:
        if self.top_p <= 0:  # vfmtok.sampling.sample_logits: an empty nucleus samples nothing
            raise ConfigError("top_p", self.top_p, "must be > 0 (the nucleus mass; 1.0 = off)")


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

    def validate(self) -> None:
        if 0 < self.fid_images <= KNN_K:  # vfmtok.fid.precision_recall: k-NN radii need k + 1 points
            raise ConfigError("fid_images", self.fid_images, f"must be 0 (all) or more than {KNN_K}: "
                              f"precision/recall's {KNN_K}-NN needs more than {KNN_K} images a set")
        _two_classes("probe_train", self.probe_train)


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
class LaunchParams:
    """Where and how the stage processes run, never what they compute: DVC tracks none of it."""

    # torch's CPU threads in each stage process. Float reductions are split by thread, so the bytes
    # of features, tokens and samples computed on a CPU depend on this number (never on the number
    # of processes): pinned, a torchrun run (torchrun sets OMP_NUM_THREADS=1) and a plain run write
    # the same bytes. Capped at the machine's cores; 0 = leave it to torch and the environment
    # (then the two may differ).
    cpu_threads: int = field(default=2, metadata={"min": 0, "max": 1024, **NEUTRAL})
    # How many processes run a stage that shares its work (``pipeline/orchestration/launch_plan.py``):
    # ``python -m pipeline.stage NAME`` re-executes itself through torchrun when there are more than
    # one. "auto" takes each value from the cluster scheduler's environment (Slurm), else from the
    # machine: the visible CUDA devices (1 on a CPU-only machine), one node, node rank 0.
    nproc_per_node: Literal["auto"] | int = field(default="auto", metadata={"min": 1, "max": 1024, **NEUTRAL})
    nnodes: Literal["auto"] | int = field(default="auto", metadata={"min": 1, "max": 100_000, **NEUTRAL})
    node_rank: Literal["auto"] | int = field(default="auto", metadata={"min": 0, **NEUTRAL})
    # HOST:PORT of node 0, where the nodes of a several-node launch meet; "auto": Slurm's first node
    # (or MASTER_ADDR/MASTER_PORT); one node needs none.
    rdzv_endpoint: str = field(default="auto", metadata=NEUTRAL)

    def validate(self) -> None:
        if self.rdzv_endpoint != "auto" and self.rdzv_endpoint:
            host, _, port = self.rdzv_endpoint.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError("rdzv_endpoint", self.rdzv_endpoint, "must be HOST:PORT (node 0's "
                                  "address and a free port), or auto")
        if isinstance(self.nnodes, int) and isinstance(self.node_rank, int) and self.node_rank >= self.nnodes:
            raise ConfigError("node_rank", self.node_rank, f"must be below nnodes ({self.nnodes})")


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
    launch: LaunchParams = field(default_factory=LaunchParams)

    def validate(self) -> None:
        """Rules that relate sections (each section's own rules are in its class)."""
        missing = [s for s in ("train", "val") if s not in self.tokenize.splits]
        if missing:  # train_ar trains on the train tokens and measures on the val ones; evaluate too
            raise ConfigError("tokenize.splits", self.tokenize.splits, f"must include {missing[0]!r}: "
                              "train_ar and evaluate read the train and the val tokens")
        loss, size = self.train_tokenizer.loss, self.prepare.resolution
        if loss.perceptual == "lpips" and size < LPIPS_MIN_SIZE:  # a 0 x 0 map: torch refuses
            raise ConfigError("train_tokenizer.loss.perceptual", loss.perceptual, f"needs prepare."
                              f"resolution >= {LPIPS_MIN_SIZE} (VGG16 pools 4 times before LPIPS' last "
                              f"layer), got {size}")

    def check_launch(self, world: int, sections: tuple[str, ...] = ("train_tokenizer", "train_ar")) -> None:
        """The rules that depend on how many processes run a training stage. Each training stage asks
        them for itself, before it starts (a sample or tokenize launch needs no divisible batch);
        ``check`` asks them for both, for the launch ``WORLD_SIZE`` describes (1 without torchrun)."""
        for name in sections:
            getattr(self, name).check_world(world)
        t, train = self.tokenizer, self.train_tokenizer
        rows = train.batch_size // world
        if "train_tokenizer" in sections and t.quant_batchnorm and t.n_tokens * rows < 2:
            raise config_error(train, "batch_size", train.batch_size, f"x tokenizer.n_tokens {t.n_tokens} "
                               "per process must be >= 2: tokenizer.quant_batchnorm normalises over "
                               "them in training")

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


def _mark_origins(params: Params, path: Path) -> None:
    """Let a model builder's error name the file and the key the user sets: ``prepare.resolution``
    for the image sizes derived from it (``vfmtok.config_schema.config_error``)."""
    for (section, key), (src_section, src_key) in DERIVED.items():
        mark_alias(getattr(params, section), key, f"{src_section}.{src_key}")
    mark_file(params, path)


class LaunchError(ConfigError):
    """A bad launch setting: an environment variable, so no params section or file is its place."""

    def under(self, prefix: str) -> ConfigError:
        return self

    def in_file(self, file) -> ConfigError:
        return self


def launch_world_size() -> int:
    """The number of processes this launch runs (torchrun's ``WORLD_SIZE``; 1 without torchrun).

    Read from the environment, not from torch, so that a params file is checked against the
    launch before any process group (or torch) exists."""
    raw = os.environ.get("WORLD_SIZE", "").strip() or "1"
    if not raw.isdigit() or int(raw) < 1:
        raise LaunchError("WORLD_SIZE", raw, "must be a positive integer (torchrun sets it)")
    return int(raw)


def load_params(path: str | Path = "params.yaml", check_paths: bool = True) -> Params:
    """Read and validate a params file; every error names ``path``, the key and the value."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("<file>", str(path), "params file not found", path)
    try:
        data = yaml.load(path.read_text(), Loader=SAFE_LOADER)
    except yaml.YAMLError as e:
        raise ConfigError("<file>", str(path), f"not valid YAML: {' '.join(str(e).split())}", path) from None
    return params_from_data(data, path, check_paths)


def params_from_data(data: object, path: str | Path, check_paths: bool = True) -> Params:
    """Validate params already read (``path``: the file that errors name)."""
    path = Path(path)
    try:
        if isinstance(data, dict):
            _fill_derived(data)
        params = from_dict(Params, data)
        _mark_origins(params, path)
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
