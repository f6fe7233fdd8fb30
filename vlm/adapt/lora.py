"""LoRA checkpoints -> ordinary vlm checkpoints: the adapters folded into the weights they adapt.

A LoRA run's checkpoint holds peft's names (`...attn.qkv.base_layer.weight`, `...lora_A.default.weight`) and its
recipe (`train_config.lora`), so the same adapters can be rebuilt, loaded and merged (W + alpha/r * B @ A) by peft.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from vlm.config import from_dict
from vlm.models.checkpoint import CheckpointError, model_payload, read_checkpoint, save_checkpoint
from vlm.models.config import model_config_from_dict
from vlm.train.config import LoraConfig


def lora_of(payload: dict[str, Any]) -> LoraConfig | None:
    """The LoRA recipe of a checkpoint written by a LoRA run, or None for an ordinary checkpoint."""
    lora = (payload.get("train_config") or {}).get("lora")
    if lora is None or not any(".lora_A." in k for k in payload.get("model", {})):
        return None
    return from_dict(LoraConfig, lora, where="checkpoint train_config: lora")


def lora_model(payload: dict[str, Any], where: str) -> nn.Module:
    """The model with its adapters, as the run trained it (peft layers in place)."""
    from vlm.adapt.methods import add_lora
    from vlm.models.registry import build_model

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
