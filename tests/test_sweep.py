"""`vlm sweep`: a grid of sizes x steps for both families end to end on tiny models, resumption after a stop
(finished points are not rerun), and the threshold computation on hand-made curves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from vlm.cli import main
from vlm.sweep.config import grid_points, load_sweep_config
from vlm.sweep.report import build_report, render_markdown
from vlm.sweep.thresholds import CurvePoint, curve, threshold, threshold_table

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "sweep" / "shapes.yaml"


def tiny_sweep(root: Path) -> Path:
    """The real sweep file, shrunk: two tiny sizes x two step counts on a tiny world."""
    config = yaml.safe_load(RECIPE.read_text())
    config.update(
        data_dir=str(root / "world"), out_dir=str(root / "sweep"), late_model="clip-tiny", early_model="fusion-tiny",
        shapes={"train": 32, "val": 8, "test": 0, "heldout": 8, "image_size": 32, "seed": 0, "classify_per_class": 1},
        sizes=[{"name": "a", "width": 16, "depth": 1, "heads": 1}, {"name": "b", "width": 32, "depth": 1, "heads": 2}],
        steps=[1, 2], batch_size=8, max_retrieval_images=6, hybrid_k=2, negatives_at_largest=False,
        vqa_probe={"train_questions": 32, "steps": 3, "batch_size": 16})
    for family in ("late", "early"):
        config[family]["data"] = {"num_workers": 0, "val_samples": 8}
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine its spinning made this test 10x
    slower (measured: one evaluation 18 s with 2 threads, 1.2 s with 1, load average 10 on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sweep_runs_the_grid_resumes_after_a_stop_and_reports(tmp_path, one_thread):
    path = tiny_sweep(tmp_path)
    out = tmp_path / "sweep"
    assert main(["sweep", "--config", str(path), "--max-points", "2"]) == 0  # stopped after two points
    first = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["point"] for r in first} == {"a-1", "b-1"}
    assert {r["family"] for r in first} == {"late", "early", "hybrid"}
    checkpoints = sorted((out / "runs").glob("*/checkpoint.pt"))
    stamps = {p: p.stat().st_mtime_ns for p in checkpoints}

    assert main(["sweep", "--config", str(path)]) == 0  # continues: only the two missing points train
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert rows[: len(first)] == first
    assert sorted(r["point"] for r in rows if r["family"] == "late") == ["a-1", "a-2", "b-1", "b-2"]
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # finished runs were not touched
    assert len(list((out / "runs").glob("*/checkpoint.pt"))) == 8

    late_a = {r["steps"]: r for r in rows if r["family"] == "late" and r["size"] == "a"}
    assert late_a[2]["train_flops"] == pytest.approx(2 * late_a[1]["train_flops"])  # same batch, twice the steps
    hybrid = next(r for r in rows if r["family"] == "hybrid")
    for split in ("val", "heldout"):
        late = late_a[1]["metrics"][split]
        assert {"retrieval/t2i_r1", "vqa", "compositional"} <= set(late)
        assert {f"vqa/{f}" for f in ("exist", "count", "query_color", "query_shape", "query_size", "relation")} \
            <= set(late)
        assert any(a.startswith("compositional/") for a in late)
        assert set(late) == set(late_a[1]["baselines"][split])
        assert set(hybrid["metrics"][split]) == {"retrieval/t2i_r1", "retrieval/i2t_r1"}
    report = json.loads((out / "report.json").read_text())
    assert set(report["thresholds"]) == {"val", "heldout"}
    assert (out / "abilities_val.png").is_file() and (out / "abilities_heldout.png").is_file()
    assert "## Thresholds" in (out / "report.md").read_text()


def test_threshold_is_the_cheapest_point_clear_of_its_baseline_by_the_margin():
    compute = [1e9, 2e9, 4e9, 8e9]
    assert threshold(list(zip(compute, [50, 52, 60, 70], [50] * 4, strict=True)), margin=5) == 4e9
    assert threshold(list(zip(compute, [50, 52, 54, 55], [50] * 4, strict=True)), margin=5) == 8e9  # exactly 5
    assert threshold(list(zip(compute, [50, 52, 54, 54.9], [50] * 4, strict=True)), margin=5) is None
    # each point against its own baseline (an image-zeroed model moves with the model)
    assert threshold(list(zip(compute, [60, 60, 60, 60], [58, 56, 54, 50], strict=True)), margin=5) == 4e9
    # sizes interleave on the compute axis: the cheapest clearing point wins, whatever its order in the list
    assert threshold([(8e9, 70, 50), (1e9, 49, 50), (3e9, 56, 50)], margin=5) == 3e9


def hand_made_rows() -> list[dict]:
    def row(family, size, steps, flops, value, negatives=False):
        return {"point": f"{size}-{steps}", "family": family, "size": size, "width": 8, "depth": 1, "steps": steps,
                "negatives": negatives, "train_flops": flops, "train_wall_s": 1.0, "eval_wall_s": 1.0,
                "metrics": {"val": {"compositional": value, "compositional/relation swap": value}},
                "baselines": {"val": {"compositional": 50.0, "compositional/relation swap": 50.0}}}

    return [row("late", "s", 10, 1e9, 52), row("late", "s", 20, 2e9, 58), row("late", "m", 10, 3e9, 70),
            row("early", "s", 10, 2e9, 50), row("early", "s", 20, 4e9, 51),
            row("early", "s", 20, 4e9, 61, negatives=True), row("late", "s", 20, 2e9, 66, negatives=True)]


def test_threshold_table_and_report_from_hand_made_rows():
    rows = hand_made_rows()
    assert curve(rows, "late", "val", "compositional") == [
        CurvePoint(1e9, 52, 50.0, "s", 10), CurvePoint(2e9, 58, 50.0, "s", 20), CurvePoint(3e9, 70, 50.0, "m", 10)]
    table = threshold_table(rows, ["val"], margin=5)
    assert table["val"]["compositional"] == {"late": 2e9, "early": None}  # negatives points left out
    config = load_sweep_config(RECIPE, ["splits=[val]", "margin=5"])
    report = build_report(config, rows)
    assert report["negatives"]["early"]["splits"]["val"]["compositional"] == {"without": 51, "with": 61,
                                                                              "blind": 50.0}
    text = render_markdown(report, [])
    assert "| `compositional` | 2.00e+09 | not reached |  |" in text
    assert "## Compositional hard negatives" in text


def test_default_grid_is_three_sizes_by_three_steps_plus_negatives_at_the_largest():
    config = load_sweep_config(RECIPE)
    points = grid_points(config)
    assert len(points) == 3 * 3 + 1
    assert points[-1].negatives and points[-1].size == config.sizes[-1] and points[-1].steps == max(config.steps)


def test_bad_sweep_config_is_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"sizes": [{"name": "a", "width": 30, "depth": 1, "heads": 4}], "steps": [1]}))
    assert main(["sweep", "--config", str(path)]) == 2
    assert "width 30 is not divisible by heads 4" in capsys.readouterr().err
