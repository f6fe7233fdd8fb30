"""`vlm distill-report` (issue 26) on a tiny world: every row, every column, as a percentage of the teacher."""

from __future__ import annotations

import json

import vlm
from data_pipelines import generate_shapes_world
from vlm.distill.report import COLUMNS, ROWS, DistillReportOptions, distill_report


def test_distill_report_writes_every_row_and_column(tmp_path):
    world = tmp_path / "world"
    generate_shapes_world(world, train=32, val=8, test=16, heldout=4, image_size=32, seed=2)
    vlm.create_model("clip-tiny").save(tmp_path / "teacher.pt")
    student = ["image.depth=1", "image.width=16", "image.heads=1", "text.depth=1", "text.width=16", "text.heads=1"]
    options = DistillReportOptions(steps=4, batch_size=8, seeds=(0, 1), num_workers=0,
                                   overrides=("model=clip-tiny", f"model_overrides={json.dumps(student)}",
                                              "data.cache_mb=0", "data.val_samples=0", "warmup_steps=1"))
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
