"""The snapshot manifest: what each faiss snapshot must be, written atomically after the snapshots themselves.

faiss reads a file with bytes damaged in the middle without complaint and then serves nonsense, so a snapshot is
loaded only when its bytes hash to the digest recorded here, and it holds the count and dimension recorded.
Anything else is set aside and rebuilt from the table: a snapshot is a cache, never the truth.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from vlm.atomic_io import atomic_write

MANIFEST_NAME = "snapshots.json"


@dataclass(frozen=True)
class SnapshotRecord:
    sha256: str
    bytes: int
    count: int
    dim: int
    min_id: int
    max_id: int


@dataclass(frozen=True)
class Manifest:
    changes: int = 0  # the table's change counter when the snapshots were written
    max_id: int = 0  # the highest id issued by then
    snapshots: dict[str, SnapshotRecord] | None = None


def digest(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(directory: Path) -> tuple[Manifest | None, str | None]:
    """(manifest, None), (None, None) when there is none, or (None, why) when it cannot be read."""
    path = directory / MANIFEST_NAME
    if not path.exists():
        return None, None
    try:
        data = json.loads(path.read_bytes())
        snapshots = {name: SnapshotRecord(**record) for name, record in data["snapshots"].items()}
        return Manifest(int(data["changes"]), int(data["max_id"]), snapshots), None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        return None, f"{path}: unreadable ({type(e).__name__}: {e})"


def write_manifest(directory: Path, manifest: Manifest) -> None:
    data = {"version": 1, "changes": manifest.changes, "max_id": manifest.max_id,
            "snapshots": {name: asdict(record) for name, record in (manifest.snapshots or {}).items()}}
    with atomic_write(directory / MANIFEST_NAME, "w") as f:
        json.dump(data, f, indent=2)


def file_digest(path: Path, chunk: int = 2**20) -> tuple[int, str]:
    """(size, sha256) of a file, streamed in chunks: never the whole file in memory."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def verify_snapshot_file(path: Path, record: SnapshotRecord | None) -> str | None:
    """`verify_snapshot` reading the file in chunks (a snapshot about to be memory-mapped is never read whole)."""
    if record is None:
        return "not in the manifest"
    if path.stat().st_size != record.bytes:
        return f"{path.stat().st_size} bytes, the manifest says {record.bytes}"
    size, sha = file_digest(path)
    if size != record.bytes:
        return f"{size} bytes, the manifest says {record.bytes}"
    if sha != record.sha256:
        return "checksum does not match the manifest"
    return None


def verify_snapshot(path: Path, data: bytes, record: SnapshotRecord | None) -> str | None:
    """Why the snapshot's bytes cannot be trusted, or None when they match their record."""
    if record is None:
        return "not in the manifest"
    if len(data) != record.bytes:
        return f"{len(data)} bytes, the manifest says {record.bytes}"
    if digest(data) != record.sha256:
        return "checksum does not match the manifest"
    return None
