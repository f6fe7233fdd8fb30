"""A checkpoint's config, step and tensor shapes, read without importing torch (`vlm info`).

torch.save writes a zip whose `*/data.pkl` is a pickle of the payload; each tensor in it is a call to
`torch._utils._rebuild_tensor_v2` over a storage the pickle names only by key (the bytes lie in `*/data/KEY`).
This reader unpickles `data.pkl` with an allow-list of those few globals, each replaced by a stand-in that
keeps the tensor's shape and dtype, and never reads the tensors' bytes: a config and a parameter count in
milliseconds and a few MB. A file this reader does not know (the pre-1.6 pickle format, a global outside the
list) is read by torch as before, with the same checks (`read_checkpoint`).
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlm.models.checkpoint_file import check_payload, checked_checkpoint_path, read_checkpoint


@dataclass(frozen=True)
class TensorShape:
    """A tensor of the checkpoint, as far as `vlm info` needs it: its shape and dtype (no data)."""

    shape: tuple[int, ...]
    dtype: str

    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class _Storage:
    dtype: str


class _NeedsTorch(Exception):
    """The pickle holds something this reader does not stand in for: torch must read it."""


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, *args: Any) -> TensorShape:
    return TensorShape(tuple(int(n) for n in size), storage.dtype)


def _rebuild_parameter(data: TensorShape, *args: Any) -> TensorShape:
    return data


class _StorageType:
    """Stands in for `torch.FloatStorage` and its kin: only the name (and so the dtype) matters."""

    def __init__(self, name: str):
        self.dtype = name.removesuffix("Storage").lower() or "untyped"


class _ShapeUnpickler(pickle.Unpickler):
    """Unpickles torch.save's data.pkl with stand-ins for tensors; any other global is refused."""

    GLOBALS = {("collections", "OrderedDict"): collections.OrderedDict,
               ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
               ("torch._utils", "_rebuild_parameter"): _rebuild_parameter}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.GLOBALS:
            return self.GLOBALS[module, name]
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        raise _NeedsTorch(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise _NeedsTorch(f"persistent id {pid!r:.40}")
        return _Storage(pid[1].dtype)


def _data_pickle(path: Path) -> bytes | None:
    """The bytes of the zip's `*/data.pkl`; None when the file is not a zip (an old pickle: torch reads it)."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            return archive.read(names[0]) if len(names) == 1 else None
    except (zipfile.BadZipFile, OSError, EOFError):
        return None  # torch's own reading gives the precise reason


def peek_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict with each tensor a `TensorShape`; torch reads files this reader does not know."""
    path = checked_checkpoint_path(path)
    data = _data_pickle(path)
    if data is not None:
        try:
            payload = _ShapeUnpickler(io.BytesIO(data)).load()
        except (_NeedsTorch, pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError):
            payload = None
        if payload is not None:
            return check_payload(path, payload)
    return read_checkpoint(path)

