"""Retrieval over a streamed pairs source: late, exhaustive early and hybrid, with bounded memory.

What each keeps: late fusion the (N, D) embeddings of both sides, and each query's top candidates, ranked a
block of queries at a time (the N_images x N_texts similarity matrix is never whole); exhaustive early fusion
the score matrix it exists to compute, filled a chunk of images at a time (patch tokens of one chunk only);
hybrid the late top-k lists, then the early scores of just those pairs, images re-read a chunk at a time.
Rankings use the same stable order as `retrieval.py` (ties to the lower index), so the recalls are the same.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from data_pipelines.sample import SkipStats
from vlm.eval.pair_scoring import FusionPairScorer, encode_images, encode_texts
from vlm.eval.retrieval_metric import RECALL_KS, two_way_recalls
from vlm.eval.stream import ImageGroups, StreamOptions, distinct_images, stream_images
from vlm.tokenizer import get_tokenizer

# Scores ranked at once: a stable sort of a (queries x candidates) block keeps values, int64 indices and its own
# buffers, so the block is bounded by its size, not by its query count.
MAX_BLOCK_SCORES = 2**22


@dataclass
class Ranking:
    """Each query's best candidates (Q, depth), best first, and the scores they were ranked by."""

    candidates: torch.Tensor
    scores: torch.Tensor


@dataclass
class PairSet:
    """The images that decoded, and the captions of those images, as the retrieval metrics index them."""

    groups: ImageGroups
    kept: torch.Tensor  # distinct-image positions that decoded, ascending
    captions: list[str]
    text_to_image: list[int]
    skipped: dict

    @property
    def image_ids(self) -> list[str]:
        return [self.groups.images.records[p].image_id for p in self.kept.tolist()]


def _pair_set(groups: ImageGroups, kept: torch.Tensor, stats: SkipStats) -> PairSet:
    new_index = {p: i for i, p in enumerate(kept.tolist())}
    captions, text_to_image = [], []
    for record, image in zip(groups.records, groups.record_image, strict=True):
        if image in new_index:
            captions.append(record.caption)
            text_to_image.append(new_index[image])
    if not captions:
        raise ValueError(f"{stats.source}: no usable image-caption pairs for retrieval")
    return PairSet(groups, kept, captions, text_to_image, dict(stats.skipped))


def stream_image_side(dataset, options: StreamOptions, fn) -> tuple[PairSet, list[torch.Tensor]]:
    """fn over each batch of distinct images; the pair set of what decoded and fn's outputs in order."""
    groups = distinct_images(dataset)
    stats = groups.skip_stats()
    positions, outputs = [], []
    for batch_positions, out in stream_images(groups, options, fn, stats):
        positions.append(batch_positions)
        outputs.append(out)
    kept = torch.cat(positions) if positions else torch.zeros(0, dtype=torch.long)
    return _pair_set(groups, kept, stats), outputs


def rank(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, depth: int) -> tuple[Ranking, Ranking]:
    """Late-fusion rankings text->image and image->text, a block of queries at a time.

    Similarities are always computed images x texts, the orientation of `late_similarity`."""
    n_images, n_texts = len(image_embeddings), len(text_embeddings)
    t2i = _ranked_blocks(n_texts, n_images, depth, lambda s, e, buffer: torch.matmul(
        image_embeddings, text_embeddings[s:e].T, out=buffer.view(n_images, e - s)).T)
    i2t = _ranked_blocks(n_images, n_texts, depth, lambda s, e, buffer: torch.matmul(
        image_embeddings[s:e], text_embeddings.T, out=buffer.view(e - s, n_texts)))
    return t2i, i2t


def _ranked_blocks(n_queries: int, n_candidates: int, depth: int, block_scores) -> Ranking:
    """Each query's top `depth`; `block_scores(start, end, buffer)` writes those queries' scores into `buffer`
    and returns them as (end - start, n_candidates).

    The score, value and index buffers are allocated once and reused: allocating them anew per block left
    glibc's heap holding gigabytes it never returned (5,000 x 25,000 peaked at 3.5 GB RSS; 1.2 GB now)."""
    step = max(1, min(n_queries, MAX_BLOCK_SCORES // max(1, n_candidates)))
    scores = torch.empty(step * n_candidates)
    values, indices = torch.empty(step, n_candidates), torch.empty(step, n_candidates, dtype=torch.long)
    parts = []
    for start in range(0, n_queries, step):
        n = min(step, n_queries - start)
        block = block_scores(start, start + n, scores[: n * n_candidates])
        torch.sort(block, dim=1, descending=True, stable=True, out=(values[:n], indices[:n]))
        parts.append(Ranking(indices[:n, :depth].clone(), values[:n, :depth].clone()))
    return _join(parts) if parts else Ranking(torch.zeros(0, depth, dtype=torch.long), torch.zeros(0, depth))


def _top(scores: torch.Tensor, depth: int) -> Ranking:
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :depth].clone()  # not a view
    return Ranking(order, scores.gather(1, order))


def _join(parts: list[Ranking]) -> Ranking:
    return Ranking(torch.cat([p.candidates for p in parts]), torch.cat([p.scores for p in parts]))


def recalls(t2i: Ranking, i2t: Ranking, text_to_image: list[int], ks: tuple[int, ...]) -> dict[str, float]:
    """CLIP_benchmark's recall keys from the rankings (each deep enough for max(ks), or all candidates)."""
    tti = torch.as_tensor(text_to_image, dtype=torch.long)
    t2i_hits = t2i.candidates == tti[:, None]
    i2t_hits = tti[i2t.candidates] == torch.arange(len(i2t.candidates))[:, None]
    result = {}
    for name, hits in (("image_retrieval", t2i_hits), ("text_retrieval", i2t_hits)):
        first = torch.where(hits.any(dim=1), hits.int().argmax(dim=1), torch.full((len(hits),), hits.shape[1]))
        result.update({f"{name}_recall@{k}": 100 * (first < k).double().mean().item() for k in ks})
    return result


def _result(method: str, pairs: PairSet, start: float, passes: int, rec: dict) -> dict:
    rec.update(method=method, images=len(pairs.kept), texts=len(pairs.captions),
               wall_time_s=time.perf_counter() - start, fusion_passes=passes)
    if pairs.skipped:
        rec["skipped_samples"] = pairs.skipped
    return rec


@torch.no_grad()
def stream_late(model: nn.Module, dataset, options: StreamOptions,
                ks: tuple[int, ...] = RECALL_KS) -> tuple[dict, PairSet, Ranking, Ranking]:
    """Late-fusion retrieval: the result, the pair set and both rankings (max(ks) deep)."""
    start = time.perf_counter()
    pairs, parts = stream_image_side(dataset, options, lambda images: encode_images(model, images))
    images = torch.cat(parts)
    texts = encode_texts(model, get_tokenizer(model)(pairs.captions))
    t2i, i2t = rank(images, texts, max(ks))
    return _result("late", pairs, start, 0, recalls(t2i, i2t, pairs.text_to_image, ks)), pairs, t2i, i2t


@torch.no_grad()
def stream_early(model: nn.Module, dataset, options: StreamOptions,
                 ks: tuple[int, ...] = RECALL_KS) -> tuple[dict, PairSet, Ranking, Ranking]:
    """Exhaustive early fusion: every (image, caption) pair, the score matrix filled a chunk of images at a time."""
    start = time.perf_counter()
    ids = get_tokenizer(model)([r.caption for r in dataset.records])
    passes = 0

    def score_chunk(images: torch.Tensor) -> torch.Tensor:
        nonlocal passes
        scorer = FusionPairScorer(model, images, ids)  # patch tokens of this chunk only
        scores = scorer.score_all()  # (chunk, N_records)
        passes += scorer.passes
        return scores

    pairs, rows = stream_image_side(dataset, options, score_chunk)
    kept = set(pairs.kept.tolist())
    columns = [r for r, image in enumerate(pairs.groups.record_image) if image in kept]
    scores = torch.cat(rows)[:, columns]  # (N_images, N_texts) of the images and captions kept
    rec = two_way_recalls(scores.T, scores, pairs.text_to_image, ks)
    depth = max(ks)
    return _result("early", pairs, start, passes, rec), pairs, _top(scores.T, depth), _top(scores, depth)


def rerank(late: Ranking, k: int, early_score) -> Ranking:
    """Each query's late top k re-ordered by `early_score(queries, candidates)`, the rest kept in late order.

    The order `retrieval.reranked_scores` gives: the top k by early score, ties to the lower candidate index."""
    top, rest = late.candidates[:, :k], late.candidates[:, k:]
    top = torch.sort(top, dim=1, stable=True).values  # ties in the early score go to the lower index
    scores = early_score(torch.arange(len(top))[:, None].expand_as(top), top)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return Ranking(torch.cat([top.gather(1, order), rest], dim=1),
                   torch.cat([scores.gather(1, order).to(late.scores.dtype), late.scores[:, k:]], dim=1))


@torch.no_grad()
def score_needed_pairs(model: nn.Module, dataset, options: StreamOptions, pairs: PairSet,
                       needed: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Early scores of the (image, text) pairs coded image * N_texts + text in sorted `needed`, reading the
    images again (at the early model's resolution) a chunk at a time."""
    n_texts = len(pairs.captions)
    ids = get_tokenizer(model)(pairs.captions)
    new_index = torch.full((len(pairs.groups.images),), -1, dtype=torch.long)
    new_index[pairs.kept] = torch.arange(len(pairs.kept))
    scores = torch.full((len(needed),), float("nan"))
    passes = 0

    def score_chunk(positions: torch.Tensor, images: torch.Tensor) -> None:
        nonlocal passes
        chunk = new_index[positions]
        if (chunk < 0).any():
            raise ValueError(f"{pairs.groups.images.stats.source}: an image read differently on a second pass")
        which = torch.isin(needed // n_texts, chunk).nonzero().squeeze(1)
        local = torch.searchsorted(chunk, needed[which] // n_texts)
        scorer = FusionPairScorer(model, images, ids)
        scores[which] = scorer.score_pairs(local, needed[which] % n_texts)
        passes += scorer.passes

    groups = distinct_images(dataset)
    stats = groups.skip_stats()
    for positions, images in stream_images(groups, options, lambda x: x, stats):
        score_chunk(positions, images)
    return scores, passes


@torch.no_grad()
def stream_hybrid(late_model: nn.Module, early_model: nn.Module, late_dataset, early_dataset, options: StreamOptions,
                  k: int, ks: tuple[int, ...] = RECALL_KS) -> tuple[dict, PairSet, Ranking, Ranking]:
    """Late ranking, early re-scoring of each query's top k (both directions, shared pairs run once).

    Only the late top-k lists and the early scores of their pairs are kept: N_texts x k + N_images x k."""
    if k < 1:
        raise ValueError(f"hybrid retrieval needs k >= 1, got {k}")
    start = time.perf_counter()
    pairs, parts = stream_image_side(late_dataset, options, lambda images: encode_images(late_model, images))
    texts = encode_texts(late_model, get_tokenizer(late_model)(pairs.captions))
    t2i, i2t = rank(torch.cat(parts), texts, max(k, *ks))
    n_texts = len(pairs.captions)
    t2i_codes = (t2i.candidates[:, :k] * n_texts + torch.arange(n_texts)[:, None]).reshape(-1)
    i2t_codes = (torch.arange(len(pairs.kept))[:, None] * n_texts + i2t.candidates[:, :k]).reshape(-1)
    needed = torch.unique(torch.cat([t2i_codes, i2t_codes]))  # sorted; a pair both directions need runs once
    scores, passes = score_needed_pairs(early_model, early_dataset, options, pairs, needed)

    def lookup(codes: torch.Tensor) -> torch.Tensor:
        return scores[torch.searchsorted(needed, codes)]

    t2i = rerank(t2i, k, lambda q, c: lookup(c * n_texts + q))
    i2t = rerank(i2t, k, lambda q, c: lookup(q * n_texts + c))
    result = _result("hybrid", pairs, start, passes, recalls(t2i, i2t, pairs.text_to_image, ks))
    result.update(k=k, fusion_passes_text_to_image=len(t2i_codes), fusion_passes_image_to_text=len(i2t_codes))
    return result, pairs, t2i, i2t
