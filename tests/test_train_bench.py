"""`vlm bench train` on tiny models: both families time the trainer's step against their reference, and the
losses of the two sides on the same weights and batch agree."""

from __future__ import annotations

import json

import pytest
import torch

import vlm
from vlm.bench.train import shapes_batch
from vlm.bench.train_reference import TodaysFusionStep
from vlm.cli import main
from vlm.train.config import TrainConfig
from vlm.train.tasks import build_task


def test_bench_train_reports_both_families_with_equal_losses(tmp_path, capsys):
    out = tmp_path / "train.json"
    assert main(["bench", "train", "--clip-model", "clip-tiny", "--clip-batch", "8", "--fusion-model", "fusion-tiny",
                 "--fusion-batch", "8", "--rounds", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    late, early = report["rows"]
    assert late["reference_name"] == "OpenCLIP" and early["reference_name"] == "today's fusion step"
    for row in (late, early):
        assert row["losses_equal"] and row["vlm_loss"] == pytest.approx(row["reference_loss"], rel=1e-5)
        assert row["vlm"]["items_per_s"] > 0 and row["reference"]["items_per_s"] > 0 and row["ratio"] > 0
        assert row["vlm"]["gflops"] > 0
    # MLM logits at the masked positions only: far less work than today's step at every position
    assert early["vlm"]["gflops"] < early["reference"]["gflops"] / 2
    assert "| fusion-tiny step, batch 8, MLM weight 1 | today's fusion step |" in capsys.readouterr().out


def test_the_fusion_task_gradients_equal_todays_step(tmp_path):
    torch.manual_seed(0)
    model = vlm.create_model("fusion-tiny")
    config = TrainConfig(model="fusion-tiny", objective="fusion", batch_size=6, mlm_weight=0.5, mlm_probability=0.5)
    batch = shapes_batch(model, "fusion", 6, 0, tmp_path / "shapes")
    today = TodaysFusionStep(vlm.create_model("fusion-tiny"), config)
    today.model.load_state_dict(model.state_dict())
    build_task(model, "fusion", config)(batch, 3)[0].backward()
    today.loss(batch, 3).backward()
    for (name, ours), theirs in zip(model.named_parameters(), today.model.parameters(), strict=True):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-6, msg=name)
