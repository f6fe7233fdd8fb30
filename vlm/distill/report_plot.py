"""The distillation report's figure: each model's accuracy against its image-encoding speed."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402

from vlm.atomic_io import atomic_write  # noqa: E402

MARKERS = {"zeroshot": "o", "t2i_r1": "s", "i2t_r1": "^", "compositional": "D"}


def plot_tradeoff(report: dict, path: Path) -> Path:
    """One point per model and metric (mean over seeds), x = images encoded per second."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, s in enumerate(report["summary"]):
        color = f"C{i}"
        for metric, marker in MARKERS.items():
            ax.scatter(s["images_per_s"], s[metric], color=color, marker=marker, s=50)
        ax.annotate(s["row"], (s["images_per_s"], s["zeroshot"]), fontsize=7, textcoords="offset points",
                    xytext=(4, 4), color=color)
    for metric, marker in MARKERS.items():
        ax.scatter([], [], color="gray", marker=marker, label=metric)
    ax.set_xscale("log")
    ax.set_xlabel("encode images/s (log; this process, one model at a time)")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=8)
    ax.set_title("what compression keeps: accuracy vs encode speed")
    ax.grid(alpha=0.3)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
