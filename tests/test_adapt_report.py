"""The shifted shapes world, the linear probe and the adaptation report, end to end on tiny models."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

import vlm
from data_pipelines import generate_shapes_world
from vlm.cli import main

WORLD = dict(train=40, val=16, test=16, heldout=0, image_size=32, seed=3, classify_per_class=2)


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("worlds")
    generate_shapes_world(root / "source", **WORLD)
    assert main(["data", "shapes", "--out", str(root / "target"), "--style", "outline", "--train", "40", "--val",
                 "16", "--test", "16", "--heldout", "0", "--image-size", "32", "--seed", "3"]) == 0
    return root / "source", root / "target"


def test_a_style_draws_the_same_scenes_differently_and_the_default_is_unchanged(worlds, tmp_path):
    source, _ = worlds
    styled = generate_shapes_world(tmp_path / "pastel", style="pastel", **WORLD)
    explicit = generate_shapes_world(tmp_path / "default", style="default", **WORLD)
    assert digest(explicit) == digest(source)  # style="default" is the world as it always was
    a, b = digest(source), digest(styled)
    assert a.keys() == b.keys()
    assert a["pairs_train.csv"] == b["pairs_train.csv"] and a["vqa_val_annotations.json"] == b[
        "vqa_val_annotations.json"]  # same scenes, captions and answers
    assert a["images/train/000000.png"] != b["images/train/000000.png"]
    assert json.loads((styled / "world.json").read_text())["style"] == "pastel"
    assert "style" not in json.loads((source / "world.json").read_text())


def test_the_default_style_draws_the_same_pixels_as_before_styles_existed(tmp_path):
    """Pixels of every image of a small default world, hashed: the value the code before `--style` gave
    (the PNG bytes themselves depend on the zlib build, the pixels only on the drawing)."""
    root = generate_shapes_world(tmp_path, train=6, val=2, test=2, heldout=2, image_size=16, seed=7)
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(str(p.relative_to(root)).encode())
        h.update(Image.open(p).convert("RGB").tobytes())
    assert h.hexdigest() == "bfa355e7370f0ff369f7593b29e2468967e17f6ab5e97d7b7f973acbf6a193af"


def test_linear_probe_scores_each_shot_count_with_c_chosen_on_val(worlds, tmp_path, capsys):
    source, _ = worlds
    vlm.create_model("clip-tiny").save(tmp_path / "m.pt")
    assert main(["eval", "linear-probe", "--checkpoint", str(tmp_path / "m.pt"), "--data", str(source),
                 "--shots", "1,2", "--json", str(tmp_path / "probe.json")]) == 0
    result = json.loads((tmp_path / "probe.json").read_text())
    assert [r["shots"] for r in result["results"]] == [1, 2]
    classes_seen = result["results"][0]["train_images"]
    assert result["results"][1]["train_images"] == 2 * classes_seen
    assert all(0 <= r["acc1"] <= 100 and r["C"] > 0 for r in result["results"])


def test_linear_probe_refuses_an_early_fusion_model(worlds, tmp_path, capsys):
    vlm.create_model("fusion-tiny").save(tmp_path / "f.pt")
    assert main(["eval", "linear-probe", "--checkpoint", str(tmp_path / "f.pt"), "--data", str(worlds[0])]) == 2
    assert "early fusion" in capsys.readouterr().err


def test_wise_ft_curve_evaluates_every_alpha_and_its_ends_are_the_inputs(worlds, tmp_path, capsys):
    source, target = worlds
    a, b = vlm.create_model("clip-tiny"), vlm.create_model("clip-tiny")
    a.save(tmp_path / "a.pt")
    b.save(tmp_path / "b.pt")
    evals = [f"zeroshot:{source}:test", f"zeroshot:{target}:test"]
    assert main(["wise-ft", "--zeroshot", str(tmp_path / "a.pt"), "--finetuned", str(tmp_path / "b.pt"),
                 "--alphas", "0,0.5,1", *(x for e in evals for x in ("--eval", e)),
                 "--json", str(tmp_path / "curve.json")]) == 0
    rows = json.loads((tmp_path / "curve.json").read_text())
    assert [r["alpha"] for r in rows] == [0, 0.5, 1]
    from vlm.eval.run import EvalSets, run_zeroshot
    for row, model in ((rows[0], a), (rows[2], b)):
        assert row[evals[1]] == run_zeroshot(model.eval(), EvalSets(target, "test"))["acc1"]
    assert main(["wise-ft", "--zeroshot", str(tmp_path / "a.pt"), "--finetuned", str(tmp_path / "b.pt"),
                 "--alphas", "0,1", "--eval", "nonsense"]) == 2
    assert "TASK:DATA[:SPLIT]" in capsys.readouterr().err


def test_adapt_report_runs_every_method_and_writes_table_and_plots(worlds, tmp_path, monkeypatch):
    source, target = worlds
    monkeypatch.chdir(Path(__file__).parents[1])  # the recipes in configs/train
    vlm.create_model("clip-tiny").save(tmp_path / "base.pt")
    out = tmp_path / "report"
    assert main(["adapt-report", "--base", str(tmp_path / "base.pt"), "--source", str(source), "--target",
                 str(target), "--out", str(out), "--shots", "1", "--steps", "2", "--batch-size", "8",
                 "--eval-images", "16", "--alphas", "0,0.5,1", "--workers", "0"]) == 0
    report = json.loads((out / "report.json").read_text())
    methods = {(r["method"], r["shots"]) for r in report["rows"]}
    assert methods >= {("zeroshot", 0), *((m, k) for m in ("linear-probe", "lora", "lit", "full", "wise-ft")
                                          for k in (1,))}
    by = {(r["method"], r["shots"], r.get("alpha")): r for r in report["rows"]}
    assert by[("wise-ft", 1, 0.0)]["target"] == by[("zeroshot", 0, None)]["target"]  # alpha 0 is the base
    assert by[("wise-ft", 1, 1.0)]["target"] == by[("full", 1, None)]["target"]
    assert by[("lora", 1, None)]["trainable_params"] < by[("lit", 1, None)]["trainable_params"] < by[
        ("full", 1, None)]["trainable_params"]
    assert "| lora | 1 |" in (out / "report.md").read_text()
    assert (out / "adapt_tradeoff.png").stat().st_size > 0 and (out / "adapt_params.png").stat().st_size > 0


def test_adapt_report_on_early_fusion_measures_itm_and_vqa(worlds, tmp_path, monkeypatch):
    source, target = worlds
    monkeypatch.chdir(Path(__file__).parents[1])
    vlm.create_model("fusion-tiny", ["vqa_answers=[yes,no,red,circle]"]).save(tmp_path / "base.pt")
    assert main(["adapt-report", "--base", str(tmp_path / "base.pt"), "--source", str(source), "--target",
                 str(target), "--out", str(tmp_path / "report"), "--shots", "1", "--steps", "1", "--batch-size", "8",
                 "--eval-images", "8", "--methods", "zeroshot,lora,full", "--alphas", "0,1",
                 "--workers", "0"]) == 0
    rows = json.loads((tmp_path / "report" / "report.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {"zeroshot", "lora", "full"}
    assert all("target_vqa" in r and "source_vqa" in r for r in rows)
