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

FORMAT = "vlm-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a readable vlm checkpoint."""


def model_payload(model: nn.Module) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "config": to_dict(model.config), "model": model.state_dict()}


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    with atomic_write(path) as f:
        torch.save(payload, f)


def save_model(model: nn.Module, path: str | Path) -> None:
    save_checkpoint(model_payload(model), path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, or a CheckpointError that names the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle of another program, plain text ...
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or not a torch file: {first_line})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        hint = " (an OpenCLIP state dict? use vlm.import_openclip)" if isinstance(payload, dict) else ""
        raise CheckpointError(f"{path}: not a vlm checkpoint{hint}")
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload['version']} is newer than this vlm ({VERSION})")
    return payload


def load_model(path: str | Path) -> nn.Module:
    from vlm.models.registry import build_model, model_config_from_dict  # avoid an import cycle

    payload = read_checkpoint(path)
    try:
        config = model_config_from_dict(payload["config"], where=f"{path}: config")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    model = build_model(config)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the config ({str(e).splitlines()[0]})") from None
    return model.eval()
