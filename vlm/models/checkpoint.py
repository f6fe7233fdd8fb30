"""One-file checkpoints: the resolved config and the weights, loadable without any training code.

Training adds its own state (optimizer, step, ...) to the same dict; `load_model` ignores it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlm.atomic_io import atomic_write
from vlm.config import ConfigError, to_dict
from vlm.errors import UserError
from vlm.models.config import ModelConfig, model_config_from_dict

FORMAT = "vlm-checkpoint"
CHECKPOINT_NAME = "checkpoint.pt"  # the file in a run folder
VERSION = 1


class CheckpointError(UserError):
    """A file that is not a readable vlm checkpoint."""


def model_payload(model: nn.Module) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "config": to_dict(model.config), "model": model.state_dict()}


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    with atomic_write(path) as f:
        torch.save(payload, f)


def save_model(model: nn.Module, path: str | Path) -> None:
    save_checkpoint(model_payload(model), path)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder (as `vlm train --out` writes) holding `checkpoint.pt`."""
    path = Path(path)
    if path.is_dir():
        if not (path / CHECKPOINT_NAME).is_file():
            raise CheckpointError(f"{path}: run folder without a {CHECKPOINT_NAME}")
        return path / CHECKPOINT_NAME
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, or a CheckpointError that names the file and what is wrong with it."""
    path = resolve_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle of another program, plain text ...
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or not a torch file: {first_line})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        hint = " (an OpenCLIP state dict? use vlm.import_openclip)" if isinstance(payload, dict) else ""
        raise CheckpointError(f"{path}: not a vlm checkpoint{hint}")
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload['version']} is newer than this vlm ({VERSION})")
    return payload


def load_model(path: str | Path) -> nn.Module:
    payload = read_checkpoint(path)
    if not isinstance(payload.get("config"), dict) or not isinstance(payload.get("model"), dict):
        raise CheckpointError(f"{path}: checkpoint lacks its 'config' or 'model' entry")
    if (payload.get("train_config") or {}).get("lora"):  # a LoRA run's: its adapters folded into the weights
        from vlm.adapt.lora import lora_of, merged_model

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
    from vlm.models.registry import build_model  # avoid an import cycle

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
