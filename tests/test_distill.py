"""`objective: distill` (issue 26): teachers of both families and OpenCLIP's, exact resume, precomputed outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import vlm
from data_pipelines import generate_shapes_world
from vlm.config import ConfigError
from vlm.distill.precompute import precompute_teacher
from vlm.models.checkpoint import read_checkpoint
from vlm.tokenizer import get_tokenizer
from vlm.train import load_train_config, train
from vlm.train.data import make_collator, open_split
from vlm.train.distill import build_distill_task

STUDENT = ["embed_dim=16", "image.width=16", "text.width=16", "image.heads=1", "text.heads=1", "image.depth=1",
           "text.depth=1"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes_world(root, train=48, val=16, test=8, heldout=8, image_size=32, seed=1)
    return root


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("teachers")
    torch.manual_seed(0)
    vlm.create_model("clip-tiny").save(root / "clip.pt")
    vlm.create_model("fusion-tiny").save(root / "fusion.pt")
    return {"clip": root / "clip.pt", "fusion": root / "fusion.pt"}


def recipe(shapes: Path, teacher: Path, **changes):
    base = {"model": "clip-tiny", "model_overrides": STUDENT, "objective": "distill", "steps": 20, "batch_size": 8,
            "warmup_steps": 3, "save_every": 10, "eval_every": 1000, "log_every": 5,
            "data": {"train": str(shapes), "num_workers": 0, "val_samples": 16},
            "distill": {"teacher": str(teacher)}}
    return load_train_config(None, [f"{k}={json.dumps(v)}" for k, v in changes.items()], base=base)


def test_resume_mid_distillation_gives_identical_weights_and_projections(shapes, teachers, tmp_path):
    config = recipe(shapes, teachers["clip"], steps=8, save_every=4,
                    **{"distill.feature_weight": 1.0})  # widths 16 vs 32: projections
    straight = train(config, tmp_path / "straight")
    train(config, tmp_path / "resumed", stop_at_step=4)
    resumed = train(config, tmp_path / "resumed", resume="auto")
    a, b = read_checkpoint(straight), read_checkpoint(resumed)
    assert set(a["projections"]) == {"image.weight", "text.weight"}
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], atol=1e-6, rtol=0, msg=key)
    for key in a["projections"]:
        torch.testing.assert_close(a["projections"][key], b["projections"][key], atol=1e-6, rtol=0, msg=key)
    student = vlm.load(resumed)  # an ordinary checkpoint of the student alone
    assert student.config.embed_dim == 16 and not any(k.startswith("teacher") for k in a["model"])


def test_teacher_stays_frozen_and_in_eval_mode(shapes, teachers):
    config = recipe(shapes, teachers["clip"])
    student = vlm.create_model("clip-tiny", STUDENT)
    task = build_distill_task(student, config.distill).train()
    assert not task.teacher.training and not any(p.requires_grad for p in task.teacher.parameters())
    before = {k: v.clone() for k, v in task.teacher.state_dict().items()}
    batch = first_batch(shapes, student, 8)
    loss, metrics = task(batch)
    loss.backward()
    assert all(p.grad is None for p in task.teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in task.teacher.state_dict().items())
    assert set(metrics) >= {"clip_loss", "similarity_kl"}


def first_batch(shapes: Path, student, n: int) -> dict:
    data = open_split(str(shapes), "train", "clip", student.config, augment=False)
    return make_collator(get_tokenizer(student))([data[i] for i in range(n)])


def test_precomputed_and_online_teacher_give_the_same_loss(shapes, teachers, tmp_path):
    config = recipe(shapes, teachers["clip"], **{"distill.feature_weight": 1.0, "distill.clip_weight": 0.0})
    parts = precompute_teacher(config, tmp_path / "parts", batch_size=16, part_size=20)
    assert len(list((parts / "done").glob("*.json"))) > 1  # several parts, read back as one table
    student = vlm.create_model("clip-tiny", STUDENT).eval()
    online = build_distill_task(student, config.distill).eval()
    offline_config = recipe(shapes, teachers["clip"], **{"distill.feature_weight": 1.0, "distill.clip_weight": 0.0,
                                                         "distill.precomputed": str(parts)}).distill
    offline = build_distill_task(student, offline_config).eval()
    assert offline.teacher is None  # steps never run the teacher
    offline.projections.load_state_dict(online.projections.state_dict())
    batch = first_batch(shapes, student, 16)
    (a, ma), (b, mb) = online(batch), offline(batch)
    # the parts hold float16 (the format's dtype): equal to its rounding
    torch.testing.assert_close(a, b, rtol=2e-3, atol=1e-4)
    for name in ("similarity_kl", "feature_mse"):
        torch.testing.assert_close(ma[name], mb[name], rtol=2e-3, atol=1e-4)


def test_precomputed_outputs_refuse_augmentation(shapes, teachers, tmp_path):
    with pytest.raises(ConfigError, match="augment"):
        recipe(shapes, teachers["clip"], **{"distill.precomputed": str(tmp_path), "data.augment": True})


def test_early_fusion_teacher_ranks_the_students_top_k(shapes, teachers, tmp_path):
    config = recipe(shapes, teachers["fusion"], steps=4, save_every=4,
                    **{"distill.similarity_weight": 0.0, "distill.ranking_weight": 1.0})
    checkpoint = train(config, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "ranking_kl" in r][-1]
    assert last["ranking_kl"] > 0 and torch.isfinite(torch.tensor(last["loss"]))
    assert isinstance(vlm.load(checkpoint), vlm.DualEncoder)


def test_early_fusion_teacher_refuses_similarity_distillation(shapes, teachers):
    config = recipe(shapes, teachers["fusion"])  # similarity_weight defaults to 1
    with pytest.raises(ConfigError, match="early-fusion teacher"):
        build_distill_task(vlm.create_model("clip-tiny", STUDENT), config.distill)


def similarity_correlation(student, teacher, batch: dict) -> float:
    """Spearman correlation of the student's and the teacher's image-text similarities over a batch."""
    from scipy.stats import spearmanr

    from vlm.train.distill import teacher_embeddings

    with torch.no_grad():
        ours = student.eval().similarity(batch["images"], batch["text"])
        target = teacher_embeddings(teacher, batch["images"], batch["text"])
        theirs = target["image"] @ target["text"].T
    return float(spearmanr(ours.flatten().numpy(), theirs.flatten().numpy()).statistic)


@pytest.mark.slow
def test_openclip_vit_b32_file_as_teacher_the_student_tracks_it(shapes, tmp_path):
    """An OpenCLIP ViT-B-32 (random weights: none can be downloaded here) saved as a bare file teaches clip-tiny:
    after a few distillation steps the student orders the image-text pairs more like the teacher than at init."""
    import open_clip

    torch.manual_seed(0)
    torch.save(open_clip.create_model("ViT-B-32").state_dict(), tmp_path / "vit-b-32.bin")
    config = recipe(shapes, tmp_path / "vit-b-32.bin", steps=40, save_every=40, lr=2e-3, batch_size=16,
                    model_overrides=[], **{"distill.teacher_openclip": "ViT-B-32", "distill.clip_weight": 0.0,
                                           "distill.teacher_temperature": 0.01})
    torch.manual_seed(config.seed)
    student = vlm.create_model("clip-tiny")
    task = build_distill_task(student, config.distill)
    batch = first_batch(shapes, student, 24)
    before = similarity_correlation(student, task.teacher, batch)
    distilled = vlm.load(train(config, tmp_path / "run"))
    after = similarity_correlation(distilled, task.teacher, batch)
    assert after > before + 0.2 and after > 0.5, (before, after)


def test_vlm_distill_precompute_writes_parts_once_and_trains_without_the_teacher(shapes, teachers, tmp_path):
    from vlm.cli import main

    args = ["distill", "--config", "distill-clip", "--out", str(tmp_path / "run"), "--precompute",
            "--set", f"distill.teacher={teachers['clip']}", "--set", f"data.train={shapes}",
            "--set", "model=clip-tiny", "--set", f"model_overrides={json.dumps(STUDENT)}", "--set", "steps=3",
            "--set", "data.cache_mb=0", "--set", "data.num_workers=0", "--set", "data.val_samples=8",
            "--set", "batch_size=8", "--set", "warmup_steps=1"]
    assert main(args) == 0
    parts = tmp_path / "run" / "teacher_parts"
    header = json.loads((parts / "parts.json").read_text())
    assert header["dim"] == 32 and header["dtype"] == "float16" and header["model"] == "clip-tiny"
    saved = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert saved["train_config"]["distill"]["precomputed"] == str(parts)
    assert vlm.load(tmp_path / "run").config.embed_dim == 16


@pytest.mark.parametrize("recipe_name", ["distill-clip", "distill-fusion"])
def test_shipped_recipes_student_has_at_most_a_third_of_clip_small_and_shrink_can_give_its_shape(recipe_name):
    from vlm.config import resolve_config
    from vlm.models.registry import count_parameters, get_model_config

    config = load_train_config(resolve_config(recipe_name, "train"))
    student = get_model_config(config.model, list(config.model_overrides))
    assert count_parameters(vlm.create_model(student)) * 3 <= count_parameters(vlm.create_model("clip-small"))
    # `vlm shrink` gives both towers one shape, so the recipe's student must have one too.
    towers = [(t.depth, t.width, t.heads) for t in (student.image, student.text)]
    assert towers[0] == towers[1]
