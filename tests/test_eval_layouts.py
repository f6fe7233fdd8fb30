"""The real benchmarks' own layouts and file names, read by `vlm eval` as they come (tiny stand-ins)."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from PIL import Image

import vlm
from vlm.cli import main

VQA_ANSWERS = "vqa_answers=[yes,no,'2']"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    vlm.create_model("clip-tiny", [VQA_ANSWERS]).save(root / "clip.pt")
    return {"clip": root / "clip.pt"}


def _jpeg(path, colour) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (48, 40), colour).save(path)


def test_imagenet_val_folder_with_openai_class_names(models, tmp_path):
    """ImageNet val as class folders named by WordNet id (sorted = open_clip's IMAGENET_CLASSNAMES order)."""
    val = tmp_path / "imagenet" / "val"
    wnids = [f"n{i:08d}" for i in range(1000)]  # stand-ins that sort like the real ids
    for wnid in wnids:
        (val / wnid).mkdir(parents=True)
    _jpeg(val / wnids[0] / "ILSVRC2012_val_00000001.JPEG", "red")
    _jpeg(val / wnids[1] / "ILSVRC2012_val_00000002.JPEG", "blue")
    out = tmp_path / "zs.csv"
    assert main(["eval", "zeroshot", "--checkpoint", str(models["clip"]), "--data", str(val), "--classnames",
                 "imagenet", "--predictions", str(out), "--workers", "0"]) == 0
    assert [r["label"] for r in csv.DictReader(out.open())] == ["tench", "goldfish"]


def test_karpathy_coco_test_split(models, tmp_path, capsys):
    """dataset_coco.json next to val2014/ (Karpathy's `filepath` + `filename`); --split test."""
    root, images = tmp_path / "coco", []
    for i, split in enumerate(["test", "test", "train", "val"]):
        filename = f"COCO_val2014_{i:012d}.jpg"
        _jpeg(root / "val2014" / filename, (60 * i, 0, 0))
        images.append({"filepath": "val2014", "filename": filename, "cocoid": i, "split": split,
                       "sentences": [{"raw": f"caption {i} {j}"} for j in range(5)]})
    (root / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    assert main(["eval", "retrieval", "--checkpoint", str(models["clip"]), "--data", str(root / "dataset_coco.json"),
                 "--split", "test", "--workers", "0"]) == 0
    result = json.loads(capsys.readouterr().out.split("\nwrote")[0])
    assert (result["images"], result["texts"]) == (2, 10)


def test_vqav2_val_file_names_and_coco_image_names(models, tmp_path):
    """v2_OpenEnded_mscoco_val2014_questions.json + v2_mscoco_val2014_annotations.json + val2014/ images."""
    root = tmp_path / "vqav2"
    questions, annotations = [], []
    for qid, image_id in ((1000, 42), (1001, 42), (1002, 7)):
        questions.append({"question_id": qid, "image_id": image_id, "question": "is it red?"})
        annotations.append({"question_id": qid, "image_id": image_id, "answer_type": "yes/no",
                            "question_type": "is the", "multiple_choice_answer": "yes",
                            "answers": [{"answer": "yes", "answer_confidence": "yes", "answer_id": j + 1}
                                        for j in range(10)]})
        _jpeg(root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg", "red")
    (root / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps(
        {"data_subtype": "val2014", "data_type": "mscoco", "task_type": "Open-Ended", "questions": questions}))
    (root / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(
        {"data_subtype": "val2014", "annotations": annotations}))
    out = tmp_path / "results.json"
    assert main(["eval", "vqa", "--checkpoint", str(models["clip"]), "--data",
                 str(root / "v2_OpenEnded_mscoco_val2014_questions.json"), "--predictions", str(out),
                 "--workers", "0"]) == 0
    assert [r["question_id"] for r in json.loads(out.read_text())] == [1000, 1001, 1002]


def test_vqav2_test_dev_without_annotations_writes_a_submission_only(models, tmp_path, capsys):
    root = tmp_path / "vqav2"
    questions = [{"question_id": 7, "image_id": 3, "question": "what colour is it?"}]
    _jpeg(root / "test2015" / "COCO_test2015_000000000003.jpg", "blue")
    path = root / "v2_OpenEnded_mscoco_test-dev2015_questions.json"
    path.write_text(json.dumps({"data_subtype": "test2015", "questions": questions}))
    out = tmp_path / "vqa_test-dev_results.json"
    argv = ["eval", "vqa", "--checkpoint", str(models["clip"]), "--data", str(path), "--workers", "0"]
    assert main([*argv, "--predictions", str(out)]) == 0
    assert [r["question_id"] for r in json.loads(out.read_text())] == [7]
    capsys.readouterr()
    assert main(argv) == 2
    assert "annotations" in capsys.readouterr().err
