"""`vlm distill-report`: what distillation and shrinking keep of a teacher, against the same student from scratch.

Rows: the teacher; the student trained from scratch (CLIP loss); the student distilled (the recipe's losses); the
teacher shrunk to the student's shape (vlm/models/shrink.py) and then distilled, at the full and at half the steps.
Every trained row has the same recipe, steps, batch and data, over each seed. Columns: zero-shot top-1, T->I and
I->T R@1, compositional (percent), parameters, encode images/s and texts/s (one process, same run), and each as a
percentage of the teacher's. Writes report.json, report.md and distill_tradeoff.png (accuracy vs encode speed).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from vlm.atomic_io import atomic_write
from vlm.config import shipped_configs
from vlm.distill.measure import measure_model
from vlm.errors import UserError
from vlm.eval.run import EvalSets
from vlm.models.checkpoint import load_model, resolve_checkpoint
from vlm.models.shrink import shrink_checkpoint
from vlm.train.config import TrainConfig, load_train_config

COLUMNS = ("zeroshot", "t2i_r1", "i2t_r1", "compositional", "params", "images_per_s", "texts_per_s",
           "mflops_image", "mflops_text")
HEADERS = ("zero-shot", "T->I R@1", "I->T R@1", "compositional", "params", "images/s", "texts/s", "MFLOPs/image",
           "MFLOPs/text")
COUNTS = ("params", "images_per_s", "texts_per_s")  # shown as whole numbers, without a spread for params
ROWS = ("teacher", "scratch", "distilled", "shrunk+distilled", "shrunk+distilled (half steps)")
RUN_DIRS = {"scratch": "scratch", "distilled": "distilled", "shrunk+distilled": "shrunk-distilled",
            "shrunk+distilled (half steps)": "shrunk-distilled-half"}


@dataclass(frozen=True)
class DistillReportOptions:
    recipe: str = "configs/train/distill-clip.yaml"  # the distillation recipe; its student and hyper-parameters
    steps: int | None = None  # None: the recipe's
    batch_size: int | None = None
    seeds: tuple[int, ...] = (0,)
    split: str = "test"
    max_retrieval_images: int = 200
    num_workers: int = 1
    half: bool = True  # also shrink-then-distil at half the steps (does it reach scratch's figures there?)
    overrides: tuple[str, ...] = ()


def recipe(options: DistillReportOptions, teacher: Path, data: Path, seed: int, run: str, **extra) -> TrainConfig:
    """The row's recipe: the distillation recipe for teacher and data; scratch drops the teacher."""
    path = Path(options.recipe)
    if not path.is_file():
        path = shipped_configs() / "train" / path.name
    if not path.is_file():
        raise UserError(f"{options.recipe}: recipe not found")
    sets = {"distill.teacher": str(teacher), "data.train": str(data), "seed": seed,
            "data.num_workers": options.num_workers, **({"steps": options.steps} if options.steps else {}),
            **({"batch_size": options.batch_size} if options.batch_size else {}), **extra}
    overrides = [*options.overrides, *(f"{k}={json.dumps(v)}" for k, v in sets.items())]
    if run == "scratch":  # the same recipe, the pairs alone
        overrides += ["objective=clip", "distill=null"]
    config = load_train_config(path, overrides)
    return dataclasses.replace(config, steps=max(1, config.steps // 2)) if run.endswith("(half steps)") else config


def shrunk_student(teacher: Path, student: TrainConfig, out: Path) -> Path:
    """The teacher shrunk to the student's shape (both towers alike); refused if no shrink gives that shape."""
    from vlm.models.registry import get_model_config

    shape = get_model_config(student.model, list(student.model_overrides))
    image, text = shape.image, shape.text
    if (image.depth, image.width, image.heads) != (text.depth, text.width, text.heads):
        raise UserError("shrink gives both towers one depth, width and heads; the recipe's student differs")
    path = out / "shrunk.pt"
    small = shrink_checkpoint(str(teacher), str(path), image.depth, image.width, image.heads)
    if small.config.embed_dim != shape.embed_dim or small.config.image.image_size != image.image_size:
        raise UserError(f"the student's embed_dim/image_size ({shape.embed_dim}/{image.image_size}) differ from the "
                        "teacher's: shrinking keeps them, so the shrunk student would not be the recipe's student")
    return path


def train_row(name: str, config: TrainConfig, run_dir: Path) -> tuple[nn.Module, float]:
    from vlm.train import train

    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    checkpoint = train(config, run_dir)
    return load_model(checkpoint), time.perf_counter() - start


def distill_report(teacher: str | Path, data: str | Path, out: str | Path,
                   options: DistillReportOptions = DistillReportOptions()) -> dict:
    """Train every row over every seed, measure, write report.json, report.md and the plot; return the report."""
    from vlm.distill.report_plot import plot_tradeoff

    out, data = Path(out), Path(data)
    teacher = resolve_checkpoint(teacher).resolve()
    sets = EvalSets(data, options.split, options.max_retrieval_images)
    started = time.perf_counter()
    rows = [{"row": "teacher", "seed": None, "train_s": 0.0, **measure_model(load_model(teacher), sets)}]
    shrunk = shrunk_student(teacher, recipe(options, teacher, data, 0, "distilled"), out)
    for seed in options.seeds:
        for name in ROWS[1:] if options.half else ROWS[1:-1]:
            extra = {"model": str(shrunk), "model_overrides": []} if name.startswith("shrunk") else {}
            config = recipe(options, teacher, data, seed, name, **extra)
            model, seconds = train_row(name, config, out / "runs" / f"{RUN_DIRS[name]}-seed{seed}")
            rows.append({"row": name, "seed": seed, "steps": config.steps, "train_s": seconds,
                         **measure_model(model, sets)})
    report = {"teacher": str(teacher), "data": str(data), "options": asdict(options),
              "wall_s": time.perf_counter() - started, "rows": rows, "summary": summarise(rows)}
    write_report(report, out)
    plot_tradeoff(report, out / "distill_tradeoff.png")
    return report


def summarise(rows: list[dict]) -> list[dict]:
    """Per row name: the mean and the spread (population std) over seeds of every column, and % of the teacher."""
    teacher = next(r for r in rows if r["row"] == "teacher")
    summary = []
    for name in ROWS:
        group = [r for r in rows if r["row"] == name]
        if not group:
            continue
        entry = {"row": name, "seeds": len(group), "steps": group[0].get("steps")}
        for column in COLUMNS:
            values = [r[column] for r in group]
            entry[column] = statistics.fmean(values)
            entry[f"{column}_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
            entry[f"{column}_pct"] = 100 * entry[column] / teacher[column] if teacher[column] else float("nan")
        summary.append(entry)
    return summary


def format_table(report: dict) -> str:
    lines = ["| model | seeds | steps | " + " | ".join(HEADERS) + " |", "|" + "---|" * (len(HEADERS) + 3)]
    for s in report["summary"]:
        cells = []
        for column in COLUMNS:
            value = f"{s[column]:,.0f}" if column in COUNTS else f"{s[column]:.1f}"
            spread = f" ± {s[column + '_std']:.1f}" if s["seeds"] > 1 and column in COLUMNS[:4] + COUNTS[1:] else ""
            cells.append(f"{value}{spread} ({s[column + '_pct']:.0f}%)")
        lines.append(f"| {s['row']} | {s['seeds']} | {s['steps'] or '-'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "report.json", "w") as f:
        f.write(json.dumps(report, indent=1) + "\n")
    text = (f"# Distillation report\n\nteacher {report['teacher']}, data {report['data']} "
            f"(split {report['options']['split']}); recipe {report['options']['recipe']}; seeds "
            f"{list(report['options']['seeds'])}; whole report {report['wall_s']:.0f} s. Each cell: mean (± spread "
            "over seeds) (% of the teacher). Encode speeds are measured in this one process, one model after "
            "another: compare them within this table only, and on a quiet machine; MFLOPs are counted "
            "(torch's FLOP counter) and no load moves them.\n\n"
            f"{format_table(report)}\n\n![accuracy vs encode speed](distill_tradeoff.png)\n")
    with atomic_write(out / "report.md", "w") as f:
        f.write(text)
