"""The distillation report's figure: each model's accuracy against its cost to score a new pair (MFLOPs, counted:
no load moves it, and it compares an early-fusion teacher with late-fusion students)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402

from vlm.atomic_io import atomic_write  # noqa: E402

MARKERS = {"zeroshot": "o", "t2i_r1": "s", "i2t_r1": "^", "compositional": "D", "vqa": "v"}


def plot_tradeoff(report: dict, path: Path) -> Path:
    """One point per model and metric (mean over seeds), x = MFLOPs to encode and score a new image-text pair."""
    metrics = {m: marker for m, marker in MARKERS.items() if m in report["summary"][0]}
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, s in enumerate(report["summary"]):
        color = f"C{i}"
        for metric, marker in metrics.items():
            ax.scatter(s["mflops_pair"], s[metric], color=color, marker=marker, s=50)
        ax.annotate(s["row"], (s["mflops_pair"], s["zeroshot"]), fontsize=7, textcoords="offset points",
                    xytext=(4, 4), color=color)
    for metric, marker in metrics.items():
        ax.scatter([], [], color="gray", marker=marker, label=metric)
    ax.set_xscale("log")
    ax.set_xlabel("MFLOPs to encode and score a new pair (log; fewer is faster)")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=8)
    ax.set_title("what compression keeps: accuracy vs encode speed")
    ax.grid(alpha=0.3)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
