"""Padding is free work, removed exactly: the text tower runs to the batch's last end-of-text, the fusion stack
to its last real text token, captions are encoded in batches of similar length. Same outputs, same gradients.

The reference is the same model at the full context, the path it takes under torch.compile and tracing
(`static_shapes()` true); OpenCLIP's own text tower is the reference in tests/test_openclip_interchange.py.
"""

from __future__ import annotations

import pytest
import torch

import vlm
import vlm.models.early_fusion
import vlm.models.towers
from vlm.eval.pair_scoring import encode_texts
from vlm.losses import ClipLoss
from vlm.tokenizer import padding_mask

EXACT = dict(rtol=0, atol=1e-5)
MIXED = ["a red circle", "two large blue squares left of a small green star above a yellow hexagon", "",
         "one star", "a purple triangle below an orange circle"]


@pytest.fixture
def full_context(monkeypatch):
    """Switches the cut off: the models run the whole padded input, as they did before it."""
    def use() -> None:
        monkeypatch.setattr(vlm.models.towers, "static_shapes", lambda: True)
        monkeypatch.setattr(vlm.models.early_fusion, "static_shapes", lambda: True)
    return use


def block_lengths(blocks: torch.nn.ModuleList) -> list[int]:
    """Sequence lengths the first block is called with, recorded by a forward hook."""
    seen: list[int] = []
    blocks[0].register_forward_hook(lambda module, args, out: seen.append(out.shape[1]))
    return seen


def test_text_tower_runs_to_the_last_end_of_text_with_the_full_context_embeddings(clip_tiny, full_context):
    ids = vlm.get_tokenizer(clip_tiny)(MIXED)  # (5, 32), the longest caption 16 tokens
    longest = int(padding_mask(ids).sum(dim=1).max())
    seen = block_lengths(clip_tiny.text.blocks)
    with torch.no_grad():
        trimmed = clip_tiny.encode_text(ids, normalize=False)
        full_context()
        full = clip_tiny.encode_text(ids, normalize=False)
    assert seen == [longest, ids.shape[1]]
    torch.testing.assert_close(trimmed, full, **EXACT)
    with pytest.raises(ValueError, match="33 tokens"):  # too long is still an error, even when padded
        clip_tiny.encode_text(torch.cat([ids, torch.zeros(5, 1, dtype=torch.long)], dim=1))


def clip_loss_gradients(model: vlm.DualEncoder, images: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    model.train().zero_grad()
    out = model(images, ids)
    ClipLoss()(out["image_features"], out["text_features"], out["logit_scale"]).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "grad-checkpointing"])
def test_training_gradients_are_the_full_context_ones(clip_tiny, full_context, checkpointing):
    clip_tiny.set_grad_checkpointing(checkpointing)
    ids, images = vlm.get_tokenizer(clip_tiny)(MIXED), torch.randn(len(MIXED), 3, 32, 32)
    trimmed = clip_loss_gradients(clip_tiny, images, ids)
    full_context()
    full = clip_loss_gradients(clip_tiny, images, ids)
    assert trimmed.keys() == full.keys() and "text.positional_embedding" in trimmed
    for name in full:
        torch.testing.assert_close(trimmed[name], full[name], **EXACT, msg=name)


def test_captions_encoded_by_length_come_back_in_their_order_with_their_embeddings(clip_tiny):
    captions = [" ".join(["red circle"] * (i % 7 + 1)) for i in range(23)]  # lengths 3..15 tokens, mixed
    ids = vlm.get_tokenizer(clip_tiny)(captions)
    seen = block_lengths(clip_tiny.text.blocks)
    by_length = encode_texts(clip_tiny, ids, batch_size=4)
    one_at_a_time = torch.cat([clip_tiny.encode_text(ids[i : i + 1]) for i in range(len(ids))]).detach()
    torch.testing.assert_close(by_length, one_at_a_time, **EXACT)
    assert sorted(seen[:6]) == seen[:6] and seen[0] < seen[5]  # sorted batches, the shortest first
    assert encode_texts(clip_tiny, ids[:0]).shape == (0, clip_tiny.config.embed_dim)


def test_the_server_encoder_batches_by_length_and_keeps_the_order(clip_tiny):
    from vlm.index.encoder import Encoder

    encoder = Encoder(clip_tiny)
    texts = MIXED * 8  # 40 texts: batches of 16, 16 and 8
    expected = torch.cat([clip_tiny.encode_text(encoder.tokenizer([t])) for t in texts]).detach().numpy()
    torch.testing.assert_close(torch.from_numpy(encoder.encode_texts(texts)), torch.from_numpy(expected), **EXACT)


def fused(model: vlm.EarlyFusionModel, images: torch.Tensor, ids: torch.Tensor) -> vlm.models.early_fusion.FusionOutput:
    with torch.no_grad():
        return model(images, ids, padding_mask(ids, model.config.pad_token_id))


@pytest.mark.parametrize("layout", ["vlm", "vilt"])
def test_fusion_runs_to_the_last_real_text_token_with_the_same_outputs(images, full_context, layout):
    overrides = ["layout=vilt", "tokenizer=wordpiece", "preprocess=vilt",
                 'vocab=["[PAD]","[UNK]","[CLS]","[SEP]","[MASK]","a","red","circle","two","blue","squares"]'] \
        if layout == "vilt" else []
    model = vlm.create_model("fusion-tiny", ["mlm_head=true", *overrides]).eval()
    ids = vlm.get_tokenizer(model)(["a red circle", "two blue squares", "a circle", "red"])
    real = padding_mask(ids, model.config.pad_token_id)
    seen = block_lengths(model.blocks)
    trimmed = fused(model, images, ids)
    full_context()
    full = fused(model, images, ids)
    longest, patches = int(real.sum(dim=1).max()), model.embed_image(images).shape[1]
    assert [n - patches - (layout == "vlm") for n in seen] == [longest, ids.shape[1]]
    torch.testing.assert_close(trimmed.pooled, full.pooled, **EXACT)
    assert trimmed.text_hidden.shape == full.text_hidden.shape == (*ids.shape, model.config.width)
    torch.testing.assert_close(trimmed.text_hidden[real], full.text_hidden[real], **EXACT)
    assert not trimmed.text_hidden[:, longest:].any()  # the columns cut come back as zeros


def test_fusion_training_gradients_with_mlm_are_the_full_context_ones(images, captions, full_context):
    from vlm.train.tasks import FusionTask

    model = vlm.create_model("fusion-tiny", ["mlm_head=true"])
    ids = vlm.get_tokenizer(model)(captions)
    batch = {"images": images, "text": ids, "text_mask": padding_mask(ids), "image_ids": list(range(len(captions))),
             "captions": captions}

    def gradients() -> dict[str, torch.Tensor]:
        model.train().zero_grad()
        torch.manual_seed(0)  # the same negatives and masked tokens
        loss, _ = FusionTask(model, mlm_weight=1.0, seed=0)(batch)
        loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    trimmed = gradients()
    full_context()
    full = gradients()
    assert trimmed.keys() == full.keys() and "mlm_head.bias" in trimmed
    for name in full:
        torch.testing.assert_close(trimmed[name], full[name], **EXACT, msg=name)
