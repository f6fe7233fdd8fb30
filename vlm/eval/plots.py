"""The report's two figures: VQA accuracy per question family, and retrieval accuracy against cost."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402

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


def plot_accuracy_vs_cost(report: dict, path: Path) -> Path:
    """Text->image R@1 against fusion passes and against measured per-query latency."""
    retrieval, latency = report["retrieval"], report["cost"]["latency"]
    points = [("late", retrieval["late"], latency.get("late")), ("early", retrieval["early"], latency.get("early"))]
    points += [(f"hybrid k={k}", run, latency.get(f"hybrid@{k}")) for k, run in retrieval["hybrid"].items()]
    fig, (ax_passes, ax_latency) = plt.subplots(1, 2, figsize=(11, 4))
    for name, run, lat in points:
        color = COLORS["hybrid"] if name.startswith("hybrid") else COLORS[name]
        r1 = run["image_retrieval_recall@1"]
        ax_passes.scatter(run["fusion_passes"], r1, color=color)
        ax_passes.annotate(name, (run["fusion_passes"], r1), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if lat is not None:
            ax_latency.scatter(lat["p50_ms"], r1, color=color)
            ax_latency.annotate(name, (lat["p50_ms"], r1), textcoords="offset points", xytext=(4, 4), fontsize=8)
    chance = retrieval["random"]["image_retrieval_recall@1"]
    for ax in (ax_passes, ax_latency):
        ax.axhline(chance, color=COLORS["blind"], linestyle="--", label="random")
        ax.set_ylabel("text→image R@1 (%)")
        ax.legend(loc="lower right")
    ax_passes.set_xscale("symlog", linthresh=1)
    ax_passes.set_xlabel("fusion passes (whole evaluation)")
    ax_latency.set_xscale("log")
    ax_latency.set_xlabel("p50 latency of one query (ms)")
    fig.suptitle("Retrieval accuracy against cost: late, hybrid re-ranking, exhaustive early")
    return _save(fig, path)


def write_plots(report: dict, out_dir: Path) -> list[Path]:
    written = [plot_vqa_families(report["vqa"], out_dir / "vqa_per_family.png"),
               plot_accuracy_vs_cost(report, out_dir / "accuracy_vs_cost.png")]
    return [p for p in written if p is not None]
