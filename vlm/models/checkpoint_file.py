"""The checkpoint file: its format, and reading and writing it (no model classes needed, so they can save).

Training adds its own state (optimizer, step, ...) to the same dict; loading a model ignores it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlm.atomic_io import atomic_write
from vlm.config import to_dict
from vlm.errors import UserError

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
