"""Streaming evaluation equals the in-memory one, and the prediction files say what the metrics say."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import vlm
from data_pipelines.shapes import generate_shapes_world
from vlm.cli import main
from vlm.eval.run import EvalSets, evaluate, run_retrieval, run_vqa, run_zeroshot
from vlm.eval.stream import StreamOptions
from vlm.eval.vqa_metric import vqa_accuracy

VQA_ANSWERS = "vqa_answers=['yes','no','0','1','2','3','4',red,blue,green,circle,square]"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("stream")
    generate_shapes_world(root / "shapes", train=10, val=16, test=0, heldout=0, image_size=32, classify_per_class=1,
                          captions_per_image=2)
    (root / "shapes" / "classify_val" / "templates.txt").write_text("a photo of a {}.\n")  # early: images x classes
    torch.manual_seed(0)
    for name in ("clip-tiny", "fusion-tiny"):
        vlm.create_model(name, [VQA_ANSWERS]).save(root / f"{name}.pt")
    return {"root": root, "data": root / "shapes", "clip": root / "clip-tiny.pt", "fusion": root / "fusion-tiny.pt"}


def _same(in_memory: dict, streamed: dict) -> None:
    keys = set(in_memory) - {"wall_time_s"}
    assert keys <= set(streamed)
    assert {k: streamed[k] for k in keys} == {k: in_memory[k] for k in keys}


@pytest.mark.parametrize("family", ["clip", "fusion"])
def test_streamed_results_equal_the_in_memory_evaluation_exactly(world, family):
    model, sets = vlm.load(world[family]), EvalSets(world["data"], "val")
    options = StreamOptions(batch_size=7, workers=0)  # batches that cut groups of captions and questions
    for task, in_memory in (("zeroshot", run_zeroshot(model, sets)), ("retrieval", run_retrieval(model, sets)),
                            ("vqa", run_vqa(model, sets))):
        _same(in_memory, evaluate(task, world[family], world["data"], "val", options=options))


@pytest.mark.parametrize("k", [1, 4, 1000])
def test_streamed_hybrid_equals_the_in_memory_hybrid_without_the_full_matrix(world, k):
    fusion, clip, sets = vlm.load(world["fusion"]), vlm.load(world["clip"]), EvalSets(world["data"], "val")
    streamed = evaluate("retrieval", world["fusion"], world["data"], "val", rerank_from=world["clip"], k=k,
                        options=StreamOptions(batch_size=8, workers=0))
    _same(run_retrieval(fusion, sets, clip, k), streamed)
    if k == 1000:  # every pair re-scored: exhaustive early fusion, recall for recall
        exhaustive = run_retrieval(fusion, sets)
        assert all(streamed[key] == exhaustive[key] for key in exhaustive if "recall" in key)


def test_decoding_workers_give_the_same_result(world):
    in_process = evaluate("zeroshot", world["clip"], world["data"], "val", options=StreamOptions(10, workers=0))
    workers = evaluate("zeroshot", world["clip"], world["data"], "val", options=StreamOptions(10, workers=2))
    _same(in_process, workers)


@pytest.mark.parametrize("metric", ["2021", "2016"])
def test_vqa_predictions_are_vqav2_results_and_rescore_to_the_reported_accuracy(world, tmp_path, metric):
    out, report = tmp_path / "results.json", tmp_path / "vqa.json"
    assert main(["eval", "vqa", "--checkpoint", str(world["fusion"]), "--data", str(world["data"]),
                 "--predictions", str(out), "--json", str(report), "--vqa-metric", metric, "--workers", "0"]) == 0
    results = json.loads(out.read_text())
    assert isinstance(results, list)
    assert all(set(r) == {"question_id", "answer"} and type(r["question_id"]) is int
               and isinstance(r["answer"], str) for r in results)
    annotations = json.loads((world["data"] / "vqa_val_annotations.json").read_text())["annotations"]
    humans = {a["question_id"]: [h["answer"] for h in a["answers"]] for a in annotations}
    assert sorted(r["question_id"] for r in results) == sorted(humans)
    rescored = [vqa_accuracy(r["answer"], humans[r["question_id"]], metric) for r in results]
    reported = json.loads(report.read_text())
    assert reported["vqa_metric"] == metric
    assert 100 * sum(rescored) / len(rescored) == pytest.approx(reported["vqa_accuracy"], abs=1e-9)


def test_zero_shot_predictions_csv_has_each_image_top5_and_rescores_to_acc1(world, tmp_path):
    out = tmp_path / "zs.csv"
    result = evaluate("zeroshot", world["clip"], world["data"], "val", options=StreamOptions(workers=0),
                      predictions=out)
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == result["images"]
    assert list(rows[0])[:4] == ["image", "label", "top1", "p1"] and "p5" in rows[0]
    probabilities = [float(r[f"p{i}"]) for r in rows for i in range(1, 6)]
    assert all(0 <= p <= 1 for p in probabilities)
    assert all(float(r["p1"]) >= float(r["p2"]) for r in rows)
    assert 100 * sum(r["top1"] == r["label"] for r in rows) / len(rows) == pytest.approx(result["acc1"])


def test_retrieval_predictions_jsonl_has_every_query_and_rescores_to_recall_at_1(world, tmp_path):
    out = tmp_path / "r.jsonl"
    result = evaluate("retrieval", world["clip"], world["data"], "val", options=StreamOptions(workers=0),
                      predictions=out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    texts = [x for x in lines if x["query_type"] == "text"]
    images = [x for x in lines if x["query_type"] == "image"]
    assert (len(texts), len(images)) == (result["texts"], result["images"])
    assert all(len(x["ids"]) == len(x["scores"]) == 10 for x in lines)
    pairs = list(csv.DictReader((world["data"] / "pairs_val.csv").open()))
    assert [x["query"] for x in texts] == [p["caption"] for p in pairs]  # captions in the file's order
    hits = sum(pairs[x["query_index"]]["image"] == x["ids"][0] for x in texts)
    assert 100 * hits / len(texts) == pytest.approx(result["image_retrieval_recall@1"])
