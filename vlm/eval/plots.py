"""The report's two figures: VQA accuracy per question family, and retrieval accuracy against cost."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter, ScalarFormatter  # noqa: E402

from vlm.atomic_io import atomic_write  # noqa: E402

COLORS = {"late": "tab:blue", "early": "tab:red", "hybrid": "tab:purple", "blind": "tab:gray"}


def _save(fig, path: Path) -> Path:
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_vqa_families(vqa: dict, path: Path) -> Path | None:
    """Grouped bars: each question family, late vs early vs the question-only baseline."""
    names = [n for n in ("late", "early", "question_only") if "per_question_family" in vqa.get(n, {})]
    if not names:
        return None
    families = sorted({f for n in names for f in vqa[n]["per_question_family"]})
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(families)), 4))
    for i, name in enumerate(names):
        values = [vqa[name]["per_question_family"].get(f, 0.0) for f in families]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(families))]
        ax.bar(xs, values, width, label=name, color=COLORS.get(name, COLORS["blind"]))
    ax.set_xticks(range(len(families)), families, rotation=30, ha="right")
    ax.set_ylabel("VQA accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("VQA accuracy per question family")
    ax.legend()
    return _save(fig, path)


def _point(ax, x: float, y: float, name: str, color: str) -> None:
    ax.scatter(x, y, color=color, zorder=3)
    ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)


def plot_accuracy_vs_cost(report: dict, path: Path) -> Path:
    """Text->image R@1 against fusion passes and against measured per-query latency; hybrid k joined by a line."""
    retrieval, latency = report["retrieval"], report["cost"]["latency"]
    hybrid = sorted(retrieval["hybrid"].items(), key=lambda kv: int(kv[0]))
    fig, (ax_passes, ax_latency) = plt.subplots(1, 2, figsize=(11, 4))
    ax_passes.plot([run["fusion_passes"] for _, run in hybrid],
                   [run["image_retrieval_recall@1"] for _, run in hybrid], color=COLORS["hybrid"], alpha=0.5)
    timed = [(k, run) for k, run in hybrid if f"hybrid@{k}" in latency]
    ax_latency.plot([latency[f"hybrid@{k}"]["p50_ms"] for k, _ in timed],
                    [run["image_retrieval_recall@1"] for _, run in timed], color=COLORS["hybrid"], alpha=0.5)
    points = [("late", "late", retrieval["late"]), ("early", "early", retrieval["early"])]
    points += [(f"hybrid k={k}", f"hybrid@{k}", run) for k, run in hybrid]
    for name, latency_key, run in points:
        color = COLORS["hybrid"] if name.startswith("hybrid") else COLORS[name]
        r1 = run["image_retrieval_recall@1"]
        _point(ax_passes, run["fusion_passes"], r1, name, color)
        if latency_key in latency:
            _point(ax_latency, latency[latency_key]["p50_ms"], r1, name, color)
    chance = retrieval["random"]["image_retrieval_recall@1"]
    for ax in (ax_passes, ax_latency):
        ax.axhline(chance, color=COLORS["blind"], linestyle="--", label="random ranking")
        ax.set_ylabel("text→image R@1 (%)")
        ax.legend(loc="best")
    ax_passes.set_xscale("symlog", linthresh=1)
    ax_passes.set_xlim(left=0, right=2 * max(run["fusion_passes"] for _, _, run in points))
    ax_passes.set_xlabel("fusion passes, whole evaluation (0 for late fusion)")
    ax_latency.set_xscale("log")
    ax_latency.xaxis.set_major_formatter(ScalarFormatter())
    ax_latency.xaxis.set_minor_formatter(NullFormatter())
    ax_latency.set_xlabel("p50 latency of one text query over all images (ms)")
    fig.suptitle("Retrieval accuracy against cost: late, hybrid re-ranking at several k, exhaustive early")
    return _save(fig, path)


def write_plots(report: dict, out_dir: Path) -> list[Path]:
    written = [plot_vqa_families(report["vqa"], out_dir / "vqa_per_family.png"),
               plot_accuracy_vs_cost(report, out_dir / "accuracy_vs_cost.png")]
    return [p for p in written if p is not None]
