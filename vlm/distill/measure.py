"""What the distillation report measures of one model: accuracy on a shapes world's split, size and encode speed."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from vlm.eval.run import EvalSets, run_compositional, run_retrieval, run_zeroshot
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
    """Zero-shot top-1, T->I and I->T recall@1, compositional accuracy (percent), parameters, encode speed.

    An early-fusion model (a cross-family teacher) scores every pair exhaustively and encodes nothing on its own:
    its encode speeds are NaN, and its cost is the MFLOPs of scoring a new pair, as for a late-fusion one.
    """
    model = model.eval()
    retrieval = run_retrieval(model, sets)
    late = model.config.arch == "dual_encoder"
    speed = encode_speed(model) if late else {"images_per_s": float("nan"), "texts_per_s": float("nan")}
    return {"zeroshot": run_zeroshot(model, sets)["acc1"],
            "t2i_r1": retrieval["image_retrieval_recall@1"], "i2t_r1": retrieval["text_retrieval_recall@1"],
            "compositional": run_compositional(model, sets)["compositional_accuracy"],
            "params": sum(p.numel() for p in model.parameters()), **speed, **encode_flops(model)}


def encode_flops(model: nn.Module) -> dict[str, float]:
    """MFLOPs to encode one image, one text, and to score a new pair from its image and text (both encoded, then
    compared: a dot product for late fusion, a pass of the joint stack for early fusion): the speed figures that
    no other process on the machine moves, and the one that compares the two families."""
    from vlm.eval.cost import forward_gflops

    flops = forward_gflops(model)
    late = model.config.arch == "dual_encoder"
    return {"mflops_image": 1000 * flops["gflops_image"] if late else float("nan"),
            "mflops_text": 1000 * flops["gflops_text"] if late else float("nan"),
            "mflops_pair": 1000 * (flops["gflops_image"] + flops["gflops_text"] + flops["gflops_pair"])}


def vqa_after_finetune(checkpoint: Path, early: bool, seed: int, data: Path, sets: EvalSets, run_dir: Path,
                       steps: int | None = None, num_workers: int = 1) -> float:
    """VQA accuracy after the quickstart's fine-tune recipe (its clip-small-vqa or fusion-small-vqa stage, the one
    the late-vs-early comparison uses), so every row of a report adapts to VQA with one budget."""
    import dataclasses
    import shutil

    from vlm.config import shipped_configs
    from vlm.eval.run import run_vqa
    from vlm.models.checkpoint import load_model
    from vlm.train import train
    from vlm.train.quickstart import load_quickstart_config

    stages = load_quickstart_config(shipped_configs() / "train" / "quickstart.yaml").stages
    stage = stages["fusion-small-vqa" if early else "clip-small-vqa"]
    config = dataclasses.replace(stage, model=str(checkpoint), seed=seed, steps=steps or stage.steps,
                                 data=dataclasses.replace(stage.data, train=str(data), num_workers=num_workers))
    shutil.rmtree(run_dir, ignore_errors=True)
    return run_vqa(load_model(train(config, run_dir)).eval(), sets)["vqa_accuracy"]
