"""Prepared-image shards at the paper's 336 px: bytes per image, decode and prepare speed per core.

    python benchmarks/prepared_shards.py        # -> reports/benchmarks/prepared_shards.{json,md}
    python benchmarks/prepared_shards.py --images 64 --repeats 3

Sources: ImageNet-like JPEGs generated from scikit-image's bundled photos (astronaut, chelsea,
coffee, rocket, Hubble deep field, immunohistochemistry, retina, colour wheel): a random crop of
a random aspect (4:3, 3:4, 3:2, 1:1), resized to a 500 px long side (ILSVRC-2012's typical
500 x 375), randomly flipped and saved at JPEG quality 90; fixed seed. For each shard encoding:

- bytes per image: the stored JPEG (or raw pixels) alone, and the whole shard (tar headers, the
  ``.cls`` members and the per-shard manifest) per image;
- decode, images/s on one core: ``SplitImages.uint8`` over every image with one decode thread;
- prepare work, images/s on one core (CPU time): decode the source JPEG, resize + center-crop to
  336, encode; what ``prepare`` does per image in each of its ``workers`` processes;
- the PSNR of the stored images against the raw 336 px pixels;
- ImageNet-1k train (1,281,167 images) projected: size on disk, and ``prepare`` time with 16
  worker processes (the imagenet profile), assuming the per-core rate scales and disk keeps up.

Each rate is the median of ``--repeats`` timed passes with the spread (min-max) beside it, timed
by the CPU time of the working thread: the rate of one core, even on a CPU shared with other
jobs, where wall time would measure the neighbours.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from bench_report import command_line  # noqa: E402

from pipeline import sources  # noqa: E402
from pipeline.formats import prepared  # noqa: E402
from pipeline.formats.image_shards import Codec  # noqa: E402
from vfmtok.metrics import batch_psnr  # noqa: E402

RESOLUTION, IMAGENET_TRAIN, WORKERS = 336, 1_281_167, 16
SETTINGS = [("raw", 95, "yuv420"), ("jpeg", 90, "yuv420"), ("jpeg", 95, "yuv420"), ("jpeg", 95, "yuv444")]


def photos() -> list[np.ndarray]:
    import skimage.data as d

    return [d.astronaut(), d.chelsea(), d.coffee(), d.rocket(), d.hubble_deep_field(),
            d.immunohistochemistry(), d.retina(), d.colorwheel()]


def make_sources(folder: Path, n: int, seed: int = 0) -> list[sources.SourceItem]:
    rng = np.random.default_rng(seed)
    pics, items = photos(), []
    for k in range(n):
        img = Image.fromarray(pics[k % len(pics)])
        w, h = img.size
        aspect = [4 / 3, 3 / 4, 3 / 2, 1.0][rng.integers(4)]
        cw = int(min(w, h * aspect) * rng.uniform(0.6, 1.0))
        ch = int(cw / aspect)
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = img.crop((left, top, left + cw, top + ch))
        scale = 500 / max(cw, ch)
        img = img.resize((round(cw * scale), round(ch * scale)), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = folder / f"img_{k:04d}.JPEG"
        img.save(path, format="JPEG", quality=90)
        items.append(sources.SourceItem(f"train/x/img_{k:04d}", "train", k % 10, str(path)))
    return items


def timed(fn: Callable[[], int], repeats: int) -> dict:
    """items/s of ``fn`` (which returns how many items it did) in this thread's CPU time: median
    and min-max of ``repeats`` passes."""
    rates = []
    for _ in range(repeats):
        start = time.thread_time()
        n = fn()
        rates.append(n / (time.thread_time() - start))
    return {"median": round(statistics.median(rates), 1), "min": round(min(rates), 1),
            "max": round(max(rates), 1)}


def measure(items: list[sources.SourceItem], codec: Codec, work: Path, repeats: int,
            reference: np.ndarray) -> dict:
    pixels = [sources.load_rgb(it, RESOLUTION) for it in items]
    data = [codec.encode(p) for p in pixels]
    folder = work / f"{codec.encoding}-{codec.quality}-{codec.subsampling}"
    writer = prepared.PreparedWriter(folder, codec)
    name = prepared.shard_name("train", 0, codec.encoding)
    placed = writer.write_shard(name, data, [it.image_id for it in items], [it.label for it in items])
    writer.finish([{"image_id": it.image_id, "split": "train", "label": it.label, "class_name": "x",
                    "source_path": it.source_path, "shard": name, "index": i, **p}
                   for i, (it, p) in enumerate(zip(items, placed, strict=True))], [("x", "x")] * 10)
    shard_bytes = sum(f.stat().st_size for f in (folder / prepared.IMAGES).iterdir())
    one = prepared.SplitImages(folder, "train", in_memory=False, decode_threads=1)
    everything = np.arange(len(items))
    stored = one.uint8(everything)

    def prepare_work() -> int:
        for it in items:
            codec.encode(sources.load_rgb(it, RESOLUTION))
        return len(items)

    per_image = shard_bytes / len(items)
    prep = timed(prepare_work, repeats)
    return {
        **codec.describe(),
        "bytes_per_image": round(float(np.mean([len(d) for d in data])), 1),
        "shard_bytes_per_image": round(per_image, 1),
        "psnr_db_vs_raw": None if codec.encoding == "raw" else round(batch_psnr(reference, stored, 255), 2),
        "decode_images_per_s_per_core": timed(lambda: len(one.uint8(everything)), repeats),
        "prepare_images_per_s_per_core": prep,
        "imagenet_train_gb": round(per_image * IMAGENET_TRAIN / 1e9, 1),
        f"imagenet_train_prepare_hours_{WORKERS}_workers": round(IMAGENET_TRAIN / (prep["median"] * WORKERS)
                                                                 / 3600, 2),
    }


def markdown(rows: list[dict], n: int, repeats: int) -> str:
    head = ("| shard | bytes/image (data) | bytes/image (shard) | PSNR vs raw | decode img/s per core | "
            "prepare img/s per core | ImageNet train size | prepare, 16 workers |")
    lines = [f"{n} generated ImageNet-like JPEGs at {RESOLUTION} px; median (min-max) of {repeats} runs.",
             "", head, "|" + "---|" * 8]
    for r in rows:
        name = "raw .npy" if r["encoding"] == "raw" else f"jpeg q{r['quality']} {r['subsampling']}"

        def f(d: dict) -> str:
            return f"{d['median']:,.0f} ({d['min']:,.0f}-{d['max']:,.0f})"

        psnr = "-" if r["psnr_db_vs_raw"] is None else f"{r['psnr_db_vs_raw']} dB"
        lines.append(f"| {name} | {r['bytes_per_image']:,.0f} | {r['shard_bytes_per_image']:,.0f} | {psnr} | "
                     f"{f(r['decode_images_per_s_per_core'])} | "
                     f"{f(r['prepare_images_per_s_per_core'])} | {r['imagenet_train_gb']} GB | "
                     f"{r[f'imagenet_train_prepare_hours_{WORKERS}_workers']} h |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = command_line(__doc__, "prepared_shards")
    parser.add_argument("--images", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vfmtok-shards-") as tmp:
        work = Path(tmp)
        (work / "src").mkdir()
        items = make_sources(work / "src", args.images)
        reference = np.stack([sources.load_rgb(it, RESOLUTION) for it in items])
        rows = [measure(items, Codec(enc, RESOLUTION, q, sub), work, args.repeats, reference)
                for enc, q, sub in SETTINGS]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"images": args.images, "repeats": args.repeats, "resolution": RESOLUTION, "settings": rows}
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(rows, args.images, args.repeats)
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
