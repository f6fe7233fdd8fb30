"""What a user expects of the two model families: OpenCLIP's sizes, every parameter trained, padding ignored."""

from __future__ import annotations

import math
from pathlib import Path

import open_clip
import pytest
import torch

import vlm
from vlm.losses import ClipLoss, SigLipLoss, itm_loss, mask_tokens, mlm_loss, vqa_loss
from vlm.models import image_size
from vlm.tokenizer import EOT_ID, SOT_ID, padding_mask

ANSWERS = ["yes", "no", "red", "two"]
SEVEN_MODELS = ["clip-base16", "clip-base32", "clip-small", "clip-tiny",
                "fusion-base32", "fusion-small", "fusion-tiny"]


@pytest.mark.parametrize("ours, theirs", [("clip-base32", "ViT-B-32"), ("clip-base16", "ViT-B-16")])
def test_base_models_have_openclip_parameter_counts(ours, theirs):
    # The meta device builds the full architecture without allocating or initialising weights.
    with torch.device("meta"):
        n_ours = vlm.count_parameters(vlm.create_model(ours))
    n_theirs = vlm.count_parameters(open_clip.create_model(theirs, device="meta"))
    assert abs(n_ours - n_theirs) <= 0.01 * n_theirs, (n_ours, n_theirs)


def test_every_named_model_builds_the_class_its_arch_names():
    assert vlm.list_models() == SEVEN_MODELS
    expected = {"dual_encoder": vlm.DualEncoder, "early_fusion": vlm.EarlyFusionModel}
    for name in SEVEN_MODELS:
        with torch.device("meta"):
            model = vlm.create_model(name)
        assert model.config.name == name
        assert isinstance(model, expected[model.config.arch]), name


def test_dual_encoder_gives_unit_length_embeddings_of_embed_dim(clip_tiny, images, captions):
    ids = vlm.get_tokenizer(clip_tiny)(captions)
    with torch.no_grad():
        out = clip_tiny(images, ids)
    assert out["image_features"].shape == out["text_features"].shape == (len(captions), 32)
    torch.testing.assert_close(out["image_features"].norm(dim=-1), torch.ones(len(captions)))
    torch.testing.assert_close(out["text_features"].norm(dim=-1), torch.ones(len(captions)))
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert out["logit_bias"] is None
    assert image_size(clip_tiny) == 32


def test_logit_scale_is_clamped_at_100(clip_tiny, images, captions):
    with torch.no_grad():
        clip_tiny.logit_scale.fill_(math.log(1000.0))
        out = clip_tiny(images, vlm.get_tokenizer(clip_tiny)(captions))
    assert out["logit_scale"].item() == pytest.approx(100.0)


def test_text_embedding_ignores_tokens_after_end_of_text(clip_tiny, captions):
    """CLIP's causal mask: the end-of-text token has seen the caption and nothing after it."""
    ids = vlm.get_tokenizer(clip_tiny)(captions)
    changed = torch.where(padding_mask(ids), ids, torch.full_like(ids, 777))
    assert not torch.equal(ids, changed)
    with torch.no_grad():
        torch.testing.assert_close(clip_tiny.encode_text(changed), clip_tiny.encode_text(ids), rtol=0, atol=1e-6)


def test_text_longer_than_the_context_is_rejected(clip_tiny, fusion_tiny):
    too_long = torch.ones(1, 33, dtype=torch.long)
    with pytest.raises(ValueError, match="33 tokens"):
        clip_tiny.encode_text(too_long)
    with pytest.raises(ValueError, match="33 tokens"):
        fusion_tiny.score(torch.randn(1, 3, 32, 32), too_long)


def test_changing_a_padding_token_id_changes_no_early_fusion_output(images, captions):
    model = vlm.create_model("fusion-tiny", [f"vqa_answers={ANSWERS}"]).eval()
    ids = vlm.get_tokenizer(model)(captions)
    mask = padding_mask(ids)
    changed = torch.where(mask, ids, torch.randint(1, 40000, ids.shape))
    assert not torch.equal(ids, changed)

    def outputs(token_ids):
        with torch.no_grad():
            fused = model(images, token_ids, mask)
            return {"pooled": fused.pooled, "text_hidden": fused.text_hidden,
                    "mlm": model.mlm_logits(fused.text_hidden), "itm": model.itm_logits(images, token_ids, mask),
                    "score": model.score(images, token_ids, mask),
                    "score_embedded": model.score_embedded(model.embed_image(images), token_ids, mask),
                    "vqa": model.vqa_logits(images, token_ids, mask)}

    before, after = outputs(ids), outputs(changed)
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=1e-6, msg=name)


def test_itm_logits_depend_on_both_the_image_and_the_text(fusion_tiny, images, captions):
    ids = vlm.get_tokenizer(fusion_tiny)(captions)
    other_images = torch.randn_like(images)
    other_ids = ids.roll(1, dims=0)  # each image now sits next to another caption
    with torch.no_grad():
        base = fusion_tiny.itm_logits(images, ids)
        new_image = fusion_tiny.itm_logits(other_images, ids)
        new_text = fusion_tiny.itm_logits(images, other_ids)
    # Every row must change, not just the batch as a whole.
    assert ((new_image - base).abs().amax(dim=-1) > 1e-4).all()
    assert ((new_text - base).abs().amax(dim=-1) > 1e-4).all()


def test_scoring_embedded_patches_equals_scoring_images(fusion_tiny, images, captions):
    ids = vlm.get_tokenizer(fusion_tiny)(captions)
    with torch.no_grad():
        direct = fusion_tiny.score(images, ids)
        embedded = fusion_tiny.score_embedded(fusion_tiny.embed_image(images), ids)
    assert direct.shape == (len(captions),)
    torch.testing.assert_close(embedded, direct)


def test_asking_a_model_without_a_vqa_head_for_answers_says_how_to_add_one(clip_tiny, fusion_tiny, images):
    ids = torch.ones(len(images), 8, dtype=torch.long)
    for model in (clip_tiny, fusion_tiny):
        with pytest.raises(RuntimeError, match="vqa_answers"):
            model.vqa_logits(images, ids)


def assert_every_parameter_has_a_gradient(model: torch.nn.Module) -> None:
    """timm's check: a parameter without a gradient is a branch the loss never reaches."""
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad}"
    zero = [n for n, p in model.named_parameters() if not p.grad.any()]
    assert not zero, f"all-zero gradient for {zero}"


def test_backward_reaches_every_dual_encoder_parameter(images, captions):
    model = vlm.create_model("clip-tiny", ["init_logit_bias=-10", f"vqa_answers={ANSWERS}"]).train()
    assert model.logit_bias is not None and model.vqa_head is not None
    ids = vlm.get_tokenizer(model)(captions)
    out = model(images, ids)
    targets = torch.rand(len(captions), len(ANSWERS))
    loss = (ClipLoss()(**out) + SigLipLoss()(**out)
            + vqa_loss(model.vqa_logits(images, ids), targets))
    loss.backward()
    assert_every_parameter_has_a_gradient(model)


def test_backward_reaches_every_early_fusion_parameter(images, captions):
    model = vlm.create_model("fusion-tiny", [f"vqa_answers={ANSWERS}"]).train()
    ids = vlm.get_tokenizer(model)(captions)
    mask = padding_mask(ids)
    generator = torch.Generator().manual_seed(0)
    loss, _ = itm_loss(model, images, ids, mask, similarity=torch.randn(len(ids), len(ids)), generator=generator)
    masked, labels = mask_tokens(ids, mask, model.config.mask_token_id, model.config.vocab_size,
                                 probability=0.5, special_ids=(SOT_ID, EOT_ID), generator=generator)
    loss = loss + mlm_loss(model.mlm_logits(model(images, masked, mask).text_hidden), labels)
    loss = loss + vqa_loss(model.vqa_logits(images, ids, mask), torch.rand(len(ids), len(ANSWERS)))
    loss.backward()
    assert_every_parameter_has_a_gradient(model)


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md (Python API)", "exec"), namespace)
    assert namespace["similarity"].shape == (2, 2) and namespace["scores"].shape == (2,)
    assert isinstance(namespace["model"], vlm.DualEncoder)
