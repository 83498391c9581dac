"""Stage ``list_source``: the listing of the image source that DVC tracks instead of its tree.

Reads ``prepare.source``, ``prepare.path``, ``prepare.devkit`` and the source folder; writes
``data/source_listing.tsv`` (``pipeline/formats/source_listing.py``): every file ``prepare`` will
read, with its size and mtime, and every entry it will pass over. ``prepare`` depends on this
file, not on the source folder, so ``dvc status`` never walks or hashes the source (100,000
files: seconds instead of minutes; see docs/imagenet.md). DVC re-runs this stage when those params or
its code change; after editing the source, run it by hand (``vfmtok-pipeline list_source``):
it says what changed, and the next ``dvc repro`` re-runs ``prepare`` only if something did.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.formats import source_listing
from pipeline.layout import Layout
from pipeline.orchestration.lazy_prefect import flow, get_run_logger
from pipeline.params import load_params
from pipeline.sources import scan


@flow(name="list_source")
def list_source_flow(params_file: str = "params.yaml", root: str = ".") -> dict:
    p = load_params(params_file).prepare
    path = Layout(Path(root)).source_listing
    start = time.perf_counter()
    index = scan(p.source, p.path, p.devkit, p.val_fraction)
    new = source_listing.entries(index, p.path)
    old = source_listing.read(path) if path.is_file() else {}
    source_listing.write(path, index, p.source, p.path)
    changes = source_listing.diff(old, new)
    report = {"files": len(index.files), "skipped": len(index.skipped),
              "seconds": round(time.perf_counter() - start, 3),
              **{k: len(v) for k, v in changes.items()}}
    get_run_logger().info("%s: %d files, %d skipped entries, listed in %.2f s; since the last "
                          "listing: %s", path, report["files"], report["skipped"], report["seconds"],
                          source_listing.summary(changes) if old else "first listing")
    return report
