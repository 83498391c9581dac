"""Figures for people (matplotlib, Agg backend, written atomically): the reconstruction error maps
and quality-against-steps curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vfmtok import files


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=110)


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    files.write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def error_maps(path: Path, signed: np.ndarray, absolute: np.ndarray, worst_block: float,
               n_images: int) -> None:
    """Mean signed error (diverging, symmetric scale) beside mean absolute error, in grey levels.

    A sound tokenizer's signed map is flat noise around 0; a fixed-position artifact shows as one
    saturated patch at the same place."""
    plt, fig = _figure(8.4, 3.9)
    lim = max(5.0, float(np.abs(signed).max()))
    for i, (data, title, kw) in enumerate([
        (signed, f"mean signed error (recon - original)\nworst 8x8 block {worst_block:.1f}",
         dict(cmap="RdBu_r", vmin=-lim, vmax=lim)),
        (absolute, f"mean absolute error\nmean {absolute.mean():.1f}", dict(cmap="magma", vmin=0)),
    ]):  # fmt: skip
        ax = fig.add_subplot(1, 2, i + 1)
        im = ax.imshow(data, interpolation="nearest", **kw)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="grey levels (0-255)")
    fig.suptitle(f"reconstruction error over {n_images} val images", fontsize=10)
    _save(plt, fig, path)


def curves(path: Path, series: dict[str, list[tuple[int, float]]], ylabel: str, title: str,
           lower_is_better: bool = True) -> None:
    """One line per run of (step, value) points."""
    plt, fig = _figure(6.4, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for name, points in series.items():
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="o", markersize=3, label=name)
    ax.set_xlabel("AR training step")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title} ({'lower' if lower_is_better else 'higher'} is better)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(plt, fig, path)
