"""Which parameters a run trains: LoRA adapters (peft, vlm/models/lora.py), a locked image side (LiT), frozen
name patterns.

Full fine-tuning (nothing set) stays the default. Applied after the starting weights are loaded and before the
optimizer is built, so the optimizer only ever sees what trains, and a resumed run is rebuilt the same way.
"""

from __future__ import annotations

import fnmatch

from torch import nn

from vlm.config import ConfigError
from vlm.models.lora import add_lora
from vlm.train.config import TrainConfig

# The image side of each family, for lock_image (LiT locks the whole image tower, its projection included).
IMAGE_SIDE = {"dual_encoder": ("image.*",), "early_fusion": ("patch_embed.*", "image_pos")}
FRESH_HEAD = "vqa_head."  # a head the run just created learns whatever else is frozen


def freeze_matching(model: nn.Module, patterns: tuple[str, ...], field: str) -> None:
    names = [n for n, _ in model.named_parameters()]
    for pattern in patterns:
        matched = fnmatch.filter(names, pattern)
        if not matched:
            raise ConfigError(f"{field}: pattern {pattern!r} matches no parameter of {model.config.name} "
                              f"(names look like {names[0]!r}, {names[-1]!r})")
        for name, p in model.named_parameters():
            if name in matched:
                p.requires_grad = False


def apply_adaptation(model: nn.Module, config: TrainConfig) -> nn.Module:
    """Set what trains. LoRA first (it freezes everything else), then lock_image and `freeze` on top."""
    if config.lora is not None:
        add_lora(model, config.lora)
    if config.lock_image:
        freeze_matching(model, IMAGE_SIDE[model.config.arch], "lock_image")
    if config.freeze:
        freeze_matching(model, tuple(config.freeze), "freeze")
    if config.lora is not None and config.objective == "vqa":
        for name, p in model.named_parameters():
            p.requires_grad |= name.startswith(FRESH_HEAD)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"lock_image / freeze leave no parameter of {model.config.name} to train")
    return model


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; LoRA adapters count in both, as in peft's print_trainable_parameters."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
