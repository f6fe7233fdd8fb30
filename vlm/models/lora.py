"""LoRA on a model (peft): inject the adapters in place, rebuild them from a LoRA run's checkpoint, and fold
them into the weights they adapt (W + alpha/r * B @ A) to get an ordinary checkpoint back.

A LoRA run's checkpoint holds peft's names (`...attn.qkv.base_layer.weight`, `...lora_A.default.weight`) and its
recipe (`train_config.lora`, a `LoraConfig`), so the same adapters can be rebuilt, loaded and merged by peft.
Training injects them (vlm/train/trainable.py), `vlm.load` and a run that starts from such a checkpoint merge them,
and `vlm lora merge` writes the merged checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from vlm.config import ConfigError, from_dict
from vlm.models.checkpoint_file import CheckpointError, model_payload, read_checkpoint, save_checkpoint
from vlm.models.config import LoraConfig, model_config_from_dict
from vlm.models.registry import build_model

# Module paths of each stack's ViT blocks, and each target's layers inside a timm Block.
STACK_BLOCKS = {"image": r"image\.trunk\.blocks", "text": r"text\.blocks", "fusion": r"blocks"}
TARGET_LAYERS = {"qkv": r"attn\.qkv", "proj": r"attn\.proj", "mlp": r"mlp\.fc1|mlp\.fc2"}


def lora_target_regex(lora: LoraConfig, arch: str) -> str:
    """A full-match regex over module names, as peft's `target_modules` takes it."""
    stacks = [s for s in lora.stacks if (s == "fusion") == (arch == "early_fusion")]
    if not stacks:
        raise ConfigError(f"lora.stacks {list(lora.stacks)} name no stack of a {arch} model "
                          f"({'fusion' if arch == 'early_fusion' else 'image, text'})")
    blocks = "|".join(STACK_BLOCKS[s] for s in stacks)
    layers = "|".join(TARGET_LAYERS[t] for t in lora.targets)
    return rf"({blocks})\.\d+\.({layers})"


def add_lora(model: nn.Module, lora: LoraConfig) -> nn.Module:
    """Inject LoRA layers in place (the model keeps its class and methods) and freeze all but the adapters."""
    from peft import LoraConfig as PeftLoraConfig
    from peft.tuners.lora import LoraModel

    peft_config = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                 target_modules=lora_target_regex(lora, model.config.arch))
    LoraModel(model, peft_config, "default")  # injects into `model` itself and marks only adapters trainable
    return model


def lora_of(payload: dict[str, Any]) -> LoraConfig | None:
    """The LoRA recipe of a checkpoint written by a LoRA run, or None for an ordinary checkpoint."""
    lora = (payload.get("train_config") or {}).get("lora")
    if lora is None or not any(".lora_A." in k for k in payload.get("model", {})):
        return None
    return from_dict(LoraConfig, lora, where="checkpoint train_config: lora")


def lora_model(payload: dict[str, Any], where: str) -> nn.Module:
    """The model with its adapters, as the run trained it (peft layers in place)."""
    lora = lora_of(payload)
    if lora is None:
        raise CheckpointError(f"{where}: not a LoRA checkpoint (no train_config.lora or no lora_A weights)")
    model = add_lora(build_model(model_config_from_dict(payload["config"], where)), lora)
    model.load_state_dict(payload["model"])
    return model.eval()


def merged_model(payload: dict[str, Any], where: str) -> nn.Module:
    """The plain model class with W + scale * B @ A in each adapted layer (peft's merge_and_unload)."""
    from peft.tuners.lora import LoraLayer

    model = lora_model(payload, where)
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(safe_merge=True)  # refuses NaN/inf results rather than writing them
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())
    return model.eval()


def merge_lora_checkpoint(path: str | Path, out: str | Path) -> Path:
    """`vlm lora merge`: a run folder or checkpoint of a LoRA run -> an ordinary checkpoint at `out`."""
    payload = read_checkpoint(path)
    save_checkpoint(model_payload(merged_model(payload, str(path))), out)
    return Path(out)
