"""``vfmtok-pipeline reconstruct IMAGE... --out DIR``: a user's own images through the tokenizer.

Each image (any size, any mode: grayscale, 16-bit, palette, alpha, CMYK) is made RGB, resized
(shorter side) and center-cropped to the tokenizer's resolution exactly as ``prepare`` does it,
encoded to token ids and decoded again. ``DIR/<name>.png`` is the reconstruction,
``DIR/tokens.json`` the ids per image; the printed PSNR compares the reconstruction with the
resized input (uint8, data_range 255). Every image is read before anything is written, so an
unreadable file is one ``error:`` line naming it and leaves ``DIR`` untouched.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.commands import Command, add_model_arguments
from pipeline.errors import UserError
from pipeline.layout import Layout
from vfmtok import files

if TYPE_CHECKING:  # numpy, PIL and torch load when images are read, not for `vfmtok-pipeline --help`
    import numpy as np

BATCH = 32


class ImageReadError(UserError):
    """An input image that is missing or cannot be decoded."""


@dataclass
class Reconstruction:
    source: Path
    source_size: tuple[int, int]  # (width, height) as read
    source_mode: str
    out: Path
    size: int  # the tokenizer's resolution: what the image was cut to
    tokens: list[int]
    psnr: float


def read_image(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int], str]:
    """((size, size, 3) uint8 as prepare makes it, the original (width, height), its mode)."""
    from PIL import Image, UnidentifiedImageError

    from pipeline import sources

    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    try:
        with Image.open(path) as img:
            original, mode = img.size, img.mode
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise ImageReadError(f"{path}: not an image this can read ({type(e).__name__}: {e})") from None
    item = sources.SourceItem(image_id=str(path), split="user", label=-1, source_path=str(path))
    try:
        return sources.load_rgb(item, size), original, mode
    except sources.BadImage as e:
        raise ImageReadError(f"{path}: cannot decode it ({e})") from None


def _out_names(paths: list[Path]) -> list[str]:
    """``<stem>.png`` per input, made unique (``a/x.jpg`` and ``b/x.png`` -> ``x.png``, ``x-2.png``)."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        stem = p.stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}.png" if seen[stem] == 1 else f"{stem}-{seen[stem]}.png")
    return names


def reconstruct_images(root: Path, paths: list[Path], out_dir: Path, device: str = "auto",
                       tokenizer_dir: Path | None = None) -> list[Reconstruction]:
    """Tokenize and reconstruct ``paths`` with the tokenizer folder; write ``out_dir``."""
    import numpy as np
    import torch

    from pipeline.reporting import grids
    from vfmtok.device import autocast, pick_device
    from vfmtok.images import from_uint8, to_uint8
    from vfmtok.metrics import psnr
    from vfmtok.tokenizer import Tokenizer

    if not paths:
        raise ImageReadError("no image given")
    dev = pick_device(device)
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir or Layout(root).tokenizer, dev)
    size = tokenizer.cfg.image_size
    read = [read_image(p, size) for p in paths]  # every input first: a bad one writes nothing
    images = np.stack([r[0] for r in read])  # (N, size, size, 3)
    ids, recons = [], []
    with torch.no_grad(), autocast(dev):
        for i in range(0, len(images), BATCH):
            batch = from_uint8(images[i : i + BATCH]).to(dev)  # (B, 3, size, size) in [-1, 1]
            tok = tokenizer.encode(batch)  # (B, n_tokens)
            ids.append(tok.cpu().numpy())
            recons.append(to_uint8(tokenizer.decode(tok)))
    ids_all, recon_all = np.concatenate(ids), np.concatenate(recons)
    results = []
    for p, (orig, wh, mode), name, tok, rec in zip(paths, read, _out_names(paths), ids_all, recon_all,
                                                    strict=True):
        out = out_dir / name
        grids.save_png(out, rec)
        results.append(Reconstruction(p, wh, mode, out, size, [int(t) for t in tok], psnr(orig, rec, 255.0)))
    files.write_json(out_dir / "tokens.json", {str(r.source): r.tokens for r in results})
    return results


def describe(r: Reconstruction) -> str:
    w, h = r.source_size
    return (f"{r.source} ({w}x{h} {r.source_mode} -> {r.size}x{r.size} RGB): {len(r.tokens)} tokens, "
            f"PSNR {r.psnr:.2f} dB -> {r.out}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", type=Path, help="image files, any size and mode")
    parser.add_argument("--out", type=Path, required=True, help="folder for <name>.png and tokens.json")
    add_model_arguments(parser)


def main(args: argparse.Namespace) -> None:
    results = reconstruct_images(Path(args.root), args.images, args.out, args.device, args.tokenizer)
    for r in results:
        print(describe(r))
    print(f"token ids: {args.out / 'tokens.json'}")


COMMAND = Command("reconstruct", "tokenize your own images and write their reconstructions", add_arguments,
                  main)
