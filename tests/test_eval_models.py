"""Evaluators running real tiny models: retrieval in three ways, zero-shot, VQA, compositional, cost."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

import vlm
from vlm.eval.compositional import caption_scores
from vlm.eval.cost import forward_gflops, model_cost, query_latency
from vlm.eval.pair_scoring import FusionPairScorer
from vlm.eval.retrieval import (
    evaluate_early,
    evaluate_hybrid,
    evaluate_late,
    hybrid_from_exhaustive,
    reranked_scores,
)
from vlm.eval.retrieval_metric import retrieval_metrics
from vlm.eval.vqa import predict_answers
from vlm.eval.zeroshot import zero_shot_logits

COLORS, SHAPES = ["red", "blue", "green", "pink"], ["circle", "square", "star"]
NUM_IMAGES = 12
CAPTIONS = [f"a {c} {s}" for c in COLORS for s in SHAPES] + [f"one {c} {s} alone" for c in COLORS for s in SHAPES]
TEXT_TO_IMAGE = [t % NUM_IMAGES for t in range(len(CAPTIONS))]  # two captions per image
METRIC_KEYS = [f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)]


@pytest.fixture
def retrieval_images() -> torch.Tensor:
    return torch.randn(NUM_IMAGES, 3, 32, 32)


def test_a_pair_scores_the_same_whatever_else_is_in_its_batch(fusion_tiny, retrieval_images):
    scorer = FusionPairScorer(fusion_tiny, retrieval_images, vlm.Tokenizer(32)(CAPTIONS), batch_size=16)
    full = scorer.score_all()
    image_index = torch.randint(0, NUM_IMAGES, (37,))
    text_index = torch.randint(0, len(CAPTIONS), (37,))
    assert torch.equal(scorer.score_pairs(image_index, text_index), full[image_index, text_index])
    ids = vlm.Tokenizer(32)(CAPTIONS[:3])  # the full 32-token context: unused padding changes no score
    torch.testing.assert_close(full[:3, :3].diagonal(), fusion_tiny.score(retrieval_images[:3], ids))


def test_pairs_with_texts_of_many_lengths_score_the_same_in_any_batch_and_as_alone():
    # A shape in which the last block's one-query attention, as CPU's batched matrix-vector product, gave a pair
    # scores that depended on its place in the batch (1e-7 apart); seeded here so the shape and values are fixed.
    torch.manual_seed(0)
    model = vlm.create_model("fusion-tiny").eval()
    images = torch.randn(NUM_IMAGES, 3, 32, 32)
    captions = ["a small red circle left of a large blue square", "two green triangles",
                "a yellow star above a purple hexagon", "one large orange square"]
    ids = vlm.Tokenizer(32)(captions)
    scorer = FusionPairScorer(model, images, ids, batch_size=16)
    full = scorer.score_all()
    image_index, text_index = torch.randint(0, NUM_IMAGES, (37,)), torch.randint(0, len(captions), (37,))
    assert torch.equal(scorer.score_pairs(image_index, text_index), full[image_index, text_index])
    for t in range(len(captions)):  # the whole 32-token context, one text at a time
        alone = model.score(images, ids[t : t + 1].expand(NUM_IMAGES, -1))
        torch.testing.assert_close(full[:, t], alone)


def test_hybrid_with_k_equal_to_the_number_of_candidates_is_exhaustive_early_fusion(
        clip_tiny, fusion_tiny, retrieval_images):
    early = evaluate_early(fusion_tiny, retrieval_images, CAPTIONS, TEXT_TO_IMAGE)
    hybrid = evaluate_hybrid(clip_tiny, fusion_tiny, retrieval_images, retrieval_images, CAPTIONS, TEXT_TO_IMAGE,
                             k=len(CAPTIONS))
    assert {k: hybrid[k] for k in METRIC_KEYS} == {k: early[k] for k in METRIC_KEYS}
    assert early["fusion_passes"] == hybrid["fusion_passes"] == NUM_IMAGES * len(CAPTIONS)


def test_hybrid_rescores_k_candidates_per_query_and_runs_shared_pairs_once(clip_tiny, fusion_tiny, retrieval_images):
    k = 3
    hybrid = evaluate_hybrid(clip_tiny, fusion_tiny, retrieval_images, retrieval_images, CAPTIONS, TEXT_TO_IMAGE, k)
    assert hybrid["fusion_passes_text_to_image"] == len(CAPTIONS) * k
    assert hybrid["fusion_passes_image_to_text"] == NUM_IMAGES * k
    assert max(len(CAPTIONS), NUM_IMAGES) * k <= hybrid["fusion_passes"] <= (len(CAPTIONS) + NUM_IMAGES) * k


def test_hybrid_from_the_exhaustive_scores_is_what_running_hybrid_gives(clip_tiny, fusion_tiny, retrieval_images):
    _, late = evaluate_late(clip_tiny, retrieval_images, CAPTIONS, TEXT_TO_IMAGE, return_scores=True)
    _, early = evaluate_early(fusion_tiny, retrieval_images, CAPTIONS, TEXT_TO_IMAGE, return_scores=True)
    ran = evaluate_hybrid(clip_tiny, fusion_tiny, retrieval_images, retrieval_images, CAPTIONS, TEXT_TO_IMAGE, 3)
    looked_up = hybrid_from_exhaustive(late, early, TEXT_TO_IMAGE, 3)
    assert looked_up["wall_time_s"] is None
    assert {k: v for k, v in looked_up.items() if k != "wall_time_s"} == \
        {k: v for k, v in ran.items() if k != "wall_time_s"}


def test_hybrid_with_k_1_keeps_the_late_fusion_top_1(clip_tiny, fusion_tiny, retrieval_images):
    late = evaluate_late(clip_tiny, retrieval_images, CAPTIONS, TEXT_TO_IMAGE)
    hybrid = evaluate_hybrid(clip_tiny, fusion_tiny, retrieval_images, retrieval_images, CAPTIONS, TEXT_TO_IMAGE, 1)
    assert hybrid["image_retrieval_recall@1"] == late["image_retrieval_recall@1"]
    assert hybrid["text_retrieval_recall@10"] == late["text_retrieval_recall@10"]  # below k: late order
    assert late["fusion_passes"] == 0


def test_rerank_orders_the_top_k_by_early_score_and_keeps_late_order_below():
    late = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    early = torch.tensor([[-1.0, 7.0, 0.5, float("nan"), float("nan")]])
    order = torch.sort(reranked_scores(late, early, k=3), descending=True, stable=True).indices
    assert order.tolist() == [[1, 2, 0, 3, 4]]


def test_late_retrieval_is_recall_of_the_model_similarity_matrix(clip_tiny, retrieval_images):
    result = evaluate_late(clip_tiny, retrieval_images, CAPTIONS, TEXT_TO_IMAGE)
    with torch.no_grad():
        expected = retrieval_metrics(clip_tiny.similarity(retrieval_images, vlm.Tokenizer(32)(CAPTIONS)),
                                     TEXT_TO_IMAGE)
    assert {k: result[k] for k in METRIC_KEYS} == pytest.approx(expected)


TINY_OPENCLIP = dict(
    embed_dim=24,
    vision_cfg=dict(image_size=32, patch_size=16, width=64, layers=1, head_width=64),
    text_cfg=dict(context_length=20, vocab_size=49408, width=64, heads=1, layers=1),
)


def test_zero_shot_of_an_imported_openclip_model_matches_openclip(tmp_path):
    theirs = open_clip.CLIP(**TINY_OPENCLIP).eval()
    torch.save(theirs.state_dict(), tmp_path / "tiny.pt")
    ours = vlm.import_openclip(tmp_path / "tiny.pt", model_cfg=TINY_OPENCLIP).eval()
    classnames, templates = ["red circle", "blue square", "green star"], ["a photo of a {}.", "a {}."]
    images = torch.randn(5, 3, 32, 32)
    logits, passes = zero_shot_logits(ours, images, classnames, templates)
    with torch.no_grad():  # CLIP's recipe, with OpenCLIP's own towers
        tokens = open_clip.get_tokenizer("ViT-B-32", context_length=20)
        classifier = torch.stack([
            F.normalize(F.normalize(theirs.encode_text(tokens([t.format(c) for t in templates])), dim=-1)
                        .mean(dim=0), dim=0)
            for c in classnames])
        expected = F.normalize(theirs.encode_image(images), dim=-1) @ classifier.T
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    assert passes == 0


def test_early_fusion_zero_shot_averages_itm_over_templates(fusion_tiny):
    images = torch.randn(2, 3, 32, 32)
    logits, passes = zero_shot_logits(fusion_tiny, images, ["cat", "dog"], ["a {}.", "the {}"])
    with torch.no_grad():
        dog = fusion_tiny.score(images[1:].expand(2, -1, -1, -1), vlm.Tokenizer(32)(["a dog.", "the dog"]))
    torch.testing.assert_close(logits[1, 1], dog.mean())
    assert passes == 2 * 2 * 2


def test_vqa_prediction_is_the_top_answer_of_either_family():
    answers = "[red,blue,'2','3']"
    for name in ("clip-tiny", "fusion-tiny"):
        model = vlm.create_model(name, overrides=[f"vqa_answers={answers}"]).eval()
        images, questions = torch.randn(3, 3, 32, 32), ["what colour?", "how many?", "what colour is it?"]
        with torch.no_grad():
            top = model.vqa_logits(images, vlm.Tokenizer(32)(questions)).argmax(-1).tolist()
        assert predict_answers(model, images, questions) == [["red", "blue", "2", "3"][i] for i in top]


def test_compositional_scores_are_cosines_for_late_and_itm_for_early(clip_tiny, fusion_tiny, images, captions):
    negatives = list(reversed(captions))
    true, negative, passes = caption_scores(clip_tiny, images, captions, negatives)
    with torch.no_grad():
        expected = clip_tiny.similarity(images, vlm.Tokenizer(32)(negatives)).diagonal()
    torch.testing.assert_close(negative, expected)
    assert passes == 0
    true, negative, passes = caption_scores(fusion_tiny, images, captions, negatives)
    with torch.no_grad():
        torch.testing.assert_close(true, fusion_tiny.score(images, vlm.Tokenizer(32)(captions)))
    assert passes == 2 * len(captions)


def test_flops_are_counted_with_attention(clip_tiny, fusion_tiny):
    flops = forward_gflops(clip_tiny)
    # clip-tiny's image tower on one 32 px image (17 tokens of width 32, 2 blocks), worked out by hand; the
    # last block runs at the CLS row only but for its keys and values (towers.py block_at):
    patch = 2 * 16 * (3 * 8 * 8) * 32
    linear = 2 * 17 * (32 * 96 + 32 * 32 + 32 * 128 + 128 * 32) + 2 * (17 * 32 * 96 + 32 * 32 + 32 * 128 + 128 * 32)
    # q @ k.T and attn @ v in the first block; the last block's one-query attention runs as products and sums
    # (batch-invariant where CPU's batched matrix-vector products are not), which the counter does not see
    attention = 2 * (2 * 17 * 17 * 32)
    projection = 2 * 32 * 32
    assert flops["gflops_image"] * 1e9 == patch + linear + attention + projection
    assert flops["gflops_pair"] * 1e9 == 2 * 32  # a dot product of two 32-d embeddings
    early = forward_gflops(fusion_tiny)
    # a pass of the joint stack over 16 patches and the probe's 13 tokens (it runs to the last real token)
    assert early["gflops_pair"] > 5 * early["gflops_image"] > 0


def test_cost_and_latency_are_measured(clip_tiny, fusion_tiny):
    cost = model_cost(fusion_tiny, batch_size=8, repeats=1)
    assert cost["parameters"] == sum(p.numel() for p in fusion_tiny.parameters())
    assert cost["score_pairs_per_s"] > 0 and cost["encode_pairs_per_s"] > 0
    images = torch.randn(10, 3, 32, 32)
    latency = query_latency(clip_tiny, fusion_tiny, images, images, CAPTIONS[:4], ks=(3,))
    assert set(latency) == {"late", "early", "hybrid@3"}
    assert [latency[m]["fusion_passes_per_query"] for m in ("late", "early", "hybrid@3")] == [0, 10, 3]
    assert all(0 < v["p50_ms"] <= v["p99_ms"] for v in latency.values())
