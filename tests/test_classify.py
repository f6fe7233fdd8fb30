"""`vlm classify`: zero-shot labels for a folder of images, either family, bad files skipped and counted."""

from __future__ import annotations

import csv

import pytest
import torch
from PIL import Image

import vlm
from data_pipelines.shapes import generate_shapes_world
from vlm.cli import main
from vlm.eval.class_lists import resolve_classnames, resolve_templates
from vlm.train import load_train_config, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A clip-tiny trained a few steps on a shapes world, so its zero-shot top-1 differs between images."""
    root = tmp_path_factory.mktemp("classify")
    generate_shapes_world(root / "shapes", train=64, val=16, test=0, heldout=0, image_size=32, classify_per_class=1)
    recipe = {"model": "clip-tiny", "objective": "clip", "steps": 30, "batch_size": 16, "warmup_steps": 3,
              "lr": 3e-3, "save_every": 1000, "eval_every": 1000, "log_every": 1000,
              "data": {"train": str(root / "shapes"), "num_workers": 0, "val_samples": 8}}
    checkpoint = train(load_train_config(None, [], base=recipe), root / "run")
    return {"root": root, "checkpoint": checkpoint, "folder": root / "shapes" / "classify_val"}


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, colour in enumerate(["red", "blue", "green"]):
        Image.new("RGB", (40, 30), colour).save(folder / ("sub" if i == 2 else "") / f"{colour}.png")
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    (folder / "notes.txt").write_text("not an image, not counted")
    return folder


@pytest.mark.parametrize("name", ["clip-tiny", "fusion-tiny"])
def test_a_folder_with_a_corrupt_image_gives_a_row_per_good_image_and_one_skipped(name, photos, tmp_path, capsys):
    torch.manual_seed(0)
    vlm.create_model(name).save(tmp_path / "model.pt")
    out = tmp_path / "predictions.csv"
    assert main(["classify", str(photos), "--checkpoint", str(tmp_path / "model.pt"), "--labels", "cat,dog,car",
                 "--out", str(out), "--workers", "0", "--no-progress", "--max-bad-fraction", "0.5"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert sorted(r["image"].rsplit("/", 1)[1] for r in rows) == ["blue.png", "green.png", "red.png"]
    assert list(rows[0]) == ["image", "label", "top1", "p1", "top2", "p2", "top3", "p3"]
    for row in rows:
        assert {row["top1"], row["top2"], row["top3"]} == {"cat", "dog", "car"}
        assert sum(float(row[f"p{i}"]) for i in (1, 2, 3)) == pytest.approx(1, abs=1e-5)
    assert "classified 3 images; skipped 1 unreadable" in capsys.readouterr().err


def test_classify_top1_agrees_with_eval_zeroshot_on_a_trained_model(trained, tmp_path):
    folder, checkpoint = trained["folder"], str(trained["checkpoint"])
    assert main(["eval", "zeroshot", "--checkpoint", checkpoint, "--data", str(trained["root"] / "shapes"),
                 "--predictions", str(tmp_path / "zs.csv"), "--workers", "0"]) == 0
    assert main(["classify", str(folder), "--checkpoint", checkpoint, "--labels-file", str(folder / "classnames.txt"),
                 "--templates", str(folder / "templates.txt"), "--out", str(tmp_path / "c.csv"), "--workers", "2"]) == 0
    zeroshot = {r["image"]: r["top1"] for r in csv.DictReader((tmp_path / "zs.csv").open())}
    classified = {r["image"]: r["top1"] for r in csv.DictReader((tmp_path / "c.csv").open())}
    assert classified == zeroshot
    assert len(set(classified.values())) > 1  # a model that answers one label for everything proves nothing


def test_printed_without_out_and_bad_arguments_are_one_line_errors(trained, photos, capsys):
    checkpoint = str(trained["checkpoint"])
    assert main(["classify", str(photos / "red.png"), "--checkpoint", checkpoint, "--labels", "red,blue",
                 "--workers", "0", "--no-progress"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith(str(photos / "red.png"))
    for argv in (["--labels", "red,,blue"], ["--labels", "red", "--templates", "no placeholder"]):
        assert main(["classify", str(photos), "--checkpoint", checkpoint, *argv, "--workers", "0"]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["classify", str(photos / "nowhere.png"), "--checkpoint", checkpoint, "--labels", "a,b"]) == 2


def test_imagenet_names_and_the_80_openai_templates_come_from_open_clip():
    names, templates = resolve_classnames("imagenet"), resolve_templates("imagenet")
    assert len(names) == 1000 and names[0] == "tench"
    assert len(templates) == 80 and templates[0] == "a bad photo of a {}."
    assert resolve_classnames("cat, dog") == ["cat", "dog"] and resolve_templates(None) == ["a photo of a {}."]
