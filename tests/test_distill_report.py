"""`vlm distill-report` (issue 26) on a tiny world: every row, every column, as a percentage of the teacher."""

from __future__ import annotations

import json

import pytest

import vlm
from data_pipelines import generate_shapes_world
from vlm.distill.report import COLUMNS, CROSS_FAMILY_ROWS, ROWS, DistillReportOptions, against_scratch, distill_report

STUDENT = ["image.depth=1", "image.width=16", "image.heads=1", "text.depth=1", "text.width=16", "text.heads=1"]
TINY = ("model=clip-tiny", f"model_overrides={json.dumps(STUDENT)}", "data.cache_mb=0", "data.val_samples=0",
        "warmup_steps=1")


def test_distill_report_writes_every_row_and_column(tmp_path):
    world = tmp_path / "world"
    generate_shapes_world(world, train=32, val=8, test=16, heldout=4, image_size=32, seed=2)
    vlm.create_model("clip-tiny").save(tmp_path / "teacher.pt")
    options = DistillReportOptions(steps=4, batch_size=8, seeds=(0, 1), num_workers=0, overrides=TINY)
    report = distill_report(tmp_path / "teacher.pt", world, tmp_path / "report", options)
    assert [s["row"] for s in report["summary"]] == list(ROWS)
    teacher = report["summary"][0]
    assert all(abs(teacher[f"{c}_pct"] - 100) < 1e-9 or teacher[c] == 0 for c in COLUMNS)
    students = report["summary"][1:]
    assert all(s["seeds"] == 2 and s["params"] < teacher["params"] for s in students)
    assert students[-1]["steps"] == 2  # shrink-then-distil at half the steps
    text = (tmp_path / "report" / "report.md").read_text()
    assert "shrunk+distilled" in text and "images/s" in text and "MFLOPs/image" in text and "% of the teacher" in text
    assert (tmp_path / "report" / "distill_tradeoff.png").stat().st_size > 0
    assert json.loads((tmp_path / "report" / "report.json").read_text())["rows"][0]["row"] == "teacher"
    assert [c["row"] for c in report["against_scratch"]] == list(ROWS[2:])
    shrunk = (tmp_path / "report" / "runs" / "shrunk-seed0" / "config.yaml").read_text()
    assert "objective: clip" in shrunk and "shrunk.pt" in shrunk  # the teacher's weights without its outputs

    # Run again (as after a stop part-way): every trained row is read back, not trained again.
    checkpoint = tmp_path / "report" / "runs" / "distilled-seed1" / "checkpoint.pt"
    trained_at = checkpoint.stat().st_mtime_ns
    again = distill_report(tmp_path / "teacher.pt", world, tmp_path / "report", options)
    assert checkpoint.stat().st_mtime_ns == trained_at
    assert [r["zeroshot"] for r in again["rows"][1:]] == [r["zeroshot"] for r in report["rows"][1:]]

    # A damaged saved row is trained again, not a crash.
    (tmp_path / "report" / "runs" / "distilled-seed1.json").write_text('{"key": {"config"')
    distill_report(tmp_path / "teacher.pt", world, tmp_path / "report", options)
    assert checkpoint.stat().st_mtime_ns != trained_at
    assert "## Against scratch" in text and "model - scratch" in text


def test_distill_report_from_an_early_fusion_teacher_compares_the_ranking_loss_and_fine_tunes_for_vqa(tmp_path):
    """Cross-family: the late-fusion student with the ranking loss (distilled) and without (scratch); VQA column."""
    world = tmp_path / "world"
    generate_shapes_world(world, train=32, val=8, test=16, heldout=4, image_size=32, seed=2)
    vlm.create_model("fusion-tiny").save(tmp_path / "teacher.pt")
    options = DistillReportOptions(steps=3, batch_size=8, seeds=(0,), num_workers=0, overrides=TINY, vqa=True,
                                   vqa_steps=2)
    report = distill_report(tmp_path / "teacher.pt", world, tmp_path / "report", options)
    assert report["options"]["recipe"].endswith("distill-fusion.yaml") and report["teacher_arch"] == "early_fusion"
    assert [s["row"] for s in report["summary"]] == list(CROSS_FAMILY_ROWS)
    teacher, scratch, distilled = report["summary"]
    assert all(0 <= s["vqa"] <= 100 for s in report["summary"])
    assert teacher["mflops_pair"] > distilled["mflops_pair"] > 0
    config = (tmp_path / "report" / "runs" / "distilled-seed0" / "config.yaml").read_text()
    assert "ranking_weight: 1.0" in config
    assert "objective: clip" in (tmp_path / "report" / "runs" / "scratch-seed0" / "config.yaml").read_text()
    assert (tmp_path / "report" / "runs" / "distilled-seed0-vqa" / "checkpoint.pt").is_file()
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| VQA |" in text and "early_fusion" in text and "| teacher | 1 | - | " in text


def test_against_scratch_pairs_by_seed_and_marks_changes_beyond_the_spread():
    def row(name, seed, zeroshot, t2i):
        return {"row": name, "seed": seed, "zeroshot": zeroshot, "t2i_r1": t2i, "i2t_r1": 50.0,
                "compositional": 60.0, "params": 1}

    rows = [{**row("teacher", None, 30, 90), "params": 3},
            row("scratch", 0, 20, 70), row("scratch", 1, 22, 80), row("scratch", 2, 24, 75),
            row("distilled", 0, 25, 71), row("distilled", 1, 27, 79), row("distilled", 2, 29, 76)]
    change = against_scratch(rows)[0]
    assert change["row"] == "distilled" and change["zeroshot"] == pytest.approx(5.0) and change["zeroshot_std"] == 0
    assert change["zeroshot_beyond_spread"]  # +5 against spreads of 1.6 over seeds
    assert change["t2i_r1"] == pytest.approx(1 / 3) and not change["t2i_r1_beyond_spread"]  # +0.3 against 4.1
    assert not change["i2t_r1_beyond_spread"]  # no change at all
    rows += [row("shrunk", 0, 25, 70), row("shrunk", 1, 22, 80), row("shrunk", 2, 25, 75)]
    noisy = against_scratch(rows)[1]  # +2 on average, but +5, 0, +1 by seed: the change's own spread (2.2) is larger
    assert noisy["zeroshot"] == pytest.approx(2.0) and not noisy["zeroshot_beyond_spread"]
