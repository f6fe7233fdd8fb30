"""The sweep's grid and recipes: one frozen dataclass, loaded from configs/sweep/*.yaml with `--set key=value`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from data_pipelines.shapes import ShapesConfig
from vlm.config import ConfigError, apply_overrides, from_dict, read_yaml, to_dict
from vlm.train.config import HardNegativesConfig, TrainConfig


@dataclass(frozen=True)
class SizeConfig:
    """One model size, the same for both families: the late model's two towers and the early model's one
    stack each get this width, depth and number of heads."""

    name: str
    width: int
    depth: int
    heads: int


@dataclass(frozen=True)
class ProbeConfig:
    """The VQA probe: a fresh VQA head trained on the frozen model's features (see probe.py)."""

    train_questions: int = 3000  # the first N training questions (about N / 6 images)
    steps: int = 300
    batch_size: int = 256
    lr: float = 1.0e-3
    max_answers: int = 500


@dataclass(frozen=True)
class SweepConfig:
    data_dir: str = "data/shapes-sweep"
    out_dir: str = "runs/sweep"
    shapes: ShapesConfig = field(default_factory=ShapesConfig)  # drawn into data_dir when it has no world
    late_model: str = "clip-small"  # base model configs; each size overrides width, depth and heads
    early_model: str = "fusion-small"
    sizes: tuple[SizeConfig, ...] = ()
    steps: tuple[int, ...] = ()
    # Shared by both families, so every run sees the same batches in the same order.
    batch_size: int = 32
    seed: int = 0
    warmup_fraction: float = 0.1
    late: dict = field(default_factory=dict)  # TrainConfig fields of the late family (objective, lr, ...)
    early: dict = field(default_factory=dict)
    negatives: HardNegativesConfig = field(default_factory=lambda: HardNegativesConfig(enabled=True))
    negatives_at_largest: bool = True  # also train both families with `negatives` at the largest size and steps
    splits: tuple[str, ...] = ("val", "heldout")
    max_retrieval_images: int = 64  # exhaustive early fusion is quadratic: the first N images and their captions
    hybrid_k: int = 8
    vqa_probe: ProbeConfig = field(default_factory=ProbeConfig)
    margin: float = 5.0  # points above the blind baseline that count as "has the ability"

    def __post_init__(self):
        if not self.sizes or not self.steps:
            raise ConfigError("a sweep needs at least one size and one step count (sizes: [...], steps: [...])")
        if len({s.name for s in self.sizes}) != len(self.sizes):
            raise ConfigError(f"sizes need distinct names, got {[s.name for s in self.sizes]}")
        for s in self.sizes:
            if s.width % s.heads:
                raise ConfigError(f"sizes: {s.name}: width {s.width} is not divisible by heads {s.heads}")


@dataclass(frozen=True)
class Point:
    """One cell of the grid: a size, a number of steps, with or without hard negatives."""

    size: SizeConfig
    steps: int
    negatives: bool = False

    @property
    def key(self) -> str:
        return f"{self.size.name}-{self.steps}" + ("-negatives" if self.negatives else "")


def grid_points(config: SweepConfig) -> list[Point]:
    """Cheapest first (steps, then size), so a sweep stopped early already spans the compute axis."""
    points = [Point(size, steps) for steps in sorted(config.steps) for size in config.sizes]
    if config.negatives_at_largest:
        points.append(Point(config.sizes[-1], max(config.steps), negatives=True))
    return points


def model_overrides(family: str, size: SizeConfig) -> list[str]:
    if family == "late":
        return [f"name=clip-{size.name}", f"embed_dim={size.width}"] + [
            f"{tower}.{k}={v}" for tower in ("image", "text")
            for k, v in (("width", size.width), ("depth", size.depth), ("heads", size.heads))]
    return [f"name=fusion-{size.name}", f"width={size.width}", f"depth={size.depth}", f"heads={size.heads}"]


def train_recipe(config: SweepConfig, family: str, point: Point) -> TrainConfig:
    """The training recipe of one family at one point: its family's fields, the point's size and steps, and
    what both families share (data, batch size, seed, warm-up fraction)."""
    recipe = dict(getattr(config, family))
    data = {"num_workers": 1, "val_samples": 100, **recipe.pop("data", {}), "train": config.data_dir}
    recipe.update(
        model=config.late_model if family == "late" else config.early_model,
        model_overrides=model_overrides(family, point.size), data=data, steps=point.steps,
        batch_size=config.batch_size, seed=config.seed,
        warmup_steps=max(1, round(config.warmup_fraction * point.steps)),
        save_every=recipe.get("save_every", max(1, point.steps // 2)), eval_every=point.steps,
        log_every=recipe.get("log_every", max(1, point.steps // 20)),
        hard_negatives=to_dict(config.negatives) if point.negatives else {"enabled": False})
    return from_dict(TrainConfig, recipe, where=f"sweep: {family}")


def fingerprint(*parts) -> str:
    """A short hash of plain data: a run folder or a result is reused only when its recipe is unchanged."""
    text = json.dumps([p if isinstance(p, (dict, list, str, int, float)) else to_dict(p) for p in parts],
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def evaluation_settings(config: SweepConfig) -> dict:
    return {"splits": list(config.splits), "max_retrieval_images": config.max_retrieval_images,
            "hybrid_k": config.hybrid_k, "vqa_probe": dataclasses.asdict(config.vqa_probe),
            "shapes": dataclasses.asdict(config.shapes)}


def load_sweep_config(path: str | Path, overrides: list[str] | None = None) -> SweepConfig:
    data = apply_overrides(read_yaml(path), overrides or [])
    return from_dict(SweepConfig, data, where=str(path))
