"""The source listing: what DVC tracks of the source instead of the source itself.

``data/source_listing.tsv`` (written by the ``list_source`` stage, a dependency of ``prepare``):
a header line, then one line per file the scan of ``prepare.path`` reads (images and label files),
sorted: ``<path>\\t<size in bytes>\\t<mtime in ns>``, the path relative to ``prepare.path`` (absolute
for files outside it, such as a devkit), and one line per entry the scan passed over:
``<path>\\t!\\t<reason>``. Hashing this one file costs DVC a fraction of a second where hashing a
1.28M-file tree costs it minutes (and every ``dvc status`` after that re-stats the whole tree).

What it gives up: a file rewritten in place with the same size and the same mtime (``touch -r``,
some copy tools) is not noticed; and the listing is what the last ``list_source`` run saw, so an
edit of the source is noticed after ``vfmtok-pipeline list_source`` (seconds), not by ``dvc
status`` alone. ``prepare`` compares its own scan with the listing and refuses a stale one.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import SourceError
from pipeline.sources.items import SourceIndex
from pipeline.sources.walk import relative
from vfmtok import files

HEADER = "# vfmtok source listing v1"


def _rel(path: str, root: Path) -> str:
    rel = relative(path, root)
    return Path(path).as_posix() if rel is None else rel


def entries(index: SourceIndex, root: str | Path) -> dict[str, str]:
    """``{path: "size\\tmtime_ns" or "!\\treason"}`` for every file and skipped entry of a scan."""
    root = Path(root)
    out = {_rel(f.path, root): f"{f.size}\t{f.mtime_ns}" for f in index.files}
    for s in index.skipped:
        out.setdefault(_rel(s.source_path, root), "!\t" + " ".join(s.reason.split()))
    return out


def render(index: SourceIndex, source: str, root: str | Path) -> str:
    body = entries(index, root)
    head = f"{HEADER}: source={source} path={Path(root).as_posix()} layout={index.layout}"
    return "\n".join([head, *(f"{k}\t{body[k]}" for k in sorted(body))]) + "\n"


def write(path: Path, index: SourceIndex, source: str, root: str | Path) -> None:
    files.write_text(path, render(index, source, root))


def read(path: Path) -> dict[str, str]:
    """The entries of a listing file (its header checked)."""
    lines = path.read_text().splitlines()
    if not lines or not lines[0].startswith(HEADER):
        raise SourceError(f"{path}: not a source listing (no {HEADER!r} header)")
    out = {}
    for n, line in enumerate(lines[1:], start=2):
        key, sep, rest = line.partition("\t")
        if not sep:
            raise SourceError(f"{path}: line {n}: expected <path>\\t<size>\\t<mtime_ns>")
        out[key] = rest
    return out


def diff(old: dict[str, str], new: dict[str, str]) -> dict[str, list[str]]:
    """Paths ``added``, ``removed`` and ``changed`` (size, mtime or skip reason) from old to new."""
    return {"added": sorted(new.keys() - old.keys()), "removed": sorted(old.keys() - new.keys()),
            "changed": sorted(k for k in old.keys() & new.keys() if old[k] != new[k])}


def summary(changes: dict[str, list[str]]) -> str:
    parts = [f"{len(v)} {k} (first: {v[0]})" for k, v in changes.items() if v]
    return "; ".join(parts) or "no change"


def check(path: Path, index: SourceIndex, root: str | Path) -> None:
    """Refuse to prepare from a source that differs from its listing: DVC's record would then
    describe files other than the ones prepared."""
    changes = diff(read(path), entries(index, root))
    if any(changes.values()):
        raise SourceError(f"{path}: the source changed since it was listed ({summary(changes)}); "
                          "run `vfmtok-pipeline list_source`, then `dvc repro`")
