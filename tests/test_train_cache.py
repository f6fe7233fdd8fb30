"""What the training data path keeps in memory: decoded images with `data.cache_mb` (each file decoded once, the
batches unchanged), token ids by text in the collator."""

from __future__ import annotations

import torch

import data_pipelines.records
import vlm
from data_pipelines import generate_shapes_world
from vlm.train import TrainConfig, train
from vlm.train.config import DataConfig
from vlm.train.data import make_collator, open_split


def count_decodes(monkeypatch) -> list[str]:
    decoded: list[str] = []
    real = data_pipelines.records.decode_image

    def counting(path, *args, **kwargs):
        decoded.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(data_pipelines.records, "decode_image", counting)
    return decoded


def test_cached_images_decode_once_and_give_the_same_samples(tmp_path, monkeypatch):
    world = generate_shapes_world(tmp_path / "shapes", train=12, val=0, test=0, heldout=0, image_size=32, seed=0)
    config = vlm.get_model_config("clip-tiny")
    plain = open_split(str(world), "train", "clip", config, augment=False)
    cached = open_split(str(world), "train", "clip", config, augment=False, cache_mb=64)
    decoded = count_decodes(monkeypatch)
    for _ in range(3):  # three epochs; a shapes world has 3 captions per image
        for i in range(len(cached)):
            assert torch.equal(cached[i].image, plain[i].image)
    files = {r.image for r in cached.records}
    assert len(decoded) == len(plain) * 3 + len(files)  # the plain set decodes every time, the cached once a file
    augmented = open_split(str(world), "train", "clip", config, augment=True, cache_mb=64)
    assert augmented.image_cache is None  # random crops differ every epoch


def test_the_cache_stops_at_its_budget(tmp_path):
    world = generate_shapes_world(tmp_path / "shapes", train=12, val=0, test=0, heldout=0, image_size=32, seed=0)
    one_image_mb = 3 * 32 * 32 * 4 / 2**20
    cached = open_split(str(world), "train", "clip", vlm.get_model_config("clip-tiny"), augment=False,
                        cache_mb=2.5 * one_image_mb)
    for i in range(len(cached)):
        cached[i]
    assert len(cached.image_cache.images) == 2


def test_token_ids_are_cached_by_text_and_equal_the_tokenizer():
    tokenizer = vlm.get_tokenizer(vlm.create_model("clip-tiny"))
    collate = make_collator(tokenizer)
    texts = ["a red circle", "two blue squares", "a red circle"]
    ids, _ = collate._tokenize(texts)
    assert torch.equal(ids, tokenizer(texts)[:, : ids.shape[1]]) and len(collate.token_cache) == 2
    again, _ = collate._tokenize(["two blue squares", "a green star"])
    assert torch.equal(again, tokenizer(["two blue squares", "a green star"])[:, : again.shape[1]])


def test_training_with_the_cache_gives_the_same_weights(tmp_path):
    world = generate_shapes_world(tmp_path / "shapes", train=24, val=8, test=0, heldout=0, image_size=32, seed=1)
    weights = []
    for cache_mb in (0, 64):
        config = TrainConfig(model="clip-tiny", objective="clip", steps=8, batch_size=8, warmup_steps=2,
                             save_every=100, eval_every=100, log_every=4,
                             data=DataConfig(train=str(world), num_workers=1, cache_mb=cache_mb))
        checkpoint = train(config, tmp_path / f"run{cache_mb}")
        weights.append(torch.load(checkpoint, weights_only=False)["model"])
    for key, value in weights[0].items():
        torch.testing.assert_close(weights[1][key], value, rtol=0, atol=0, msg=key)
