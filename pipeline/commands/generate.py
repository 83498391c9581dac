"""``vfmtok-pipeline generate``: a grid of new images of one class from the trained models.

Reads only the two model folders (``data/generator``, a GPT or a RAR, and ``data/tokenizer``: each
rebuilds from its own ``config.json``) and, to turn a class name into its label,
``data/prepared/classes.json``; a class given as a number needs no class file. Bad input (an
unknown class, a missing model folder, an out-of-range option) is one ``error:`` line and nothing
is written.
"""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.commands import Command, add_model_arguments
from pipeline.errors import UserError
from pipeline.layout import Layout

PER_ROW = 8
MIN_SIDE = 128  # grid cells are scaled up to at least this many pixels


class GenerateError(UserError):
    """A bad ``generate`` argument (class, count, sampling option)."""


@dataclass
class Sampling:
    n: int = 16
    cfg_scale: float = 1.0  # 1.0 = no classifier-free guidance
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def check(self) -> None:
        problems = [(self.n >= 1, f"-n {self.n}: must be >= 1"),
                    (self.cfg_scale >= 0, f"--cfg {self.cfg_scale}: must be >= 0"),
                    (self.temperature >= 0, f"--temperature {self.temperature}: must be >= 0"),
                    (self.top_k >= 0, f"--top-k {self.top_k}: must be >= 0"),
                    (0 < self.top_p <= 1, f"--top-p {self.top_p}: must be in (0, 1]")]
        for ok, text in problems:
            if not ok:
                raise GenerateError(text)


def _norm(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "", text.lower())


def resolve_class(spec: str, num_classes: int, classes_dir: Path) -> tuple[int, str]:
    """``(label, name)`` of a class given by number or by name (case and punctuation ignored:
    ``t-shirt/top``, ``T-shirt top`` and ``tshirttop`` are the same)."""
    from pipeline.formats import prepared  # pandas: not for `vfmtok-pipeline --help`

    classes = prepared.read_classes(classes_dir) if (classes_dir / prepared.CLASSES).is_file() else None
    if spec.strip().lstrip("-").isdigit():
        label = int(spec)
        if not 0 <= label < num_classes:
            raise GenerateError(f"--class {spec}: the model knows classes 0..{num_classes - 1}")
        name = classes[label]["name"] if classes and label < len(classes) else str(label)
        return label, name
    if classes is None:
        raise GenerateError(f"--class {spec!r}: {classes_dir / prepared.CLASSES} not found to look the name "
                            f"up; give the class as a number 0..{num_classes - 1}")
    for c in classes:
        if _norm(spec) in (_norm(c["name"]), _norm(c["key"])):
            return int(c["label"]), c["name"]
    known = ", ".join(f"{c['label']}={c['name']}" for c in classes)
    raise GenerateError(f"--class {spec!r}: no such class (classes: {known})")


def generate_grid(root: Path, class_spec: str, out: Path, sampling: Sampling, device: str = "auto",
                  tokenizer_dir: Path | None = None, generator_dir: Path | None = None) -> str:
    """Sample ``sampling.n`` images of one class, write them as one PNG grid; returns a summary."""
    sampling.check()
    import torch

    from pipeline.models.trained import generator_folder
    from pipeline.reporting import grids
    from vfmtok import zoo
    from vfmtok.device import autocast, pick_device
    from vfmtok.images import to_uint8
    from vfmtok.sampling import generate
    from vfmtok.tokenizer import Tokenizer

    layout = Layout(root)
    dev = pick_device(device)
    folder = generator_folder(layout, generator_dir)
    model = zoo.from_pretrained(folder, dev)  # a GPT or a RAR: its config.json says which
    label, name = resolve_class(class_spec, model.config.num_classes, layout.prepared)
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir or layout.tokenizer, dev)
    if tokenizer.codebook_size != model.config.vocab_size or tokenizer.n_tokens != model.config.n_tokens:
        raise GenerateError(f"{folder}: the generator models {model.config.n_tokens} tokens of "
                            f"{model.config.vocab_size} codes, the tokenizer {tokenizer.n_tokens} of "
                            f"{tokenizer.codebook_size}: not a pair")
    start = time.perf_counter()
    g = torch.Generator(device=dev).manual_seed(sampling.seed)
    labels = torch.full((sampling.n,), label, device=dev)
    with autocast(dev):
        ids = generate(model, labels, model.config.n_tokens, temperature=sampling.temperature,
                       top_k=sampling.top_k, top_p=sampling.top_p, cfg_scale=sampling.cfg_scale, generator=g)
        images = to_uint8(tokenizer.decode(ids))  # (n, H, W, 3)
    rows = [images[i : i + PER_ROW] for i in range(0, len(images), PER_ROW)]
    grids.save_png(out, grids.grid(rows, scale=max(1, -(-MIN_SIDE // images.shape[1]))))
    return (f"wrote {out}: {sampling.n} samples of class {label} ({name}), {images.shape[1]} px, "
            f"cfg {sampling.cfg_scale:g}, temperature {sampling.temperature:g}, top-k {sampling.top_k}, "
            f"top-p {sampling.top_p:g}, seed {sampling.seed}, "
            f"in {time.perf_counter() - start:.1f} s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--class", dest="class_spec", required=True, metavar="NAME_OR_ID",
                        help="class name (data/prepared/classes.json) or number")
    parser.add_argument("-n", type=int, default=16, help="how many images (default 16, 8 a row)")
    parser.add_argument("--out", type=Path, default=Path("grid.png"), help="PNG to write (default grid.png)")
    for flag, kind, what, plain in (("--cfg", float, "classifier-free guidance scale, 1.0 = off", 1.0),
                                    ("--temperature", float, "sampling temperature, 0 = greedy", 1.0),
                                    ("--top-k", int, "keep the k likeliest tokens, 0 = all", 0),
                                    ("--top-p", float, "nucleus sampling mass, 1.0 = off", 1.0)):
        parser.add_argument(flag, type=kind,
                            help=f"{what} (default: params.yaml's sample section, else {plain})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--generator", type=Path, metavar="FOLDER",
                        help="generator folder, a GPT or a RAR (default: data/generator)")
    add_model_arguments(parser)


def project_sampling(root: Path) -> dict[str, float]:
    """The ``sample`` settings of the project's ``params.yaml`` (what drew ``reports/samples.png``),
    or the plain-sampling defaults where the project has none: a grid then looks like the run's."""
    from pipeline.params import load_params

    keys = ("cfg_scale", "temperature", "top_k", "top_p")
    if not (root / "params.yaml").is_file():
        return {k: getattr(Sampling, k) for k in keys}
    sample = load_params(root / "params.yaml", check_paths=False).sample
    return {k: getattr(sample, k) for k in keys}


def main(args: argparse.Namespace) -> None:
    given = {"cfg_scale": args.cfg, "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
    fill = project_sampling(Path(args.root)) if None in given.values() else {}
    chosen = {k: fill[k] if v is None else v for k, v in given.items()}
    sampling = Sampling(n=args.n, seed=args.seed, **chosen)
    print(generate_grid(Path(args.root), args.class_spec, args.out, sampling, args.device, args.tokenizer,
                        args.generator))


COMMAND = Command("generate", "a PNG grid of new images of one class (data/generator, data/tokenizer)",
                  add_arguments, main)
