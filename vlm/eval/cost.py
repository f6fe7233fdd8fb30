"""What each family costs: parameters, forward FLOPs, measured throughput and per-query latency.

FLOPs are counted by torch's FlopCounterMode on a real forward pass, with attention forced onto the math
path so its matmuls are seen (the fused CPU kernel is invisible to the counter). Times are wall-clock
(`time.perf_counter`) on whatever device the tensors are on, after a warm-up, without gradients.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vlm.eval.pair_scoring import FusionPairScorer, encode_images, encode_texts
from vlm.models import count_parameters, image_size
from vlm.tokenizer import get_tokenizer, padding_mask

PROBE_CAPTION = "a small red circle left of a large blue square"


def count_flops(fn: Callable[[], object]) -> int:
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def count_training_flops(loss_fn: Callable[[], torch.Tensor]) -> int:
    """FLOPs of one training step: the forward that `loss_fn` runs and the backward of the loss it returns
    (the optimizer's element-wise update is left out, as in the usual 6 x parameters x tokens count)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        loss_fn().backward()
    return counter.get_total_flops()


def forward_gflops(model: nn.Module) -> dict[str, float]:
    """GFLOPs of one image, one text and one pair (given the two sides already encoded / embedded).

    Late fusion: the image and text towers, and a dot product per pair. Early fusion: the patch embedding,
    the token embedding (lookups: no FLOPs) and one pass of the joint stack with the ITM head per pair.
    """
    image = torch.randn(1, 3, image_size(model), image_size(model))
    ids = get_tokenizer(model)([PROBE_CAPTION])
    if model.config.arch == "dual_encoder":
        img, txt = model.encode_image(image).detach(), model.encode_text(ids).detach()
        flops = {"image": count_flops(lambda: model.encode_image(image)),
                 "text": count_flops(lambda: model.encode_text(ids)),
                 "pair": count_flops(lambda: img @ txt.T)}
    else:
        tokens = model.embed_image(image).detach()
        flops = {"image": count_flops(lambda: model.embed_image(image)),
                 "text": count_flops(lambda: model.embed_text(ids)),
                 "pair": count_flops(lambda: model.score_embedded(tokens, ids, padding_mask(ids)))}
    return {f"gflops_{side}": n / 1e9 for side, n in flops.items()}


def _best_seconds(fn: Callable[[], object], repeats: int, warmup: bool = True) -> float:
    """The fastest of `repeats` timed calls (timeit's practice: slower runs measure other processes)."""
    if warmup:
        fn()  # first calls allocate and pick kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def throughput(model: nn.Module, batch_size: int = 64, repeats: int = 3) -> dict[str, float]:
    """Measured pairs/s for encoding (both sides of `batch_size` pairs) and for scoring encoded pairs.

    Late fusion scores a (batch x batch) block of dot products; early fusion scores `batch_size` pairs
    through its joint stack, which is the whole of its cost.
    """
    images = torch.randn(batch_size, 3, image_size(model), image_size(model))
    ids = get_tokenizer(model)([PROBE_CAPTION] * batch_size)
    if model.config.arch == "dual_encoder":
        encode = _best_seconds(lambda: (model.encode_image(images), model.encode_text(ids)), repeats)
        img, txt = model.encode_image(images), model.encode_text(ids)
        score = _best_seconds(lambda: img @ txt.T, repeats)
        scored_pairs = batch_size * batch_size
    else:
        encode = _best_seconds(lambda: (model.embed_image(images), model.embed_text(ids)), repeats)
        tokens, mask = model.embed_image(images), padding_mask(ids)
        score = _best_seconds(lambda: model.score_embedded(tokens, ids, mask), repeats)
        scored_pairs = batch_size
    return {"encode_pairs_per_s": batch_size / encode, "score_pairs_per_s": scored_pairs / score}


def _percentiles(times: list[float]) -> dict[str, float]:
    ms = sorted(1000 * t for t in times)
    p99_index = min(len(ms) - 1, round(0.99 * (len(ms) - 1)))
    return {"p50_ms": statistics.median(ms), "p99_ms": ms[p99_index]}


@torch.no_grad()
def query_latency(late: nn.Module, early: nn.Module, late_images: torch.Tensor, early_images: torch.Tensor,
                  queries: list[str], ks: tuple[int, ...] = (16,), warmup: int = 2,
                  repeats: int = 3) -> dict[str, dict]:
    """Latency of answering one text query against the whole image set, per method: p50 / p99 over the
    queries of each query's fastest of `repeats` runs.

    The image side is indexed beforehand (embeddings for late, patch tokens for early), as a search service
    would; a query pays for its text encoding, the ranking and its fusion passes.
    """
    image_features = encode_images(late, late_images)
    scorer = FusionPairScorer(early, early_images, get_tokenizer(early)(queries),
                              pad_batches=False)
    late_ids = get_tokenizer(late)(queries)
    n_images = scorer.num_images

    def late_rank(q: int) -> torch.Tensor:
        return (image_features @ encode_texts(late, late_ids[q : q + 1]).T).squeeze(1)

    def early_all(q: int) -> torch.Tensor:
        return scorer.score_pairs(torch.arange(n_images), torch.full((n_images,), q))

    def hybrid(q: int, k: int) -> torch.Tensor:
        top = torch.sort(late_rank(q), descending=True, stable=True).indices[:k]
        return scorer.score_pairs(top, torch.full((len(top),), q))

    methods: dict[str, tuple[Callable[[int], object], int]] = {"late": (late_rank, 0), "early": (early_all, n_images)}
    for k in ks:
        methods[f"hybrid@{k}"] = (lambda q, k=k: hybrid(q, k), min(k, n_images))
    for run, _ in methods.values():
        for q in range(min(warmup, len(queries))):
            run(q)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for q in range(len(queries)):  # methods interleaved, so a burst of load hits them all alike
        for name, (run, _) in methods.items():
            times[name].append(_best_seconds(lambda run=run, q=q: run(q), repeats, warmup=False))
    return {name: {**_percentiles(times[name]), "fusion_passes_per_query": passes, "queries": len(queries)}
            for name, (_, passes) in methods.items()}


def model_cost(model: nn.Module, batch_size: int = 64, repeats: int = 3) -> dict:
    return {"parameters": count_parameters(model), **forward_gflops(model),
            **throughput(model, batch_size, repeats)}
