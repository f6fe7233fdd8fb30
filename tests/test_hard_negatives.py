"""Compositional hard negatives: real swaps, from the shapes world's grammar or the word-swap heuristic, and
a training loss that changes with them on and stays what it was with them off (the default)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

import vlm
from data_pipelines import Collator, generate_shapes_world, open_source
from data_pipelines.negatives import HardNegativeCollator, HardNegatives, swap_attributes, swap_objects, swap_relation
from data_pipelines.shapes.language import claim_truth
from data_pipelines.transforms import eval_transform
from vlm.config import ConfigError
from vlm.losses import ClipLoss
from vlm.train import load_train_config
from vlm.train.data import with_hard_negatives
from vlm.train.tasks import ContrastiveTask, FusionTask


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes_world(root, train=24, val=8, test=0, heldout=8, image_size=32, seed=3, classify_per_class=1)
    return root


def words(text: str) -> Counter:
    return Counter(text.replace(",", " ").split())


@pytest.mark.parametrize("caption,swap,expected", [
    ("a red car next to a blue bus", swap_attributes, "a blue car next to a red bus"),
    ("a small red circle left of a large blue square", swap_attributes,
     "a small blue circle left of a large red square"),
    ("a red car next to a blue bus", swap_objects, "a red bus next to a blue car"),
    ("a man riding a horse on the beach", swap_objects, "a horse riding a man on the beach"),
    ("the cat is under the table", swap_relation, "the table is under the cat"),
    ("a dog on a couch, with a ball", swap_relation, "a couch on a dog, with a ball"),
])
def test_heuristic_swaps_words_of_plain_english(caption, swap, expected):
    negative = swap(caption)
    assert negative == expected
    assert words(negative) == words(caption)  # the same words, in other places


@pytest.mark.parametrize("caption", ["a picture of something", "sunset", "a small red circle"])
def test_heuristic_gives_nothing_rather_than_a_copy(caption):
    for swap in (swap_attributes, swap_objects, swap_relation):
        assert swap(caption) != caption
    assert swap_relation(caption) is None


CLAIM = re.compile(r"^a (\w+) (\w+) (\w+)(?: (left of|right of|above|below) a (\w+) (\w+) (\w+))?$")


def parse_claim(caption: str) -> tuple:
    parts = CLAIM.match(caption).groups()
    return (parts[:3],) if parts[3] is None else (parts[:3], parts[3], parts[4:])


def test_shapes_negatives_are_real_swaps_false_in_the_scene(shapes):
    """From the world's grammar (make_negatives, as the evaluation's): each negative is clearly false in its
    scene, a relation swap is a true claim with its sides swapped, an attribute swap a true claim with two
    colours (or sizes) swapped, and none names a held-out colour-shape pair."""
    negatives = HardNegatives.for_shapes_world(shapes, "train", per_caption=3)
    held_out = [tuple(c) for c in json.loads((shapes / "world.json").read_text())["heldout_combos"]]
    seen_types = set()
    for record in open_source(shapes, split="train").records:
        found = negatives(record.caption, record.image_id)
        assert found == negatives(record.caption, record.image_id)  # a pure function of the sample
        assert len({n for n, _ in found}) == len(found) <= 3
        objects = negatives.scenes[record.image_id]
        for negative, kind in found:
            seen_types.add(kind)
            claim = parse_claim(negative)
            assert negative != record.caption and claim_truth(claim, objects) is False, negative
            assert not any(f"{c} {s}" in negative for c, s in held_out), negative
            if kind == "relation":
                assert claim_truth((claim[2], claim[1], claim[0]), objects) is True
            if kind == "attribute":
                (sa, ca, ha), rel, (sb, cb, hb) = claim
                back = [((sa, cb, ha), rel, (sb, ca, hb)), ((sb, ca, ha), rel, (sa, cb, hb))]
                assert any(claim_truth(c, objects) is True for c in back), negative
    assert seen_types == {"attribute", "object", "relation"}


def tiny_batch(shapes: Path, model, types=("attribute", "object", "relation"), per_caption: int = 2) -> dict:
    data = open_source(shapes, split="train", transform=eval_transform(32))
    samples = [data[i] for i in range(6)]
    collate = HardNegativeCollator(Collator(vlm.get_tokenizer(model), pad_to_longest=True),
                                   HardNegatives.for_shapes_world(shapes, "train", types=types,
                                                                  per_caption=per_caption))
    return collate(samples)


def test_batch_carries_the_negatives_token_ids(shapes, clip_tiny):
    batch = tiny_batch(shapes, clip_tiny)
    B = len(batch["image_ids"])
    assert batch["hard_negative_text"].shape[:2] == (B, 2) == batch["hard_negative_valid"].shape
    assert batch["hard_negative_mask"].shape == batch["hard_negative_text"].shape
    assert batch["hard_negative_valid"].any()
    tokenizer = vlm.get_tokenizer(clip_tiny)
    i, k = batch["hard_negative_valid"].nonzero()[0].tolist()
    expected = tokenizer([batch["hard_negative_captions"][i][k]])[0, : batch["hard_negative_text"].shape[-1]]
    assert torch.equal(batch["hard_negative_text"][i, k], expected)


def test_negatives_change_the_contrastive_loss_and_off_it_is_clip_loss(shapes, clip_tiny):
    batch = tiny_batch(shapes, clip_tiny)
    plain = {k: v for k, v in batch.items() if not k.startswith("hard_negative")}
    task = ContrastiveTask(clip_tiny)
    with torch.no_grad():
        with_negatives, _ = task(batch)
        without, _ = task(plain)
        out = clip_tiny(plain["images"], plain["text"])
        expected = ClipLoss()(out["image_features"], out["text_features"], out["logit_scale"])
    assert torch.equal(without, expected)
    assert with_negatives > without  # more (hard) wrong texts in every image's softmax


def test_negatives_add_itm_pairs_for_early_fusion(shapes, fusion_tiny):
    batch = tiny_batch(shapes, fusion_tiny)
    plain = {k: v for k, v in batch.items() if not k.startswith("hard_negative")}
    task = FusionTask(fusion_tiny, mlm_weight=0.0)
    with torch.no_grad():
        with_negatives, _ = task(batch)
        without, _ = task(plain)
        again, _ = task(plain)
    assert torch.equal(without, again)  # same step, same sampled negatives
    assert not torch.allclose(with_negatives, without)


def test_off_by_default_the_training_collator_is_unchanged(shapes):
    config = load_train_config(None, base={"model": "clip-tiny", "data": {"train": str(shapes)}})
    assert config.hard_negatives.enabled is False
    collate = Collator(vlm.get_tokenizer(vlm.create_model("clip-tiny")))
    assert with_hard_negatives(collate, config) is collate
    on = load_train_config(None, ["hard_negatives.enabled=true", "hard_negatives.types=[relation]"],
                           base={"model": "clip-tiny", "data": {"train": str(shapes)}})
    wrapped = with_hard_negatives(collate, on)
    assert isinstance(wrapped, HardNegativeCollator) and wrapped.negatives.types == ("relation",)


def test_bad_negatives_settings_are_named():
    with pytest.raises(ConfigError, match="hard_negatives.types"):
        load_train_config(None, ["hard_negatives.enabled=true", "hard_negatives.types=[colour]"],
                          base={"model": "clip-tiny"})
    with pytest.raises(ConfigError, match="objective clip or fusion"):
        load_train_config(None, ["hard_negatives.enabled=true", "objective=siglip"], base={"model": "clip-tiny"})


@pytest.mark.parametrize("model,objective", [("clip-tiny", "clip"), ("fusion-tiny", "fusion")])
def test_training_with_negatives_runs_for_both_families(shapes, tmp_path, model, objective):
    """Through `vlm train`'s own path, with gradient accumulation cutting the (B, K, T) negatives too."""
    from vlm.models.checkpoint import read_checkpoint
    from vlm.train import train

    base = {"model": model, "objective": objective, "steps": 2, "batch_size": 8, "grad_accum": 2, "warmup_steps": 1,
            "mlm_weight": 0.0, "log_every": 1, "eval_every": 1000, "save_every": 1000,
            "data": {"train": str(shapes), "num_workers": 0, "val_samples": 8},
            "hard_negatives": {"enabled": True, "types": ["attribute", "relation"], "per_caption": 2}}
    checkpoint = train(load_train_config(None, base=base), tmp_path / "run")
    assert read_checkpoint(checkpoint)["step"] == 2
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
