"""`vlm bench encode|score|train --precision bf16`: both sides at bf16, each also against its own fp32."""

from __future__ import annotations

import json

from vlm.cli import main
from vlm.models.cpu import CPU_CLASSES


def own_speedups(row: dict) -> bool:
    return row["vlm_vs_own_fp32"] > 0 and row["reference_vs_own_fp32"] > 0


def test_bench_encode_and_score_at_bf16(tmp_path, capsys):
    out = tmp_path / "encode.json"
    assert main(["bench", "encode", "--model", "clip-tiny", "--precision", "bf16", "--rounds", "1",
                 "--batch-size", "2", "--texts", "4", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["precision"] == "bf16" and report["cpu_class"] in CPU_CLASSES
    assert all(own_speedups(r) and r["min_cosine"] > 0.99 for r in report["rows"])  # both sides at bf16
    out = tmp_path / "score.json"
    assert main(["bench", "score", "--model", "fusion-tiny", "--precision", "bf16", "--rounds", "1",
                 "--batch-size", "3", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["precision"] == "bf16" and own_speedups(report["rows"][0])
    assert report["rows"][0]["relative_diff"] < 0.05  # the same weights, each side rounding its own way
    assert "bf16 against each side's own fp32" in capsys.readouterr().out


def test_bench_train_at_bf16_keeps_the_losses_within_tolerance(tmp_path):
    out = tmp_path / "train.json"
    assert main(["bench", "train", "--clip-model", "clip-tiny", "--clip-batch", "8", "--fusion-model", "fusion-tiny",
                 "--fusion-batch", "8", "--rounds", "1", "--precision", "bf16", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["precision"] == "bf16" and report["cpu_class"] in CPU_CLASSES
    for row in report["rows"]:
        assert row["losses_equal"] and own_speedups(row)
