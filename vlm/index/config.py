"""index.json: what built an index folder (backend, dimension, model and precision, search settings), read
field by field so a damaged or hand-edited file is one line naming it and the field."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from vlm.atomic_io import atomic_write
from vlm.index.backends import FaissConfig
from vlm.index.budget import parse_size
from vlm.index.errors import IndexFolderError
from vlm.index.milvus import INDEX_TYPES, TOKEN_ENV, is_server_uri
from vlm.index.tuning import read_tuning

CONFIG_NAME = "index.json"
BACKENDS = ("faiss", "milvus")


@dataclass(frozen=True)
class IndexConfig:
    dim: int
    backend: str = "faiss"
    model: str = ""  # the model config name whose embeddings these are
    precision: str = "fp32"  # what the model ran at (vlm.models.precision); queries are encoded the same way
    cpu_class: str = ""  # the CPU class it was built on (vlm.models.cpu); "" for indexes built before it was kept
    faiss: FaissConfig = field(default_factory=FaissConfig)
    milvus_uri: str = ""  # "" = milvus-lite file DIR/milvus.db; "http://host:19530" = a Milvus server
    milvus_collection: str = "vlm"  # collections "<this>_image", "<this>_text" (and "<this>_items" on a server)
    milvus_index: str = "FLAT"  # Milvus index type of new collections: FLAT, HNSW, IVF_PQ or DISKANN
    # Never written to index.json nor shown: given when opening, or $VLM_MILVUS_TOKEN.
    milvus_token: str = field(default="", repr=False, compare=False)
    snapshot_every: int = 1000  # faiss: rewrite the snapshot after this many changes (the table is durable anyway)

    @property
    def shared(self) -> bool:
        """A Milvus server collection, which other writers (other folders) may share."""
        return self.backend == "milvus" and is_server_uri(self.milvus_uri)


def read_config(directory: Path) -> IndexConfig:
    """index.json, checked field by field: a bad file is one line naming it and the field."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise IndexFolderError(f"{directory}: not a vlm index (no {CONFIG_NAME})")
    try:
        data = json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError) as e:
        raise IndexFolderError(f"{path}: not valid JSON ({e}); restore it from a backup") from None
    if not isinstance(data, dict):
        raise IndexFolderError(f"{path}: must hold a JSON object, got {type(data).__name__}")
    faiss = data.get("faiss", {})
    if not isinstance(faiss, dict):
        raise IndexFolderError(f"{path}: field 'faiss' must be an object")
    _check_fields(path, data, IndexConfig, {"dim", "snapshot_every"})
    _check_fields(path, faiss, FaissConfig, {"exact_max", "hnsw_m", "ef_search", "nprobe"}, "faiss.")
    faiss = {**faiss, "tuning": _read_budget(path, faiss)}
    if data.get("backend", "faiss") not in BACKENDS:
        raise IndexFolderError(f"{path}: field 'backend' must be one of {', '.join(BACKENDS)}, "
                               f"got {data['backend']!r}")
    if data.get("milvus_index", "FLAT") not in INDEX_TYPES:
        raise IndexFolderError(f"{path}: field 'milvus_index' must be one of {', '.join(INDEX_TYPES)}, "
                               f"got {data['milvus_index']!r}")
    if "milvus_token" in data:
        raise IndexFolderError(f"{path}: holds a Milvus token; remove it (a token does not belong in a file that "
                               f"backups copy): pass it as ${TOKEN_ENV} or --milvus-token")
    return IndexConfig(**{**data, "faiss": FaissConfig(**faiss)})


def _read_budget(path: Path, faiss: dict) -> dict:
    """faiss.max_index_memory must be a size; faiss.tuning holds one record per modality."""
    try:
        if faiss.get("max_index_memory"):
            parse_size(faiss["max_index_memory"])
        return read_tuning(str(path), faiss.get("tuning", {}))
    except ValueError as e:
        raise IndexFolderError(f"{path}: field 'faiss.max_index_memory' {e}" if str(e).startswith("memory size")
                               else str(e)) from None


def _check_fields(path: Path, data: dict, cls: type, positive: set[str], prefix: str = "") -> None:
    known = {f.name: f for f in fields(cls)}
    for key, value in data.items():
        if key not in known:
            raise IndexFolderError(f"{path}: unknown field '{prefix}{key}' (known: {', '.join(known)})")
        if key in ("faiss", "tuning"):  # objects, read on their own
            continue
        want = int if known[key].type == "int" else str
        if not isinstance(value, want) or isinstance(value, bool) or (want is int and value < (key in positive)):
            kind = "a positive integer" if key in positive else "an integer >= 0" if want is int else "a string"
            raise IndexFolderError(f"{path}: field '{prefix}{key}' must be {kind}, got {value!r}")
    if cls is IndexConfig and "dim" not in data:
        raise IndexFolderError(f"{path}: field 'dim' is missing")


def check_writable(directory: Path) -> None:
    """Creating a file is the only honest test: `os.access` says yes to root whatever the mode bits."""
    probe = directory / f".write-test-{os.getpid()}"
    probe.touch()
    probe.unlink()


def write_config(directory: Path, config: IndexConfig) -> None:
    """Everything but the token."""
    data = asdict(config)
    data.pop("milvus_token")
    with atomic_write(directory / CONFIG_NAME, "w") as f:
        json.dump(data, f, indent=2)
