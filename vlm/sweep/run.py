"""`run_sweep(config)`: train both families at every grid point, evaluate them, keep one JSONL row per family
and point, and write the report. A point already in results.jsonl (same recipes and evaluation) is reused, so
a sweep stopped part way, or grown with more sizes or steps, continues where it was; a training run stopped
part way resumes from its checkpoint (`vlm train --resume auto`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn

from data_pipelines.shapes import generate_shapes_world
from vlm.atomic_io import atomic_write
from vlm.config import to_dict
from vlm.eval.cost import count_training_flops
from vlm.models import count_parameters, load_model
from vlm.sweep.config import Point, SweepConfig, evaluation_settings, fingerprint, grid_points, train_recipe
from vlm.sweep.evaluate import FAMILIES, PointEvaluator
from vlm.tokenizer import get_tokenizer
from vlm.train.config import TrainConfig
from vlm.train.data import ResumableBatchSampler, make_collator, open_split, with_hard_negatives
from vlm.train.run import train
from vlm.train.tasks import build_task

RESULTS_NAME = "results.jsonl"


def read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_results(path: Path, rows: list[dict]) -> None:
    """The whole file, atomically: a sweep killed while writing keeps the previous rows."""
    with atomic_write(path, "w") as f:
        f.writelines(json.dumps(row, sort_keys=True) + "\n" for row in rows)


def ensure_world(config: SweepConfig) -> Path:
    data_dir = Path(config.data_dir)
    if not (data_dir / "world.json").is_file():
        generate_shapes_world(data_dir, **to_dict(config.shapes))
    return data_dir


def step_flops(model: nn.Module, recipe: TrainConfig) -> int:
    """FLOPs of one training step (forward + backward, torch's FlopCounterMode) on the run's first batch."""
    dataset = open_split(recipe.data.train, recipe.data.train_split, recipe.objective, model.config, augment=False,
                         options=recipe.data.train_source_options())
    first = next(iter(ResumableBatchSampler(len(dataset), recipe.batch_size, recipe.seed)))
    collate = with_hard_negatives(make_collator(get_tokenizer(model), (), recipe.data.pad_to_longest), recipe)
    batch = collate([dataset[i] for i in first])
    task = build_task(model, recipe.objective, recipe).train()
    flops = count_training_flops(lambda: task(batch, 0)[0])
    model.zero_grad(set_to_none=True)
    return flops


def train_family(config: SweepConfig, family: str, point: Point) -> tuple[nn.Module, dict]:
    """Train (or resume, or reuse) one family's run at `point`; the model and its cost."""
    recipe = train_recipe(config, family, point)
    run_dir = Path(config.out_dir) / "runs" / f"{family}-{point.key}-{fingerprint(recipe)}"
    started = time.perf_counter()
    checkpoint = train(recipe, run_dir, resume="auto")
    wall = time.perf_counter() - started
    model = load_model(checkpoint)
    flops = step_flops(model, recipe)
    model.eval()
    return model, {"run": str(run_dir), "parameters": count_parameters(model), "step_flops": flops,
                   "train_flops": flops * recipe.steps, "train_wall_s": wall}


def point_rows(point: Point, costs: dict[str, dict], results: dict[str, dict], eval_wall: float,
               key: str) -> list[dict]:
    common = {"point": point.key, "fingerprint": key, "size": point.size.name, "width": point.size.width,
              "depth": point.size.depth, "steps": point.steps, "negatives": point.negatives,
              "eval_wall_s": eval_wall}
    rows = [{**common, "family": f, **costs[f], **results[f]} for f in FAMILIES]
    hybrid_cost = {k: sum(costs[f][k] for f in FAMILIES) for k in ("parameters", "train_flops", "train_wall_s")}
    rows.append({**common, "family": "hybrid", **hybrid_cost, **results["hybrid"]})
    return rows


def run_point(config: SweepConfig, point: Point, evaluator: PointEvaluator, key: str) -> list[dict]:
    models, costs = {}, {}
    for family in FAMILIES:
        models[family], costs[family] = train_family(config, family, point)
    started = time.perf_counter()
    with torch.no_grad():
        results = evaluator.evaluate(models["late"], models["early"])
    return point_rows(point, costs, results, time.perf_counter() - started, key)


def point_fingerprint(config: SweepConfig, point: Point) -> str:
    return fingerprint(*(train_recipe(config, f, point) for f in FAMILIES), evaluation_settings(config))


def run_sweep(config: SweepConfig, max_new_points: int | None = None, report: bool = True) -> list[dict]:
    """Run every grid point not yet in the results (at most `max_new_points` of them), then write the report.
    Returns the rows of the grid's points."""
    from vlm.sweep.report import write_report

    started = time.perf_counter()
    ensure_world(config)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_NAME
    rows = read_results(path)
    done = {row["fingerprint"] for row in rows}
    evaluator, new = None, 0
    for point in grid_points(config):
        key = point_fingerprint(config, point)
        if key in done:
            continue
        if max_new_points is not None and new >= max_new_points:
            print(f"sweep: stopping after {new} new point(s), as asked; run again to continue")
            break
        print(f"sweep: point {point.key}")
        evaluator = evaluator or PointEvaluator(config)
        rows += run_point(config, point, evaluator, key)
        write_results(path, rows)
        done.add(key)
        new += 1
    wanted = {point_fingerprint(config, p) for p in grid_points(config)}
    current = [row for row in rows if row["fingerprint"] in wanted]
    if report:
        write_report(config, current, out, wall_s=time.perf_counter() - started)
    return current
