"""Each ability against training compute (log x), one line per family and size, each point's blind baseline a
dash, the threshold a vertical dashed line."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from vlm.atomic_io import atomic_write  # noqa: E402
from vlm.sweep.thresholds import abilities, curve, families_of  # noqa: E402

COLORS = {"late": "tab:blue", "early": "tab:red", "hybrid": "tab:purple"}
MARKERS = "osD^v<>p"


def _panel(ax, rows: list[dict], split: str, ability: str, thresholds: dict) -> None:
    sizes = list(dict.fromkeys(r["size"] for r in sorted(rows, key=lambda r: r["width"] * r["depth"])))
    for family in families_of(rows, ability):
        color = COLORS[family]
        points = curve(rows, family, split, ability)
        for i, size in enumerate(sizes):
            mine = [p for p in points if p.size == size]
            if mine:
                ax.plot([p.compute for p in mine], [p.value for p in mine], color=color, marker=MARKERS[i % 8],
                        alpha=0.9, label=f"{family} {size}")
        if points:  # each point's own baseline (an image-zeroed model moves with the model): marks, no line
            ax.scatter([p.compute for p in points], [p.baseline for p in points], color=color, marker="_", s=80,
                       alpha=0.7)
        boosted = curve(rows, family, split, ability, negatives=True)
        if boosted:
            ax.scatter([p.compute for p in boosted], [p.value for p in boosted], color=color, marker="*", s=120,
                       zorder=3, label=f"{family} + negatives")
        if thresholds.get(ability, {}).get(family) is not None:
            ax.axvline(thresholds[ability][family], color=color, linestyle="--", alpha=0.5)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks overlap on a short log axis
    ax.set_title(ability, fontsize=9)
    ax.tick_params(labelsize=7)


def plot_split(rows: list[dict], split: str, thresholds: dict, path: Path) -> Path:
    names = abilities(rows, split)
    cols = 4
    fig, axes = plt.subplots(math.ceil(len(names) / cols), cols, figsize=(4 * cols, 3 * math.ceil(len(names) / cols)),
                             squeeze=False)
    for ax, ability in zip(axes.flat, names, strict=False):
        _panel(ax, rows, split, ability, thresholds)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in axes.flat:
        h, lab = ax.get_legend_handles_labels()
        handles, labels = (h, lab) if len(h) > len(handles) else (handles, labels)
    fig.legend(handles, labels, loc="lower center", ncol=min(6, max(1, len(labels))), fontsize=8)
    fig.suptitle(f"Abilities (%) against training compute (FLOPs, log scale), split {split}; "
                 "dashes: each point's blind baseline; vertical dashed line: threshold")
    fig.subplots_adjust(left=0.05, right=0.98, top=0.92, bottom=0.16, hspace=0.45, wspace=0.25)  # tight_layout: slow
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path
