"""Inference at lower precision: int8 copies stay close to float32 and leave the original alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vlm
from vlm.models.precision import with_precision
from vlm.tokenizer import get_tokenizer


def test_fp32_is_the_model_itself(clip_tiny):
    assert with_precision(clip_tiny, "fp32") is clip_tiny


def test_unknown_precision_names_the_allowed_values(clip_tiny):
    with pytest.raises(ValueError, match="fp32, bf16, int8, auto"):
        with_precision(clip_tiny, "fp16")


@torch.inference_mode()
def test_int8_embeddings_are_close_and_the_original_untouched(clip_tiny, images):
    before = {k: v.clone() for k, v in clip_tiny.state_dict().items()}
    int8 = with_precision(clip_tiny, "int8")
    fp32_images, int8_images = clip_tiny.encode_image(images), int8.encode_image(images)
    assert F.cosine_similarity(fp32_images, int8_images).min() > 0.99
    assert not torch.equal(fp32_images, int8_images)  # int8 really ran
    after = clip_tiny.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert type(clip_tiny.image.trunk.blocks[0].mlp.fc1.weight) is torch.nn.Parameter
    assert "Int8Tensor" in type(int8.image.trunk.blocks[0].mlp.fc1.weight).__name__  # torchao's int8 ran


@torch.inference_mode()
def test_int8_late_fusion_keeps_text_queries_exact(clip_tiny, captions):
    """Only the image tower goes int8: text int8 cost more accuracy (BENCHMARKS), and float32 text is fast."""
    ids = get_tokenizer(clip_tiny)(captions)
    assert torch.equal(with_precision(clip_tiny, "int8").encode_text(ids), clip_tiny.encode_text(ids))


@torch.inference_mode()
def test_int8_fusion_scores_agree(fusion_tiny, images, captions):
    ids = get_tokenizer(fusion_tiny)(captions)
    fp32_scores = fusion_tiny.score(images, ids)
    int8_scores = with_precision(fusion_tiny, "int8").score(images, ids)
    assert F.cosine_similarity(fp32_scores, int8_scores, dim=0) > 0.99


@torch.inference_mode()
def test_int8_embedding_of_an_input_does_not_depend_on_its_batch(clip_tiny, images):
    """An index built in batches of 64 and a query encoded alone must agree: each row is quantized on its own."""
    int8 = with_precision(clip_tiny, "int8")
    louder = torch.cat([images[:1], 5 * images[1:]])  # batch mates with far larger activations
    torch.testing.assert_close(int8.encode_image(images[:1]), int8.encode_image(louder)[:1], rtol=0, atol=1e-6)
    torch.testing.assert_close(int8.encode_image(images)[2:3], int8.encode_image(images[2:3]), rtol=0, atol=1e-6)


@torch.inference_mode()
def test_int8_keeps_flat_images_whose_patch_filters_cancel(clip_tiny):
    """A flat patch embeds as each filter's weight sum, and trained filters (edge detectors) nearly cancel: a small
    difference of large numbers that int8 weights get wrong. Flat regions are common (sky, walls, the shapes
    world's background), so the patch embedding stays float32."""
    torch.manual_seed(0)
    conv = clip_tiny.image.trunk.patch_embed.proj
    w = torch.randn_like(conv.weight)
    conv.weight.copy_(w - w.mean(dim=(1, 2, 3), keepdim=True) + 0.002 * torch.randn(len(w), 1, 1, 1))
    flat = torch.ones(4, 3, 32, 32) * torch.tensor([1.9, -0.5, 0.7, 2.1])[:, None, None, None]
    fp32, int8 = clip_tiny.encode_image(flat), with_precision(clip_tiny, "int8").encode_image(flat)
    assert F.cosine_similarity(fp32, int8).min() > 0.999


def test_int8_compiles_real_models_by_default_and_not_the_tiny_ones(clip_tiny, monkeypatch):
    """torchao's int8 is slower than float32 unless inductor compiles it, so real models compile; test-sized ones
    stay eager (a compile costs minutes), and VLM_INT8_COMPILE=0 turns it off for the commands."""
    from vlm.models.precision import compiles_by_default

    base = vlm.create_model("clip-base32")
    assert compiles_by_default(base) and not compiles_by_default(clip_tiny)
    assert compiles_by_default(vlm.create_model("fusion-base32"))  # its pair scoring: 2.72x fp32 compiled
    assert not compiles_by_default(vlm.create_model("fusion-small"))  # the quickstart's: a compile buys nothing
    monkeypatch.setenv("VLM_INT8_COMPILE", "0")
    assert not compiles_by_default(base)
    int8 = with_precision(clip_tiny, "int8")
    assert not isinstance(int8.image, torch._dynamo.eval_frame.OptimizedModule)


def test_a_server_compiles_its_int8_image_tower_before_it_is_ready(monkeypatch):
    """The first request must not wait minutes for a compile: the encoder runs both compiled shapes at load."""
    from vlm.index import encoder as encoder_module

    model = vlm.create_model("clip-tiny")
    monkeypatch.setattr(encoder_module, "compiles_by_default", lambda m: True)
    calls = []
    encoder = encoder_module.Encoder(model, "fp32")
    assert not encoder.compiles  # fp32 never compiles
    encoder = encoder_module.Encoder(model, "int8")
    monkeypatch.setattr(encoder, "encode_pixels", lambda pixels: calls.append(tuple(pixels.shape)))
    encoder.warm_up()
    assert [shape[0] for shape in calls] == [1, 2]
