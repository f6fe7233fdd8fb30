"""The sweep's report: report.json (every figure), report.md rendered from it, one plot per split."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from vlm.atomic_io import atomic_write
from vlm.eval.report import fmt
from vlm.sweep.config import SweepConfig, grid_points
from vlm.sweep.thresholds import abilities, threshold_table

GROUPS = {"retrieval": "Retrieval R@1 (%)", "vqa": "VQA accuracy (%, probe)", "compositional": "Compositional (%)"}


def fmt_flops(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.2e}"


def negatives_comparison(rows: list[dict], splits) -> dict:
    """Compositional accuracy of each family at the negatives point against the same recipe without them."""
    with_neg = {r["family"]: r for r in rows if r["negatives"] and r["family"] != "hybrid"}
    result = {}
    for family, row in with_neg.items():
        base = next((r for r in rows if r["family"] == family and not r["negatives"] and r["size"] == row["size"]
                     and r["steps"] == row["steps"]), None)
        if base is None:
            continue
        result[family] = {"size": row["size"], "steps": row["steps"], "splits": {
            split: {a: {"without": base["metrics"][split][a], "with": row["metrics"][split][a],
                        "blind": row["baselines"][split][a]}
                    for a in abilities([row], split) if a.startswith("compositional")}
            for split in splits if split in row["metrics"]}}
    return result


def build_report(config: SweepConfig, rows: list[dict], wall_s: float | None = None) -> dict:
    return {
        "setup": {"data_dir": config.data_dir, "sizes": [dataclasses.asdict(s) for s in config.sizes],
                  "steps": list(config.steps), "batch_size": config.batch_size, "seed": config.seed,
                  "late_model": config.late_model, "early_model": config.early_model, "splits": list(config.splits),
                  "margin": config.margin, "max_retrieval_images": config.max_retrieval_images,
                  "hybrid_k": config.hybrid_k, "vqa_probe": dataclasses.asdict(config.vqa_probe),
                  "negatives": dataclasses.asdict(config.negatives), "points": len(grid_points(config)),
                  "points_done": len({r["point"] for r in rows})},
        "wall_s": {"this_invocation": wall_s,
                   "training": sum(r["train_wall_s"] for r in rows if r["family"] != "hybrid"),
                   "evaluation": sum(r["eval_wall_s"] for r in rows if r["family"] == "late")},
        "thresholds": threshold_table(rows, config.splits, config.margin),
        "negatives": negatives_comparison(rows, config.splits),
        "rows": rows,
    }


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in body)]


def _threshold_lines(report: dict) -> list[str]:
    margin = report["setup"]["margin"]
    lines = ["## Thresholds", "",
             f"Training FLOPs of the cheapest grid point at which each ability is at least {fmt(margin)} points above "
             "its blind baseline (only as fine as the grid; points with hard negatives left out).", ""]
    for split, table in report["thresholds"].items():
        body = [[f"`{a}`"] + [fmt_flops(per.get(f)) if f in per else "" for f in ("late", "early", "hybrid")]
                for a, per in table.items()]
        lines += [f"Split `{split}`:", "", *_table(["ability", "late", "early", "hybrid"], body), ""]
    return lines


def _point_lines(rows: list[dict], split: str) -> list[str]:
    lines = []
    for group, title in GROUPS.items():
        names = [a for a in abilities(rows, split) if a.split("/")[0] == group]
        if not names:
            continue
        body = [[r["family"], r["size"], fmt(r["steps"]), "yes" if r["negatives"] else "", fmt_flops(r["train_flops"])]
                + [f"{fmt(r['metrics'][split][a])} ({fmt(r['baselines'][split][a])})" if a in r["metrics"][split]
                   else "" for a in names]
                for r in sorted(rows, key=lambda r: (r["family"], r["train_flops"]))
                if any(a in r["metrics"].get(split, {}) for a in names)]
        header = ["family", "size", "steps", "negatives", "train FLOPs", *[f"`{a}`" for a in names]]
        lines += [f"### {title}, split `{split}`", "", "Each cell: score (blind baseline).", "",
                  *_table(header, body), ""]
    return lines


def _negatives_lines(report: dict) -> list[str]:
    comparison = report["negatives"]
    if not comparison:
        return []
    lines = ["## Compositional hard negatives", "",
             "The same size, steps and data with and without swapped-caption negatives (NegCLIP for late fusion, "
             "extra ITM negatives for early fusion).", ""]
    for family, entry in comparison.items():
        for split, per in entry["splits"].items():
            body = [[f"`{a}`", fmt(v["without"]), fmt(v["with"]), fmt(v["blind"])] for a, v in per.items()]
            lines += [f"`{family}`, size `{entry['size']}`, {fmt(entry['steps'])} steps, split `{split}`:", "",
                      *_table(["ability", "without", "with", "blind"], body), ""]
    return lines


def render_markdown(report: dict, images: list[str]) -> str:
    setup, wall = report["setup"], report["wall_s"]
    sizes = ", ".join(f"`{s['name']}` (width {s['width']}, depth {s['depth']})" for s in setup["sizes"])
    lines = ["# Scale sweep: late against early fusion, by training compute", "",
             f"Data `{setup['data_dir']}`; sizes {sizes}; steps {', '.join(fmt(s) for s in setup['steps'])}; batch "
             f"{fmt(setup['batch_size'])} for both families (the same batches in the same order), seed "
             f"{fmt(setup['seed'])}. Points done: {fmt(setup['points_done'])} of {fmt(setup['points'])}. Wall time: "
             f"training {fmt(wall['training'])} s, evaluation {fmt(wall['evaluation'])} s (summed over the points), "
             f"this invocation {fmt(wall['this_invocation'])} s.", "",
             "Training compute is forward + backward FLOPs of one step on the run's first batch (torch's "
             "FlopCounterMode) times the steps; hybrid's is both runs'. VQA is a probe: a fresh VQA head trained on "
             "the frozen model's features.", ""]
    lines += _threshold_lines(report) + _negatives_lines(report)
    for split in setup["splits"]:
        lines += _point_lines(report["rows"], split)
    lines += [f"![{name}]({name})" for name in images]
    return "\n".join(lines) + "\n"


def write_report(config: SweepConfig, rows: list[dict], out_dir: Path, wall_s: float | None = None) -> dict:
    report = build_report(config, rows, wall_s)
    with atomic_write(out_dir / "report.json", "w") as f:
        json.dump(report, f, indent=1)
    images = [p.name for p in write_plots(report, out_dir)] if rows else []
    with atomic_write(out_dir / "report.md", "w") as f:
        f.write(render_markdown(report, images))
    return report


def write_plots(report: dict, out_dir: Path) -> list[Path]:
    from vlm.sweep.plots import plot_split

    return [plot_split(report["rows"], split, report["thresholds"][split], out_dir / f"abilities_{split}.png")
            for split in report["setup"]["splits"]]
