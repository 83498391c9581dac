"""``vfmtok-pipeline compare A B``: the params that differ and every metric with its delta, for any
two revisions (commits, branches or DVC experiment names), as Markdown."""

from __future__ import annotations

from pathlib import Path

from pipeline.experiments.revisions import read_rev
from pipeline.layout import Layout
from vfmtok import files


def _delta(a: object, b: object) -> str:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return f"{b - a:+.4g}"
    return "" if a == b else "changed"


def compare(rev_a: str, rev_b: str, root: str = ".") -> Path:
    """Markdown table of the params that differ and of every metric, with B - A deltas."""
    pa, ma = read_rev(rev_a, root)
    pb, mb = read_rev(rev_b, root)
    lines = [f"# {rev_a} vs {rev_b}", "", "## Params that differ", "",
             f"| param | {rev_a} | {rev_b} |", "|---|---|---|"]
    lines += [f"| {k} | {pa.get(k)} | {pb.get(k)} |" for k in sorted(set(pa) | set(pb))
              if pa.get(k) != pb.get(k)]
    lines += ["", "## Metrics", "", f"| metric | {rev_a} | {rev_b} | delta |", "|---|---|---|---|"]
    for k in sorted(set(ma) | set(mb)):
        a, b = ma.get(k), mb.get(k)
        if isinstance(a, list) or isinstance(b, list):
            continue  # curves: see `dvc plots diff`
        lines.append(f"| {k} | {a} | {b} | {_delta(a, b)} |")
    safe = lambda s: "".join(c if c.isalnum() or c in "-_" else "_" for c in s)  # noqa: E731
    out = Layout(Path(root)).reports / f"compare_{safe(rev_a)}_vs_{safe(rev_b)}.md"
    files.write_text(out, "\n".join(lines) + "\n")
    return out
