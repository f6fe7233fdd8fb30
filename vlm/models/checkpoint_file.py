"""The checkpoint file: its format, and reading and writing it (no model classes needed, so they can save).

Training adds its own state (optimizer, step, ...) to the same dict; loading a model ignores it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlm.atomic_io import atomic_write
from vlm.config import to_dict
from vlm.errors import UserError

if TYPE_CHECKING:  # torch loads only to write or fully read a checkpoint: `vlm info` reads one without it
    from torch import nn

FORMAT = "vlm-checkpoint"
CHECKPOINT_NAME = "checkpoint.pt"  # the file in a run folder
VERSION = 1


class CheckpointError(UserError):
    """A file that is not a readable vlm checkpoint."""


# What a file starts with, when it is not torch.save's zip (b"PK") or an old pickle (b"\x80"): a user who passes
# a photo to `vlm info` learns that, not torch's advice to unpickle it with weights_only=False.
FILE_SIGNATURES = ((b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"GIF8", "a GIF image"),
                   (b"RIFF", "a RIFF file (WebP image?)"), (b"BM", "a BMP image"), (b"II*\x00", "a TIFF image"),
                   (b"MM\x00*", "a TIFF image"), (b"\x1f\x8b", "a gzip file"), (b"ustar", "a tar file"))


def _not_a_torch_file(path: Path) -> str | None:
    """What the file is, when its first bytes say it cannot be a torch.save file; None when it may be one."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return None
    if not head:
        return "the file is empty"
    if head[257:262] == b"ustar":
        return "it is a tar file"
    for magic, what in FILE_SIGNATURES:
        if head.startswith(magic):
            return f"it is {what}"
    if len(head) > 8 and head[8:10] == b'{"':
        return "it is a safetensors file; see `vlm import` for other formats"
    return "it is not a torch.save file"


def _load_failure(error: Exception) -> str:
    """torch's reason in a few words; never its advice to load with weights_only=False, which runs the file's code."""
    text = str(error).strip()
    if "weights_only" in text or "Weights only" in text:
        return "it holds Python objects other than tensors, which vlm does not unpickle"
    return f"truncated or not a torch file: {text.splitlines()[0] if text else type(error).__name__}"


def model_payload(model: nn.Module) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "config": to_dict(model.config), "model": model.state_dict()}


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    import torch

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
    import torch

    path = checked_checkpoint_path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle of another program ...
        raise CheckpointError(f"{path}: not a readable checkpoint ({_load_failure(e)})") from None
    return check_payload(path, payload)


def checked_checkpoint_path(path: str | Path) -> Path:
    """The checkpoint file of `path`, once it exists and its first bytes may be torch.save's."""
    path = resolve_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    not_torch = _not_a_torch_file(path)
    if not_torch:
        raise CheckpointError(f"{path}: not a readable checkpoint ({not_torch}); pass a checkpoint or a run folder")
    return path


def check_payload(path: Path, payload: Any) -> dict[str, Any]:
    """`payload` when it is a vlm checkpoint this vlm can read, else a CheckpointError naming `path`."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        hint = " (an OpenCLIP state dict? use vlm.import_openclip)" if isinstance(payload, dict) else ""
        raise CheckpointError(f"{path}: not a vlm checkpoint{hint}")
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload['version']} is newer than this vlm ({VERSION})")
    return payload
