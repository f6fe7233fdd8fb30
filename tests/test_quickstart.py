"""`vlm quickstart` end to end: the real recipe file, shrunk to tiny models, a tiny world and a few steps."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from vlm.cli import main

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "train" / "quickstart.yaml"
TINY = {"clip-small": "clip-tiny", "fusion-small": "fusion-tiny"}


def shrink(recipe: dict, root: Path) -> dict:
    """The quickstart recipe with every stage kept, each a few steps of a tiny model, all paths under root."""
    recipe.update(data_dir=str(root / "shapes"), out_dir=str(root / "runs"),
                  shapes={"train": 40, "val": 12, "test": 4, "heldout": 8, "image_size": 32, "seed": 0,
                          "classify_per_class": 1})
    for stage in recipe["stages"].values():
        model = stage["model"]
        stage["model"] = TINY.get(model) or str(root / "runs" / Path(model).parent.name / "checkpoint.pt")
        stage["data"].update(train=str(root / "shapes"), num_workers=0, val_samples=12)
        stage.update(steps=3, batch_size=8, warmup_steps=1, save_every=3, eval_every=3, log_every=1)
    return recipe


def test_quickstart_trains_four_runs_and_writes_the_comparison(tmp_path):
    recipe = shrink(yaml.safe_load(RECIPE.read_text()), tmp_path)
    assert list(recipe["stages"]) == ["clip-small", "fusion-small", "clip-small-vqa", "fusion-small-vqa"]
    (tmp_path / "quickstart.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))

    assert main(["quickstart", "--config", str(tmp_path / "quickstart.yaml")]) == 0

    runs = tmp_path / "runs"
    for stage in recipe["stages"]:
        assert (runs / stage / "checkpoint.pt").is_file(), stage
    report = json.loads((runs / "compare" / "report.json").read_text())
    assert report["setup"]["late_vqa_checkpoint"] == str(runs / "clip-small-vqa" / "checkpoint.pt")
    assert report["setup"]["early_vqa_checkpoint"] == str(runs / "fusion-small-vqa" / "checkpoint.pt")
    assert {"late", "early", "early_image_zeroed", "question_only"} <= set(report["vqa"])
    assert "| retrieval T→I R@1 % |" in (runs / "compare" / "report.md").read_text()
