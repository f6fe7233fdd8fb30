"""One-file checkpoints -> models: the resolved config and the weights, loadable without any training code.

The file format itself (reading, writing, `CheckpointError`) is vlm/models/checkpoint_file.py, below the model
classes so that `model.save` needs no model registry; its names are importable from here too.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vlm.config import ConfigError
from vlm.models.checkpoint_file import (
    CHECKPOINT_NAME,
    FORMAT,
    VERSION,
    CheckpointError,
    model_payload,
    read_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    save_model,
)
from vlm.models.config import ModelConfig, model_config_from_dict

__all__ = ["CHECKPOINT_NAME", "FORMAT", "VERSION", "CheckpointError", "load_model", "model_from_weights",
           "model_payload", "read_checkpoint", "resolve_checkpoint", "save_checkpoint", "save_model"]


def load_model(path: str | Path) -> nn.Module:
    payload = read_checkpoint(path)
    if not isinstance(payload.get("config"), dict) or not isinstance(payload.get("model"), dict):
        raise CheckpointError(f"{path}: checkpoint lacks its 'config' or 'model' entry")
    if (payload.get("train_config") or {}).get("lora"):  # a LoRA run's: its adapters folded into the weights
        from vlm.models.lora import lora_of, merged_model

        if lora_of(payload) is not None:
            return merged_model(payload, str(path))
    try:
        config = model_config_from_dict(payload["config"], where=f"{path}: config")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    return model_from_weights(config, payload["model"], where=str(path)).eval()


def model_from_weights(config: ModelConfig, weights: dict[str, torch.Tensor], where: str = "weights") -> nn.Module:
    """The model of `config` holding `weights`, without first filling it with random numbers.

    The model is built on the meta device (no memory, no init) and the tensors are assigned in place:
    a ViT-B/32 loads in about a second instead of the six its random init would cost on a CPU.
    Weights are copied (the model never shares memory with the caller's dict) and cast to the model's
    own dtypes, so a float16 checkpoint still gives a float32 model.
    """
    from vlm.models.registry import build_model  # the model classes import checkpoint_file, not this module

    with torch.device("meta"):
        model = build_model(config)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{where}: weights do not match the config (missing {_few(missing)}, "
                              f"unexpected {_few(unexpected)})")
    wrong = [k for k in expected if tuple(weights[k].shape) != tuple(expected[k].shape)]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{where}: weights do not match the config ({k} has shape "
                              f"{tuple(weights[k].shape)}, the config needs {tuple(expected[k].shape)})")
    model.load_state_dict({k: weights[k].to(expected[k].dtype, copy=True) for k in expected}, assign=True)
    left_on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left_on_meta:  # a non-persistent buffer: a model change this loader must learn about
        raise RuntimeError(f"{type(model).__name__} has tensors outside its state dict: {left_on_meta}")
    return model


def _few(names: list[str]) -> str:
    return "none" if not names else ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
