"""The adaptation report's figures: target vs source accuracy (WiSE-FT's figure), accuracy vs trainable parameters."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402

from vlm.atomic_io import atomic_write  # noqa: E402

COLORS = {"zeroshot": "black", "linear-probe": "tab:green", "lora": "tab:blue", "lit": "tab:orange",
          "full": "tab:red", "wise-ft": "tab:purple"}
MARKERS = ["o", "s", "^", "D", "v", "P"]


def _save(fig, path: Path) -> Path:
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_tradeoff(report: dict, path: Path) -> Path:
    """One point per method and shot count; the WiSE-FT curve of each shot count as a line from base to full."""
    fig, ax = plt.subplots(figsize=(6, 5))
    shots = sorted({r["shots"] for r in report["rows"] if r["shots"]})
    for r in report["rows"]:
        if r["method"] == "wise-ft":
            continue
        marker = MARKERS[shots.index(r["shots"]) % len(MARKERS)] if r["shots"] else "*"
        ax.scatter(r["source"], r["target"], color=COLORS[r["method"]], marker=marker, s=60 if r["shots"] else 160,
                   label=r["method"], zorder=3)
    for k in shots:
        curve = sorted((r for r in report["rows"] if r["method"] == "wise-ft" and r["shots"] == k),
                       key=lambda r: r["alpha"])
        if curve:
            ax.plot([r["source"] for r in curve], [r["target"] for r in curve], color=COLORS["wise-ft"],
                    marker=MARKERS[shots.index(k) % len(MARKERS)], alpha=0.7, label="wise-ft")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=8, title="markers: " + ", ".join(
        f"{MARKERS[i % len(MARKERS)]}={k}" for i, k in enumerate(shots)) + " shots", title_fontsize=7)
    ax.set_xlabel(f"source top-1 (%) {Path(report['source']).name}")
    ax.set_ylabel(f"target top-1 (%) {Path(report['target']).name}")
    ax.set_title(f"{report['model']}: what adaptation gains and forgets")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_params(report: dict, path: Path) -> Path:
    """Target accuracy at the largest shot count against trainable parameters (zero-shot drawn at 1)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    top = max((r["shots"] for r in report["rows"]), default=0)
    for r in report["rows"]:
        if r["shots"] in (0, top) and (r["method"] != "wise-ft" or r["alpha"] == 0.5):
            ax.scatter(max(1, r["trainable_params"]), r["target"], color=COLORS[r["method"]], s=60,
                       label=r["method"])
            ax.annotate(r["method"], (max(1, r["trainable_params"]), r["target"]), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log; zero-shot at 1)")
    ax.set_ylabel("target top-1 (%)")
    ax.set_title(f"{report['model']}, {top} shots per class")
    ax.grid(alpha=0.3)
    return _save(fig, path)
