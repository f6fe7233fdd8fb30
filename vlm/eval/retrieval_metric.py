"""Retrieval recall from a score matrix: the part of retrieval evaluation that knows nothing about models.

Convention (CLIP_benchmark's): `image_retrieval_recall@k` is text -> image (each caption retrieves images),
`text_retrieval_recall@k` is image -> text (each image retrieves captions; a hit if any of its captions is in
the top k). Ties are broken by candidate index (a stable sort), so a result never depends on the sort kernel.
Recalls are in percent, like every accuracy in vlm's reports.
"""

from __future__ import annotations

from math import comb

import torch

RECALL_KS = (1, 5, 10)


def positives_matrix(text_to_image: torch.Tensor | list[int], num_images: int) -> torch.Tensor:
    """(N_texts, N_images) bool, True where text t describes image i."""
    text_to_image = torch.as_tensor(text_to_image, dtype=torch.long)
    if text_to_image.numel() and (text_to_image.min() < 0 or text_to_image.max() >= num_images):
        raise ValueError(f"text_to_image holds image indices outside [0, {num_images})")
    positives = torch.zeros(len(text_to_image), num_images, dtype=torch.bool)
    positives[torch.arange(len(text_to_image)), text_to_image] = True
    return positives


def first_hit_rank(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """0-based rank of the best-ranked positive for each query (row); `len(row)` when a row has none."""
    if scores.shape != positives.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and positives {tuple(positives.shape)} differ in shape")
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # (Q, C)
    hits = torch.gather(positives, 1, order)
    ranks = torch.where(hits.any(dim=1), hits.int().argmax(dim=1), torch.full_like(order[:, 0], scores.shape[1]))
    return ranks


def recall_at_k(scores: torch.Tensor, positives: torch.Tensor, ks: tuple[int, ...] = RECALL_KS) -> dict[int, float]:
    """Percent of queries (rows) with at least one positive among their top k candidates, for each k."""
    ranks = first_hit_rank(scores.float(), positives.bool())
    return {k: 100 * (ranks < k).double().mean().item() for k in ks}


def retrieval_metrics(similarity: torch.Tensor, text_to_image: torch.Tensor | list[int],
                      ks: tuple[int, ...] = RECALL_KS) -> dict[str, float]:
    """Both directions from one (N_images, N_texts) score matrix, with CLIP_benchmark's key names."""
    return two_way_recalls(similarity.T, similarity, text_to_image, ks)


def two_way_recalls(t2i: torch.Tensor, i2t: torch.Tensor, text_to_image: torch.Tensor | list[int],
                    ks: tuple[int, ...] = RECALL_KS) -> dict[str, float]:
    """Recalls from a text->image (N_texts, N_images) and an image->text (N_images, N_texts) score matrix,
    which differ when each direction was re-ranked on its own (hybrid retrieval)."""
    positives = positives_matrix(text_to_image, t2i.shape[1])  # (N_texts, N_images)
    metrics = {f"image_retrieval_recall@{k}": v for k, v in recall_at_k(t2i, positives, ks).items()}
    metrics.update({f"text_retrieval_recall@{k}": v for k, v in recall_at_k(i2t, positives.T, ks).items()})
    return metrics


def chance_recall_at_k(positives: torch.Tensor, ks: tuple[int, ...] = RECALL_KS) -> dict[int, float]:
    """Expected recall of a uniformly random ranking: 1 - C(C - m, k) / C(C, k) for a query with m positives."""
    num_candidates = positives.shape[1]
    per_query_positives = positives.sum(dim=1).tolist()
    result = {}
    for k in ks:
        k_eff = min(k, num_candidates)
        misses = [comb(num_candidates - m, k_eff) / comb(num_candidates, k_eff) for m in per_query_positives]
        result[k] = 100 * (1 - sum(misses) / len(misses))
    return result


def chance_retrieval_metrics(text_to_image: torch.Tensor | list[int], num_images: int,
                             ks: tuple[int, ...] = RECALL_KS) -> dict[str, float]:
    """The blind baseline for retrieval: what a random ranking scores on average, exactly (no sampling)."""
    positives = positives_matrix(text_to_image, num_images)
    metrics = {f"image_retrieval_recall@{k}": v for k, v in chance_recall_at_k(positives, ks).items()}
    metrics.update({f"text_retrieval_recall@{k}": v for k, v in chance_recall_at_k(positives.T, ks).items()})
    return metrics
