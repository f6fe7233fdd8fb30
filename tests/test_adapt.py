"""Adaptation: LoRA (train, resume, merge, export), locked image tower, freezing by pattern, WiSE-FT."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch

import vlm
from data_pipelines import generate_shapes_world
from vlm.cli import main
from vlm.models.checkpoint import read_checkpoint
from vlm.models.config import LoraConfig
from vlm.models.lora import add_lora, lora_model
from vlm.train import TrainConfig, load_train_config, train
from vlm.train.trainable import apply_adaptation, parameter_counts

TOLERANCE = dict(rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes_world(root, train=24, val=8, test=8, heldout=0, image_size=32, seed=1)
    return root


def recipe(shapes: Path, **changes) -> TrainConfig:
    base = {"model": "clip-tiny", "objective": "clip", "steps": 4, "batch_size": 8, "warmup_steps": 2,
            "save_every": 2, "eval_every": 1000, "log_every": 3, "lr": 1e-2,
            "data": {"train": str(shapes), "num_workers": 0, "val_samples": 8}}
    return load_train_config(None, [f"{k}={json.dumps(v)}" for k, v in changes.items()], base=base)


def test_lora_on_clip_small_trains_under_three_percent_of_the_parameters():
    model = add_lora(vlm.create_model("clip-small"), LoraConfig())
    trainable, total = parameter_counts(model)
    assert 0 < trainable < 0.03 * total
    assert all(".lora_" in name for name, p in model.named_parameters() if p.requires_grad)


def test_lora_run_resumes_exactly_and_merges_to_the_same_embeddings(shapes, tmp_path):
    config = recipe(shapes, lora={"r": 4, "alpha": 8})
    straight = train(config, tmp_path / "straight")
    train(config, tmp_path / "resumed", stop_at_step=2)
    resumed = train(config, tmp_path / "resumed", resume="auto")
    a, b = read_checkpoint(straight)["model"], read_checkpoint(resumed)["model"]
    assert any(".lora_A." in k for k in a) and a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0, msg=key)

    adapted = lora_model(read_checkpoint(straight), "run")
    assert main(["lora", "merge", str(tmp_path / "straight"), "--out", str(tmp_path / "merged.pt")]) == 0
    merged = vlm.load(tmp_path / "merged.pt")
    assert not any("lora" in k or "base_layer" in k for k in merged.state_dict())
    images, ids = torch.randn(3, 3, 32, 32), vlm.Tokenizer(32)(["a red circle", "two blue squares", ""])
    with torch.no_grad():
        torch.testing.assert_close(merged.encode_image(images), adapted.encode_image(images), **TOLERANCE)
        torch.testing.assert_close(merged.encode_text(ids), adapted.encode_text(ids), **TOLERANCE)
        assert not torch.allclose(merged.encode_image(images), vlm.create_model("clip-tiny").eval().encode_image(
            images), atol=1e-3)  # the adapters did change something

    assert main(["openclip", "export", str(tmp_path / "merged.pt"), str(tmp_path / "export")]) == 0
    theirs = open_clip.create_model(f"local-dir:{tmp_path / 'export'}").eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode_image(images), adapted.encode_image(images, normalize=False),
                                   **TOLERANCE)
        torch.testing.assert_close(theirs.encode_text(ids), adapted.encode_text(ids, normalize=False), **TOLERANCE)


def test_lora_runs_on_early_fusion_and_its_checkpoint_loads_merged(shapes, tmp_path):
    checkpoint = train(recipe(shapes, model="fusion-tiny", objective="fusion", steps=2, lora={"r": 2}), tmp_path)
    trained = read_checkpoint(checkpoint)["model"]
    assert any(k.startswith("blocks.0.attn.qkv.lora_A.") for k in trained)
    assert not any(".lora_" in k and not k.startswith("blocks.") for k in trained)  # the fusion stack only
    assert isinstance(vlm.load(checkpoint), vlm.EarlyFusionModel)


def test_lock_image_trains_the_text_tower_only(shapes, tmp_path):
    start = vlm.create_model("clip-tiny")
    start.save(tmp_path / "start.pt")
    checkpoint = train(recipe(shapes, model=str(tmp_path / "start.pt"), lock_image=True, steps=2), tmp_path / "lit")
    before, after = start.state_dict(), read_checkpoint(checkpoint)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("image."))
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("text.blocks."))


def test_freeze_patterns_freeze_by_name_and_an_unmatched_pattern_is_named(shapes):
    model = apply_adaptation(vlm.create_model("clip-tiny"), recipe(shapes, freeze=["text.*", "logit_*"]))
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"image"}
    with pytest.raises(vlm.config.ConfigError, match="'txt.*'"):
        apply_adaptation(vlm.create_model("clip-tiny"), recipe(shapes, freeze=["txt.*"]))
    with pytest.raises(vlm.config.ConfigError, match="no parameter"):
        apply_adaptation(vlm.create_model("clip-tiny"), recipe(shapes, lock_image=True, freeze=["text.*", "logit_*"]))


def test_wise_ft_endpoints_are_the_inputs_exactly_and_the_midpoint_is_between(tmp_path):
    a, b = vlm.create_model("clip-tiny"), vlm.create_model("clip-tiny")
    a.save(tmp_path / "a.pt")
    b.save(tmp_path / "b.pt")
    for alpha, expected in ((0, a), (1, b)):
        out = tmp_path / f"alpha{alpha}.pt"
        assert main(["wise-ft", "--zeroshot", str(tmp_path / "a.pt"), "--finetuned", str(tmp_path / "b.pt"),
                     "--alpha", str(alpha), "--out", str(out)]) == 0
        weights = read_checkpoint(out)["model"]
        assert all(torch.equal(weights[k], v) for k, v in expected.state_dict().items())
    assert main(["wise-ft", "--zeroshot", str(tmp_path / "a.pt"), "--finetuned", str(tmp_path / "b.pt"),
                 "--alpha", "0.5", "--out", str(tmp_path / "mid.pt")]) == 0
    key = "image.trunk.blocks.0.attn.qkv.weight"
    mid = read_checkpoint(tmp_path / "mid.pt")["model"][key]
    torch.testing.assert_close(mid, (a.state_dict()[key] + b.state_dict()[key]) / 2)


def test_wise_ft_refuses_mismatched_architectures_naming_the_parameter(tmp_path, capsys):
    vlm.create_model("clip-tiny").save(tmp_path / "a.pt")
    vlm.create_model("clip-tiny", ["text.depth=3"]).save(tmp_path / "b.pt")
    assert main(["wise-ft", "--zeroshot", str(tmp_path / "a.pt"), "--finetuned", str(tmp_path / "b.pt"),
                 "--alpha", "0.5", "--out", str(tmp_path / "c.pt")]) == 2
    assert "text.blocks.2.norm1.weight" in capsys.readouterr().err
    assert not (tmp_path / "c.pt").exists()
