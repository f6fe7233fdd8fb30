"""The loss curve PNG a run leaves in its folder."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def plot_metrics(metrics_path: Path, out_path: Path) -> Path | None:
    """Training loss and every val/ (or train_as_val/) metric against step, from metrics.jsonl."""
    if not metrics_path.is_file():
        return None
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r]
    val_keys = sorted({k for r in rows for k in r if k.startswith(("val/", "train_as_val/"))})
    fig, axes = plt.subplots(1, 1 + bool(val_keys), figsize=(10 if val_keys else 5, 3.5), squeeze=False)
    axes[0][0].plot([r["step"] for r in train], [r["loss"] for r in train])
    axes[0][0].set(xlabel="step", ylabel="training loss", title=metrics_path.parent.name)
    for key in val_keys:
        points = [(r["step"], r[key]) for r in rows if key in r]
        axes[0][1].plot(*zip(*points, strict=True), marker="o", label=key.split("/", 1)[1])
    if val_keys:
        on_train = any(k.startswith("train_as_val/") for k in val_keys)
        axes[0][1].set(xlabel="step", title="validation (on training items)" if on_train else "validation")
        axes[0][1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
