"""`vlm eval ...` and `vlm compare` end to end: a tiny shapes world, random tiny models, the real loaders."""

from __future__ import annotations

import json
import re

import pytest
import torch

import vlm
from data_pipelines.shapes import generate_shapes_world
from vlm.cli import main
from vlm.eval.report import fmt

VQA_ANSWERS = "vqa_answers=['yes','no','0','1','2','3','4',red,blue,green,circle,square]"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A shapes world (40 train / 20 val / 8 heldout scenes, 32 px) and the four run folders of the quickstart."""
    root = tmp_path_factory.mktemp("eval")
    generate_shapes_world(root / "shapes", train=40, val=20, test=0, heldout=8, image_size=32,
                          classify_per_class=1)
    torch.manual_seed(0)
    for run, name, overrides in (("clip", "clip-tiny", []), ("fusion", "fusion-tiny", []),
                                 ("clip-vqa", "clip-tiny", [VQA_ANSWERS]),
                                 ("fusion-vqa", "fusion-tiny", [VQA_ANSWERS])):
        vlm.create_model(name, overrides).save(root / run / "checkpoint.pt")
    return {"root": root, "data": root / "shapes"}


@pytest.fixture(scope="module")
def compared(world) -> dict:
    out = world["root"] / "report"
    argv = ["compare", "--late", str(world["root"] / "clip"), "--early", str(world["root"] / "fusion"),
            "--data", str(world["data"]), "--out", str(out), "--k", "2", "4", "--latency-queries", "5"]
    assert main(argv) == 0
    return {"out": out, "json": json.loads((out / "report.json").read_text()),
            "md": (out / "report.md").read_text()}


def test_compare_writes_the_report_plots_and_finds_the_vqa_runs(compared):
    files = {p.name for p in compared["out"].iterdir()}
    assert {"report.md", "report.json", "vqa_per_family.png", "accuracy_vs_cost.png"} <= files
    report = compared["json"]
    assert report["setup"]["late_vqa_checkpoint"].endswith("clip-vqa/checkpoint.pt")
    assert {"late", "early", "late_image_zeroed", "early_image_zeroed", "question_only"} <= set(report["vqa"])
    blind = report["vqa"]["early_image_zeroed"]
    assert blind["fusion_passes"] == report["vqa"]["early"]["fusion_passes"] > 0
    assert blind["per_question_family"].keys() == report["vqa"]["early"]["per_question_family"].keys()
    assert {"late", "early", "text_only"} <= set(report["compositional"])
    assert {"late", "early", "text_only"} <= set(report["heldout"]["compositional"])
    assert {"late", "early", "question_only"} <= set(report["heldout"]["vqa"])
    assert set(report["retrieval"]["hybrid"]) == {"2", "4"}  # the ks asked for, and no other
    assert report["retrieval"]["early"]["fusion_passes"] == 20 * report["retrieval"]["early"]["texts"]
    assert report["hybrid_vs_early"]["k"] == 4  # 16 was not asked for: the headline is the largest k
    assert (compared["out"] / "accuracy_vs_cost.png").read_bytes()[:4] == b"\x89PNG"


def _flatten(value) -> list:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _flatten(v)]
    if isinstance(value, list):
        return [x for v in value for x in _flatten(v)]
    return [value]


def test_every_number_in_report_md_is_in_report_json(compared):
    prose = re.sub(r"`[^`]*`", "", compared["md"])  # code spans hold names and paths, not figures
    prose = re.sub(r"!\[[^]]*\]\([^)]*\)", "", prose)  # image links
    numbers = re.findall(r"(?<![\w@.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w@])", prose)
    assert len(numbers) > 50
    known = {fmt(v) for v in _flatten(compared["json"]) if isinstance(v, (int, float)) and not isinstance(v, bool)}
    missing = sorted(set(numbers) - known)
    assert not missing, f"numbers in report.md that are not in report.json: {missing}"


def test_report_has_blind_baselines_and_cost_for_both_families(compared):
    report = compared["json"]
    assert report["zeroshot"]["chance"]["acc1"] == pytest.approx(100 / 40)
    assert 0 < report["retrieval"]["random"]["image_retrieval_recall@1"] < 100
    for family in ("late", "early"):
        cost = report["cost"][family]
        assert cost["parameters"] > 0 and cost["gflops_image"] > 0 and cost["score_pairs_per_s"] > 0
    assert report["cost"]["latency"]["early"]["fusion_passes_per_query"] == 20
    assert "| retrieval T→I R@1 % |" in compared["md"]


def test_eval_commands_write_json_with_clip_benchmark_names(world, tmp_path):
    data = str(world["data"])
    expected = {
        "zeroshot": ("clip", {"acc1", "acc5", "mean_per_class_recall"}),
        "retrieval": ("fusion", {"image_retrieval_recall@1", "text_retrieval_recall@10", "fusion_passes"}),
        "vqa": ("fusion-vqa", {"vqa_accuracy", "per_answer_type", "per_question_family"}),
        "compositional": ("clip", {"compositional_accuracy", "per_negative_type"}),
    }
    for task, (run, keys) in expected.items():
        out = tmp_path / f"{task}.json"
        assert main(["eval", task, "--checkpoint", str(world["root"] / run), "--data", data,
                     "--json", str(out)]) == 0
        assert keys <= set(json.loads(out.read_text())), task


def test_hybrid_retrieval_from_the_command_line(world, tmp_path):
    out = tmp_path / "hybrid.json"
    assert main(["eval", "retrieval", "--checkpoint", str(world["root"] / "fusion"), "--rerank-from",
                 str(world["root"] / "clip"), "--k", "3", "--data", str(world["data"]), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["method"] == "hybrid" and result["k"] == 3
    assert result["fusion_passes_text_to_image"] == 3 * result["texts"]


def test_zero_shot_on_a_plain_image_folder(world, tmp_path):
    out = tmp_path / "zs.json"
    folder = world["data"] / "classify_val"
    assert main(["eval", "zeroshot", "--checkpoint", str(world["root"] / "clip"), "--data", str(folder),
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["classes"] == 40


def test_user_errors_are_one_line_with_exit_status_2(world, capsys):
    assert main(["eval", "vqa", "--checkpoint", str(world["root"] / "clip"), "--data", str(world["data"])]) == 2
    err = capsys.readouterr().err.strip()
    assert "no VQA head" in err and len(err.splitlines()) == 1
    assert main(["eval", "retrieval", "--checkpoint", str(world["root"] / "nowhere"),
                 "--data", str(world["data"])]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["compare", "--late", str(world["root"] / "fusion"), "--early", str(world["root"] / "clip"),
                 "--data", str(world["data"]), "--out", str(world["root"] / "x")]) == 2
    assert "late-fusion" in capsys.readouterr().err
