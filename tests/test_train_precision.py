"""`vlm train --precision`: bf16 under CPU autocast with float32 losses, recorded with the run; int8 refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from data_pipelines import generate_shapes_world
from vlm.cli import main
from vlm.models.checkpoint import read_checkpoint
from vlm.models.cpu import CPU_CLASSES
from vlm.models.precision import autocast
from vlm.tokenizer import get_tokenizer, padding_mask
from vlm.train.tasks import build_task

LOSS_TOLERANCE = 0.05  # relative: bf16's 8-bit mantissa on tiny models over 10 steps


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes_world(root, train=48, val=16, test=8, heldout=8, image_size=32, seed=1)
    return root


def write_recipe(shapes: Path, tmp_path: Path, model: str = "clip-tiny", objective: str = "clip") -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"model": model, "objective": objective, "steps": 10, "batch_size": 8,
                                    "warmup_steps": 2, "save_every": 10, "eval_every": 1000, "log_every": 1,
                                    "data": {"train": str(shapes), "num_workers": 0, "val_samples": 16}}))
    return path


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


@pytest.mark.parametrize(("model", "objective"), [("clip-tiny", "clip"), ("fusion-tiny", "fusion")])
def test_bf16_training_is_recorded_and_tracks_fp32(shapes, tmp_path, model, objective):
    recipe = write_recipe(shapes, tmp_path, model, objective)
    for precision in ("fp32", "bf16"):
        assert main(["train", "--config", str(recipe), "--precision", precision,
                     "--out", str(tmp_path / precision)]) == 0
        run = yaml.safe_load((tmp_path / precision / "config.yaml").read_text())
        assert run["train"]["precision"] == precision and run["run"]["precision"] == precision
        assert run["run"]["cpu_class"] in CPU_CLASSES
        assert read_checkpoint(tmp_path / precision)["run"]["precision"] == precision
    fp32, bf16 = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert len(fp32) == len(bf16) == 10 and fp32 != bf16  # bf16 really ran
    for a, b in zip(fp32, bf16, strict=True):
        assert abs(a - b) <= LOSS_TOLERANCE * abs(a), (fp32, bf16)


def test_auto_is_resolved_in_the_run_config(shapes, tmp_path):
    assert main(["train", "--config", str(write_recipe(shapes, tmp_path)), "--precision", "auto", "--set", "steps=2",
                 "--out", str(tmp_path / "run")]) == 0
    run = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert run["train"]["precision"] == "auto" and run["run"]["precision"] in ("fp32", "bf16")


def test_int8_training_is_refused_in_one_line(shapes, tmp_path, capsys):
    assert main(["train", "--config", str(write_recipe(shapes, tmp_path)), "--precision", "int8",
                 "--out", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err.strip()
    assert "int8 is for inference" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(("model", "objective"), [("clip-tiny", "clip"), ("fusion-tiny", "fusion")])
def test_under_bf16_the_loss_and_logits_are_float32(shapes, model, objective):
    import vlm

    net = vlm.create_model(model)
    task = build_task(net, objective, type("C", (), {"mlm_weight": 1.0, "mlm_probability": 0.15, "seed": 0,
                                                     "itm_negative_temperature": 1.0})())
    captions = ["a red circle", "a blue square", "a green triangle", "a red square"]
    tok = get_tokenizer(net)
    ids = tok(captions)
    batch = {"images": torch.randn(4, 3, 32, 32), "text": ids, "text_mask": padding_mask(ids, tok.pad_id),
             "image_ids": [str(i) for i in range(4)], "captions": captions}
    with autocast("bf16"):
        loss, _ = task(batch)
        if objective == "clip":
            out = net(batch["images"], ids)
            assert out["logit_scale"].dtype == torch.float32
    assert loss.dtype == torch.float32
