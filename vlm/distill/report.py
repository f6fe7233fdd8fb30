"""`vlm distill-report`: what distillation and shrinking keep of a teacher, against the same student from scratch.

Rows, for a late-fusion teacher: the teacher; the student trained from scratch (CLIP loss); the student distilled
(the recipe's losses); the teacher shrunk to the student's shape (vlm/models/shrink.py) and trained with the CLIP
loss alone; the shrunk teacher distilled, at the full and at half the steps. For an early-fusion teacher
(cross-family, configs/train/distill-fusion.yaml): the teacher, the student without the ranking loss (scratch) and
with it (distilled); no shrunk rows, as shrinking keeps the family. Every trained row has the same recipe, steps,
batch and data, over each seed. Columns: zero-shot top-1, T->I and I->T R@1, compositional, VQA after the shared
fine-tune (with `vqa`), parameters, encode images/s and texts/s (one process, same run), MFLOPs, each as a
percentage of the teacher's; then each row's change against scratch, paired by seed. Writes report.json, report.md
and distill_tradeoff.png (accuracy vs cost).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from vlm.atomic_io import atomic_write
from vlm.config import shipped_configs
from vlm.distill.measure import measure_model, vqa_after_finetune
from vlm.errors import UserError
from vlm.eval.run import EvalSets
from vlm.models.checkpoint import load_model, resolve_checkpoint
from vlm.models.shrink import shrink_checkpoint
from vlm.train.config import TrainConfig, load_train_config

ACCURACY = ("zeroshot", "t2i_r1", "i2t_r1", "compositional")  # and "vqa" when the report fine-tunes for VQA
COLUMNS = (*ACCURACY, "params", "images_per_s", "texts_per_s", "mflops_image", "mflops_text", "mflops_pair")
HEADERS = {"zeroshot": "zero-shot", "t2i_r1": "T->I R@1", "i2t_r1": "I->T R@1", "compositional": "compositional",
           "vqa": "VQA", "params": "params", "images_per_s": "images/s", "texts_per_s": "texts/s",
           "mflops_image": "MFLOPs/image", "mflops_text": "MFLOPs/text", "mflops_pair": "MFLOPs/new pair"}
COUNTS = ("params", "images_per_s", "texts_per_s")  # shown as whole numbers, without a spread for params
# "shrunk" (the shrunk teacher trained with the CLIP loss alone) tells what the teacher's weights give apart from its
# outputs: shrunk+distilled minus shrunk is what distillation adds to weight inheritance.
ROWS = ("teacher", "scratch", "distilled", "shrunk", "shrunk+distilled", "shrunk+distilled (half steps)")
CROSS_FAMILY_ROWS = ROWS[:3]  # an early-fusion teacher: scratch is the student without the ranking loss
RUN_DIRS = {"scratch": "scratch", "distilled": "distilled", "shrunk": "shrunk", "shrunk+distilled": "shrunk-distilled",
            "shrunk+distilled (half steps)": "shrunk-distilled-half"}
RECIPES = {"dual_encoder": "configs/train/distill-clip.yaml", "early_fusion": "configs/train/distill-fusion.yaml"}


@dataclass(frozen=True)
class DistillReportOptions:
    recipe: str | None = None  # the distillation recipe (its student, losses, hyper-parameters); None: RECIPES
    steps: int | None = None  # None: the recipe's
    batch_size: int | None = None
    seeds: tuple[int, ...] = (0,)
    split: str = "test"
    max_retrieval_images: int = 200
    num_workers: int = 1
    half: bool = True  # also shrink-then-distil at half the steps (does it reach scratch's figures there?)
    overrides: tuple[str, ...] = ()
    vqa: bool = False  # fine-tune every model for VQA with the quickstart's recipe, and add a VQA column
    vqa_steps: int | None = None  # None: the fine-tune recipe's


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
    if run in ("scratch", "shrunk"):  # the same recipe, the pairs alone
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


def train_row(config: TrainConfig, run_dir: Path) -> tuple[Path, float]:
    from vlm.train import train

    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    checkpoint = train(config, run_dir)
    return checkpoint, time.perf_counter() - start


def measure_row(checkpoint: Path, seed: int, sets: EvalSets, options: DistillReportOptions, data: Path,
                vqa_dir: Path) -> dict[str, float]:
    model = load_model(checkpoint)
    result = measure_model(model, sets)
    if options.vqa:
        result["vqa"] = vqa_after_finetune(checkpoint, model.config.arch == "early_fusion", seed, data, sets,
                                           vqa_dir, options.vqa_steps, options.num_workers)
    return result


def read_saved_row(path: Path) -> dict:
    """A row saved by an earlier report; {} when there is none or it is damaged (the row is then trained again)."""
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        print(f"{path}: unreadable ({e}); training the row again")
        return {}
    return saved if isinstance(saved, dict) else {}


def trained_row(name: str, seed: int, config: TrainConfig, run_dir: Path, sets: EvalSets,
                options: DistillReportOptions, data: Path) -> dict:
    """Train and measure one row, or read it back from RUN_DIR.json when an earlier report (stopped part-way, or
    run again) already did so with the same recipe and VQA fine-tune: a long report resumes where it stopped."""
    done = run_dir.with_name(f"{run_dir.name}.json")
    key = {"config": json.loads(json.dumps(asdict(config))), "vqa": options.vqa, "vqa_steps": options.vqa_steps,
           "split": options.split, "max_retrieval_images": options.max_retrieval_images}
    saved = read_saved_row(done)
    if saved.get("key") == key and "row" in saved:
        print(f"{name}, seed {seed}: measured before, read from {done}")
        return saved["row"]
    checkpoint, seconds = train_row(config, run_dir)
    measured = measure_row(checkpoint, seed, sets, options, data, run_dir.with_name(f"{run_dir.name}-vqa"))
    row = {"row": name, "seed": seed, "steps": config.steps, "train_s": seconds, **measured}
    with atomic_write(done, "w") as f:
        f.write(json.dumps({"key": key, "row": row}) + "\n")
    return row


def distill_report(teacher: str | Path, data: str | Path, out: str | Path,
                   options: DistillReportOptions = DistillReportOptions()) -> dict:
    """Train every row over every seed, measure, write report.json, report.md and the plot; return the report."""
    from vlm.distill.report_plot import plot_tradeoff

    out, data = Path(out), Path(data)
    teacher = resolve_checkpoint(teacher).resolve()
    arch = load_model(teacher).config.arch
    options = dataclasses.replace(options, recipe=options.recipe or RECIPES[arch])
    names = CROSS_FAMILY_ROWS if arch == "early_fusion" else ROWS if options.half else ROWS[:-1]
    sets = EvalSets(data, options.split, options.max_retrieval_images)
    started = time.perf_counter()
    rows = [{"row": "teacher", "seed": None, "train_s": 0.0,
             **measure_row(teacher, 0, sets, options, data, out / "runs" / "vqa-teacher")}]
    shrunk = None
    if "shrunk" in names:
        shrunk = shrunk_student(teacher, recipe(options, teacher, data, 0, "distilled"), out)
    for seed in options.seeds:
        for name in names[1:]:
            extra = {"model": str(shrunk), "model_overrides": []} if name.startswith("shrunk") else {}
            config = recipe(options, teacher, data, seed, name, **extra)
            rows.append(trained_row(name, seed, config, out / "runs" / f"{RUN_DIRS[name]}-seed{seed}", sets,
                                    options, data))
    report = {"teacher": str(teacher), "teacher_arch": arch, "data": str(data), "options": asdict(options),
              "wall_s": time.perf_counter() - started, "rows": rows, "summary": summarise(rows),
              "against_scratch": against_scratch(rows)}
    write_report(report, out)
    plot_tradeoff(report, out / "distill_tradeoff.png")
    return report


def columns(rows: list[dict]) -> tuple[str, ...]:
    return tuple(c for c in (*ACCURACY, "vqa", *COLUMNS[len(ACCURACY):]) if c in rows[0])


def summarise(rows: list[dict]) -> list[dict]:
    """Per row name: the mean and the spread (population std) over seeds of every column, and % of the teacher."""
    teacher = next(r for r in rows if r["row"] == "teacher")
    summary = []
    for name in ROWS:
        group = [r for r in rows if r["row"] == name]
        if not group:
            continue
        entry = {"row": name, "seeds": len(group), "steps": group[0].get("steps")}
        for column in columns(rows):
            values = [r[column] for r in group]
            entry[column] = statistics.fmean(values)
            entry[f"{column}_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
            entry[f"{column}_pct"] = 100 * entry[column] / teacher[column] if teacher[column] else float("nan")
        summary.append(entry)
    return summary


def against_scratch(rows: list[dict]) -> list[dict]:
    """Each trained row's accuracy minus scratch's of the same seed: the mean change, the spread of the change over
    seeds, and whether the change is larger than every spread in sight (either row's over seeds, and the change's
    own): the bar a real gain clears."""
    scratch = {r["seed"]: r for r in rows if r["row"] == "scratch"}
    accuracy = [c for c in columns(rows) if c in (*ACCURACY, "vqa")]
    changes = []
    for name in ROWS[2:]:
        group = [r for r in rows if r["row"] == name and r["seed"] in scratch]
        if not group:
            continue
        entry = {"row": name, "seeds": len(group)}
        for column in accuracy:
            deltas = [r[column] - scratch[r["seed"]][column] for r in group]
            spread = max(statistics.pstdev([r[column] for r in group]) if len(group) > 1 else 0.0,
                         statistics.pstdev([scratch[r["seed"]][column] for r in group]) if len(group) > 1 else 0.0)
            entry[column] = statistics.fmean(deltas)
            entry[f"{column}_std"] = statistics.pstdev(deltas) if len(deltas) > 1 else 0.0
            bar = max(spread, entry[f"{column}_std"])
            entry[f"{column}_beyond_spread"] = len(group) > 1 and abs(entry[column]) > bar
        changes.append(entry)
    return changes


def format_table(report: dict) -> str:
    shown = columns(report["rows"])
    lines = ["| model | seeds | steps | " + " | ".join(HEADERS[c] for c in shown) + " |",
             "|" + "---|" * (len(shown) + 3)]
    for s in report["summary"]:
        cells = []
        for column in shown:
            if math.isnan(s[column]):
                cells.append("-")
                continue
            value = f"{s[column]:,.0f}" if column in COUNTS else f"{s[column]:.1f}"
            counted = column == "params" or column.startswith("mflops")  # the same for every seed
            spread = f" ± {s[column + '_std']:.1f}" if s["seeds"] > 1 and not counted else ""
            percent = "" if math.isnan(s[column + "_pct"]) else f" ({s[column + '_pct']:.0f}%)"
            cells.append(f"{value}{spread}{percent}")
        lines.append(f"| {s['row']} | {s['seeds']} | {s['steps'] or '-'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_changes(report: dict) -> str:
    """The change against scratch, paired by seed: `+1.2 ± 0.4 *`, the star when it clears both rows' spreads."""
    accuracy = [c for c in columns(report["rows"]) if c in (*ACCURACY, "vqa")]
    lines = ["| model - scratch | seeds | " + " | ".join(HEADERS[c] for c in accuracy) + " |",
             "|" + "---|" * (len(accuracy) + 2)]
    for entry in report["against_scratch"]:
        cells = [f"{entry[c]:+.1f} ± {entry[c + '_std']:.1f}{' *' if entry[c + '_beyond_spread'] else ''}"
                 for c in accuracy]
        lines.append(f"| {entry['row']} | {entry['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "report.json", "w") as f:
        f.write(json.dumps(report, indent=1) + "\n")
    cross = ("The teacher is early fusion: scratch is the student without the ranking loss, distilled the student "
             "with it, and the teacher's encode speeds are '-' (it encodes no side alone; it scores pairs). "
             if report["teacher_arch"] == "early_fusion" else "")
    vqa = ("VQA: each model (the teacher too) fine-tuned with the quickstart's VQA recipe, then evaluated. "
           if report["options"]["vqa"] else "")
    text = (f"# Distillation report\n\nteacher {report['teacher']} ({report['teacher_arch']}), data {report['data']} "
            f"(split {report['options']['split']}); recipe {report['options']['recipe']}; seeds "
            f"{list(report['options']['seeds'])}; whole report {report['wall_s']:.0f} s. Each cell: mean (± spread "
            f"over seeds) (% of the teacher). {cross}{vqa}Encode speeds are measured in this one process, one model "
            "after another: compare them within this table only, and on a quiet machine; MFLOPs are counted "
            "(torch's FLOP counter) and no load moves them. MFLOPs/new pair: encode the image and the text, then "
            "score them (the joint stack for early fusion, a dot product for late).\n\n"
            f"{format_table(report)}\n\n## Against scratch\n\nEach row's figure minus the scratch student's of the "
            "same seed: mean ± spread of that change over seeds; * where the change is larger than both rows' own "
            f"spreads over seeds and than its own.\n\n{format_changes(report)}\n\n"
            "![accuracy vs cost](distill_tradeoff.png)\n")
    with atomic_write(out / "report.md", "w") as f:
        f.write(text)
