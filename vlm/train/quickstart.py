"""The quickstart: shapes world -> train both families -> fine-tune both for VQA -> compare. CPU, minutes.

Each stage is a normal recipe (configs/train/quickstart.yaml holds all of them), so what the
quickstart does is what `vlm train` does; the run folders stay for `vlm eval` and `vlm serve`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from data_pipelines.shapes import ShapesConfig, generate_shapes_world
from vlm.config import apply_overrides, from_dict, read_yaml
from vlm.train.config import TrainConfig
from vlm.train.run import train


@dataclass(frozen=True)
class QuickstartConfig:
    data_dir: str = "data/shapes"
    out_dir: str = "runs/quickstart"
    shapes: ShapesConfig = field(default_factory=ShapesConfig)  # the world `vlm data shapes` would draw
    stages: dict[str, TrainConfig] = field(default_factory=dict)  # run name -> recipe, in order


def load_quickstart_config(path: str | Path, overrides: list[str] | None = None) -> QuickstartConfig:
    data = apply_overrides(read_yaml(path), overrides or [])
    stages = data.pop("stages", {})
    config = from_dict(QuickstartConfig, data, where=str(path))
    parsed = {name: from_dict(TrainConfig, recipe, where=f"{path}: stages.{name}") for name, recipe in stages.items()}
    return QuickstartConfig(config.data_dir, config.out_dir, config.shapes, parsed)


def ensure_shapes_world(config: QuickstartConfig) -> Path:
    data_dir = Path(config.data_dir)
    if (data_dir / "pairs_train.csv").is_file():
        print(f"shapes world: reusing {data_dir}")
        return data_dir
    started = time.perf_counter()
    generate_shapes_world(data_dir, **dataclasses.asdict(config.shapes))
    print(f"shapes world: wrote {data_dir} in {time.perf_counter() - started:.0f} s")
    return data_dir


def run_quickstart(config: QuickstartConfig) -> dict:
    started = time.perf_counter()
    ensure_shapes_world(config)
    out = Path(config.out_dir)
    checkpoints = {}
    for name, recipe in config.stages.items():
        stage_started = time.perf_counter()
        checkpoints[name] = train(recipe, out / name, resume="auto")
        print(f"{name}: {checkpoints[name]} ({time.perf_counter() - stage_started:.0f} s)")
    summary = compare_quickstart(config, out)
    print(f"quickstart finished in {(time.perf_counter() - started) / 60:.1f} min; run folders in {out}/")
    return summary


def compare_quickstart(config: QuickstartConfig, out: Path) -> dict:
    from vlm.eval.compare import compare, format_summary_table

    # Retrieval and compositional use the pre-trained runs; VQA their `<run>-vqa` fine-tunes.
    report = compare(out / "clip-small", out / "fusion-small", config.data_dir, out / "compare")
    print(format_summary_table(report))
    return report
