"""The last block of a stack that is read at one token runs at that token only (`block_at`): the image tower's
CLS, the text tower's end-of-text, the fusion stack's pooled position for the ITM, rank and VQA heads. The
reference is the same model with every block run in full, as timm's forward and the block list run them."""

from __future__ import annotations

import pytest
import torch

import vlm
from vlm.models.towers import block_at

EXACT = dict(rtol=0, atol=2e-5)
CAPTIONS = ["a red circle", "two large blue squares left of a small green star above a yellow hexagon", "",
            "a purple triangle below an orange circle"]


def full_text_features(tower, ids: torch.Tensor) -> torch.Tensor:
    eot = (ids == 49407).int().argmax(dim=-1)
    x = tower.token_embedding(ids) + tower.positional_embedding[: ids.shape[1]]
    for block in tower.blocks:
        x = block(x, is_causal=True)
    return tower.ln_final(x)[torch.arange(len(ids)), eot] @ tower.text_projection


def test_towers_equal_their_full_forward_values_and_gradients():
    torch.manual_seed(0)
    model = vlm.create_model("clip-tiny").train()
    images = torch.randn(4, 3, 32, 32)
    ids = vlm.get_tokenizer(model)(CAPTIONS)
    image_fast, text_fast = model.image(images), model.text(ids)
    image_full, text_full = model.image.trunk(images) @ model.image.proj, full_text_features(model.text, ids)
    torch.testing.assert_close(image_fast, image_full, **EXACT)
    torch.testing.assert_close(text_fast, text_full, **EXACT)
    fast = torch.autograd.grad((image_fast.sum() + text_fast.square().sum()), list(model.parameters()),
                               allow_unused=True)
    full = torch.autograd.grad((image_full.sum() + text_full.square().sum()), list(model.parameters()),
                               allow_unused=True)
    for (name, _), a, b in zip(model.named_parameters(), fast, full, strict=False):
        if b is None:
            continue
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("layout", ["vlm", "vilt"])
def test_fusion_pooled_only_equals_the_full_stack(layout):
    torch.manual_seed(0)
    overrides = {"layout": layout, "match_head": "rank"} if layout == "vilt" else {}
    config = vlm.models.registry.get_model_config("fusion-tiny")
    import dataclasses
    model = vlm.models.registry.build_model(dataclasses.replace(config, **overrides)).eval()
    images = torch.randn(4, 3, config.image_size, config.image_size)
    ids = vlm.get_tokenizer(model)(CAPTIONS)
    mask = ids != model.config.pad_token_id
    full = model(images, ids, mask).pooled
    fast = model(images, ids, mask, pooled_only=True)
    assert fast.text_hidden is None
    torch.testing.assert_close(fast.pooled, full, **EXACT)


def test_block_at_reads_one_row_of_a_masked_block():
    torch.manual_seed(0)
    block = vlm.create_model("fusion-tiny").blocks[0].eval()
    x = torch.randn(3, 9, block.attn.qkv.in_features)
    mask = torch.rand(3, 1, 1, 9) > 0.3
    mask[..., 4] = True
    rows = torch.tensor([4, 0, 8])
    torch.testing.assert_close(block_at(block, x, rows, mask), block(x, attn_mask=mask)[torch.arange(3), rows], **EXACT)
