"""What the distillation report measures of one model: accuracy on a shapes world's split, size and encode speed."""

from __future__ import annotations

import time

import torch
from torch import nn

from vlm.eval.retrieval import evaluate_late
from vlm.eval.run import EvalSets, run_compositional, run_zeroshot
from vlm.models.registry import image_size
from vlm.tokenizer import get_tokenizer

SPEED_CAPTION = "a red circle to the left of a blue square"


def best_rate(fn, items: int, repeats: int = 3) -> float:
    """Items per second of the fastest of `repeats` calls, after one warm-up call."""
    fn()
    best = min(_timed(fn) for _ in range(repeats))
    return items / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@torch.no_grad()
def encode_speed(model: nn.Module, batch_size: int = 64) -> dict[str, float]:
    """Images/s and texts/s of a late-fusion model's two encoders, on this process's torch threads."""
    images = torch.randn(batch_size, 3, image_size(model), image_size(model))
    ids = get_tokenizer(model)([SPEED_CAPTION] * batch_size)
    return {"images_per_s": best_rate(lambda: model.encode_image(images), batch_size),
            "texts_per_s": best_rate(lambda: model.encode_text(ids), batch_size)}


@torch.no_grad()
def measure_model(model: nn.Module, sets: EvalSets) -> dict[str, float]:
    """Zero-shot top-1, T->I and I->T recall@1, compositional accuracy (percent), parameters, encode speed."""
    model = model.eval()
    d = sets.get("retrieval", model)
    retrieval = evaluate_late(model, d.images, d.captions, d.text_to_image)
    return {"zeroshot": run_zeroshot(model, sets)["acc1"],
            "t2i_r1": retrieval["image_retrieval_recall@1"], "i2t_r1": retrieval["text_retrieval_recall@1"],
            "compositional": run_compositional(model, sets)["compositional_accuracy"],
            "params": sum(p.numel() for p in model.parameters()), **encode_speed(model), **encode_flops(model)}


def encode_flops(model: nn.Module) -> dict[str, float]:
    """MFLOPs to encode one image and one text: the speed figure that no other process on the machine moves."""
    from vlm.eval.cost import forward_gflops

    flops = forward_gflops(model)
    return {"mflops_image": 1000 * flops["gflops_image"], "mflops_text": 1000 * flops["gflops_text"]}
