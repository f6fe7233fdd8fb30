"""AdamW with CLIP's decay rule and a cosine schedule with linear warm-up."""

from __future__ import annotations

import math

import torch
from torch import nn

from vlm.train.config import TrainConfig


def parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """Decay matrices only: norms, biases, embeddings and the logit scale are left alone (as in CLIP).

    Rank decides, as in nanoGPT, with embeddings named explicitly since their weights are matrices.
    The VQA head may learn faster than the pretrained body (`head_lr_scale`).
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or "embedding" in name or "pos" in name or "cls_token" in name or "logit_" in name
        is_head = name.startswith("vqa_head.")
        groups.setdefault((no_decay, is_head), []).append(p)
    return [
        {"params": params, "weight_decay": 0.0 if no_decay else config.weight_decay,
         "lr": config.lr * (config.head_lr_scale if is_head else 1.0)}
        for (no_decay, is_head), params in sorted(groups.items())
    ]


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    # One fused kernel per parameter: on CPU, torch's default is a loop of ~10 element-wise ops each over the
    # whole tensor, and the 49,408 x W token embedding makes that a large share of a small model's step.
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(parameter_groups(model, config), lr=config.lr, betas=tuple(config.betas),
                             eps=config.eps, fused=fused or None)


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    """Learning-rate multiplier: linear from 0 to 1 over `warmup`, then cosine down to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_with_warmup(step, config.warmup_steps, config.steps))
