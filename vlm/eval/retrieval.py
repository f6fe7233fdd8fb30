"""Image-text retrieval with late fusion, exhaustive early fusion, and hybrid re-ranking.

- late: encode every image and caption once, one similarity matrix;
- early: the ITM head over every (image, caption) pair, N_images x N_texts fusion passes;
- hybrid (ALBEF's pattern): rank with the late model, re-score only each query's top k with the early model's
  ITM head; below those k, the late ranking is kept. Pairs needed by both directions are scored once.
Each result carries its wall time and its number of fusion passes, so accuracy can be read against cost.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from vlm.eval.pair_scoring import FusionPairScorer, encode_images, encode_texts
from vlm.eval.retrieval_metric import RECALL_KS, two_way_recalls
from vlm.tokenizer import get_tokenizer


def _result(method: str, t2i: torch.Tensor, i2t: torch.Tensor, text_to_image: list[int],
            seconds: float | None, passes: int, ks: tuple[int, ...]) -> dict:
    """Metrics from the text->image (N_texts, N_images) and image->text (N_images, N_texts) score matrices."""
    result = two_way_recalls(t2i, i2t, text_to_image, ks)
    result.update(method=method, images=t2i.shape[1], texts=t2i.shape[0], wall_time_s=seconds, fusion_passes=passes)
    return result


@torch.no_grad()
def late_similarity(model: nn.Module, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """(N_images, N_texts) cosine similarities."""
    return encode_images(model, images) @ encode_texts(model, get_tokenizer(model)(captions)).T


def evaluate_late(model: nn.Module, images: torch.Tensor, captions: list[str], text_to_image: list[int],
                  ks: tuple[int, ...] = RECALL_KS, return_scores: bool = False):
    """Recalls from one similarity matrix; with `return_scores`, also that (N_images, N_texts) matrix."""
    start = time.perf_counter()
    similarity = late_similarity(model, images, captions)
    seconds = time.perf_counter() - start
    result = _result("late", similarity.T, similarity, text_to_image, seconds, 0, ks)
    return (result, similarity) if return_scores else result


def evaluate_early(model: nn.Module, images: torch.Tensor, captions: list[str], text_to_image: list[int],
                   ks: tuple[int, ...] = RECALL_KS, batch_size: int = 128, return_scores: bool = False):
    """Exhaustive ITM over all pairs, patch tokens embedded once per image; `return_scores` as in late."""
    start = time.perf_counter()
    scorer = FusionPairScorer(model, images, get_tokenizer(model)(captions), batch_size)
    scores = scorer.score_all()  # (N_images, N_texts)
    seconds = time.perf_counter() - start
    result = _result("early", scores.T, scores, text_to_image, seconds, scorer.passes, ks)
    return (result, scores) if return_scores else result


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(Q, C) bool: each row's k best candidates, ties to the lower index (the order recall uses)."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask.scatter_(1, order[:, : min(k, scores.shape[1])], True)
    return mask


def reranked_scores(late: torch.Tensor, early: torch.Tensor, k: int) -> torch.Tensor:
    """Scores that rank each row's late top k by their early score, and everything else below, in late order.

    Inside the top k the early scores are returned unchanged, so with k >= C the result is `early` itself.
    """
    in_top = top_k_mask(late, k)
    order = torch.sort(late, dim=1, descending=True, stable=True).indices
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(late.shape[1]).expand_as(order))
    early64 = early.double()
    floor = torch.where(in_top, early64, torch.inf).amin(dim=1, keepdim=True)  # (Q, 1)
    floor = torch.where(torch.isinf(floor), torch.zeros_like(floor), floor)  # k = 0: nothing re-scored
    tail = floor - 1 - position.double()  # strictly below every re-scored pair, in late order
    return torch.where(in_top, early64, tail)


def hybrid_pairs(late: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N_images, N_texts) masks of the pairs text->image and image->text re-ranking re-score."""
    if k < 1:
        raise ValueError(f"hybrid retrieval needs k >= 1, got {k}")
    return top_k_mask(late.T, k).T, top_k_mask(late, k)


def _hybrid_result(late: torch.Tensor, early: torch.Tensor, text_to_image: list[int], k: int,
                   seconds: float | None, passes: int, ks: tuple[int, ...]) -> dict:
    t2i_pairs, i2t_pairs = hybrid_pairs(late, k)
    result = _result("hybrid", reranked_scores(late.T, early.T, k), reranked_scores(late, early, k),
                     text_to_image, seconds, passes, ks)
    result.update(k=k, fusion_passes_text_to_image=int(t2i_pairs.sum()),
                  fusion_passes_image_to_text=int(i2t_pairs.sum()))
    return result


def evaluate_hybrid(late_model: nn.Module, early_model: nn.Module, late_images: torch.Tensor,
                    early_images: torch.Tensor, captions: list[str], text_to_image: list[int], k: int,
                    ks: tuple[int, ...] = RECALL_KS, batch_size: int = 128) -> dict:
    """Late-fusion ranking, early-fusion re-scoring of the top k per query, in both directions.

    `late_images` and `early_images` are the same images at each model's resolution.
    """
    start = time.perf_counter()
    late = late_similarity(late_model, late_images, captions)  # (N_images, N_texts)
    t2i_pairs, i2t_pairs = hybrid_pairs(late, k)
    needed = t2i_pairs | i2t_pairs  # a pair both directions re-score is run once
    scorer = FusionPairScorer(early_model, early_images, get_tokenizer(early_model)(captions), batch_size)
    image_index, text_index = needed.nonzero(as_tuple=True)
    early = torch.full(late.shape, float("nan"))
    early[image_index, text_index] = scorer.score_pairs(image_index, text_index)
    seconds = time.perf_counter() - start
    return _hybrid_result(late, early, text_to_image, k, seconds, scorer.passes, ks)


def hybrid_from_exhaustive(late: torch.Tensor, early: torch.Tensor, text_to_image: list[int], k: int,
                           ks: tuple[int, ...] = RECALL_KS) -> dict:
    """Hybrid re-ranking evaluated from already computed late and exhaustive early score matrices.

    A pair's early score does not depend on which other pairs shared its batch, so looking it up gives
    exactly what `evaluate_hybrid` computes. The passes are those hybrid needs (counted, not run here);
    its wall time is unknown (None): measure it with `evaluate_hybrid` or the per-query latency.
    """
    t2i_pairs, i2t_pairs = hybrid_pairs(late, k)
    return _hybrid_result(late, early, text_to_image, k, None, int((t2i_pairs | i2t_pairs).sum()), ks)
