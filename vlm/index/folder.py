"""An index folder: the SQLite item table (source of truth) plus one vector backend per modality.

    DIR/index.json      what built it: backend, dimension, model and its precision, faiss settings (written once,
                        atomically)
    DIR/items.sqlite    items with metadata and vectors (WAL, synchronous=FULL)
    DIR/image.faiss     faiss snapshots (faiss backend), caught up from the table at open
    DIR/milvus.db       milvus-lite file (milvus backend without a server URI)
    DIR/images/         images added through the API

Opening an index reconciles each backend with the table: ids missing from the backend are added, ids the
table no longer has are deleted. That is what makes a `kill -9` harmless.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vlm.atomic_io import atomic_write
from vlm.index.backends import FaissBackend, FaissConfig, MilvusBackend, VectorBackend, release_milvus_lite
from vlm.index.store import MODALITIES, Item, ItemStore

CONFIG_NAME = "index.json"
STORE_NAME = "items.sqlite"
BACKENDS = ("faiss", "milvus")
log = logging.getLogger("vlm.index")


class IndexFolderError(ValueError):
    """An index folder that cannot be opened or used as asked."""


@dataclass(frozen=True)
class IndexConfig:
    dim: int
    backend: str = "faiss"
    model: str = ""  # the model config name whose embeddings these are
    precision: str = "fp32"  # what the model ran at (vlm.models.precision); queries are encoded the same way
    faiss: FaissConfig = field(default_factory=FaissConfig)
    milvus_uri: str = ""  # "" = milvus-lite file DIR/milvus.db; "http://host:19530" = a Milvus server
    milvus_collection: str = "vlm"  # collections are "<this>_image" and "<this>_text"
    snapshot_every: int = 1000  # faiss: rewrite the snapshot after this many changes (the table is durable anyway)


@dataclass
class Hit:
    item: Item
    score: float


def read_config(directory: Path) -> IndexConfig:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise IndexFolderError(f"{directory}: not a vlm index (no {CONFIG_NAME})")
    data = json.loads(path.read_text())
    return IndexConfig(**{**data, "faiss": FaissConfig(**data.get("faiss", {}))})


def check_writable(directory: Path) -> None:
    """Fail at open, with a clear message, on a folder this process cannot write (permissions, a read-only mount).

    Creating a file is the only honest test: `os.access` says yes to root whatever the mode bits."""
    probe = directory / f".write-test-{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise IndexFolderError(f"{directory}: the index folder is not writable ({e.strerror}); the server writes "
                               "its SQLite journal, faiss snapshots and added images there: give this user write "
                               "access or serve a writable copy") from None


def write_config(directory: Path, config: IndexConfig) -> None:
    with atomic_write(directory / CONFIG_NAME, "w") as f:
        json.dump(asdict(config), f, indent=2)


class ItemIndex:
    """Add, delete, get and search items; thread-safe."""

    def __init__(self, directory: str | Path, config: IndexConfig | None = None):
        """Open the index in `directory`, or create it there when `config` is given and none exists."""
        self.directory = Path(directory)
        if config is not None and not (self.directory / CONFIG_NAME).exists():
            if config.backend not in BACKENDS:
                raise IndexFolderError(f"index backend must be one of {BACKENDS}, got {config.backend!r}")
            self.directory.mkdir(parents=True, exist_ok=True)
            write_config(self.directory, config)
        self.config = read_config(self.directory)
        check_writable(self.directory)
        self.store = ItemStore(self.directory / STORE_NAME)
        self._lock = threading.RLock()
        self._changes = 0
        self.backends: dict[str, VectorBackend] = {m: self._open_backend(m) for m in MODALITIES}
        for modality in MODALITIES:
            self.reconcile(modality)

    def _open_backend(self, modality: str) -> VectorBackend:
        c = self.config
        if c.backend == "faiss":
            return FaissBackend(self.directory / f"{modality}.faiss", c.dim, c.faiss)
        uri = c.milvus_uri or str(self.directory / "milvus.db")
        return MilvusBackend(uri, f"{c.milvus_collection}_{modality}", c.dim)

    def reconcile(self, modality: str) -> tuple[int, int]:
        """Bring the backend in line with the table; returns (added, removed)."""
        backend = self.backends[modality]
        table_ids, backend_ids = self.store.ids(modality), backend.ids()
        missing = np.setdiff1d(table_ids, backend_ids)
        extra = np.setdiff1d(backend_ids, table_ids)
        if isinstance(backend, FaissBackend) and len(backend_ids) == 0 and len(missing):
            # A whole build at once: faiss picks exact or approximate search by its size.
            chunks = list(self.store.vectors(modality))
            backend.rebuild(np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks]))
        else:
            for ids, vectors in self.store.vectors(modality, missing):
                backend.add(ids, vectors)
        if len(extra):
            backend.delete(extra)
        if len(missing) or len(extra):
            backend.save()
        return len(missing), len(extra)

    # --- items
    def add(self, items: list[Item]) -> list[int]:
        """Add items; each is durable (committed and fsynced) when this returns."""
        for item in items:
            for vec in (item.image_vec, item.text_vec):
                if vec is not None and vec.shape != (self.config.dim,):
                    raise ValueError(f"vector has shape {vec.shape}, the index holds dimension {self.config.dim}")
        with self._lock:
            ids = self.store.add(items)
            for modality in MODALITIES:
                pairs = [(i.id, getattr(i, f"{modality}_vec")) for i in items]
                pairs = [(i, v) for i, v in pairs if v is not None]
                if pairs:
                    self.backends[modality].add(np.array([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))
            self._changed(len(items))
        return ids

    def delete(self, item_id: int) -> bool:
        with self._lock:
            item = self.store.get(item_id)
            if item is None or not self.store.delete(item_id):
                return False
            for backend in self.backends.values():
                backend.delete(np.array([item_id]))
            self._changed(1)
        image = self.directory / "images" / Path(item.path or "").name
        if item.path and item.path.startswith("images/") and image.is_file():
            try:
                image.unlink()
            except OSError as e:  # the row is gone (committed): the delete stands, the file is left behind
                log.warning("deleted item %s, but could not remove its image %s: %s", item_id, image, e)
        return True

    def get(self, item_id: int, vectors: bool = False) -> Item | None:
        return self.store.get(item_id, vectors)

    def get_many(self, ids: list[int]) -> list[Item]:
        return self.store.get_many(ids)

    def search(self, queries: np.ndarray, k: int, modality: str = "image") -> list[list[Hit]]:
        """The k best items for each query vector, by cosine similarity, best first."""
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != self.config.dim:
            raise ValueError(f"embedding has dimension {queries.shape[1]}, the index holds {self.config.dim}")
        scores, ids = self.backends[modality].search(queries, k)
        results = []
        for row_scores, row_ids in zip(scores, ids, strict=True):
            valid = [(int(i), float(s)) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]
            items = {item.id: item for item in self.store.get_many([i for i, _ in valid])}
            results.append([Hit(items[i], s) for i, s in valid if i in items])
        return results

    def resolve_path(self, item: Item) -> Path | None:
        """The image file of an item: relative paths are relative to the index folder."""
        if not item.path:
            return None
        path = Path(item.path)
        return path if path.is_absolute() else self.directory / path

    def __len__(self) -> int:
        return self.store.count()

    # --- persistence
    def _changed(self, n: int) -> None:
        self._changes += n
        if self.config.backend == "faiss" and self._changes >= self.config.snapshot_every:
            self.save()

    def save(self) -> None:
        with self._lock:
            for backend in self.backends.values():
                backend.save()
            self._changes = 0

    def close(self) -> None:
        with self._lock:
            for backend in self.backends.values():
                backend.close()
            if self.config.backend == "milvus" and not self.config.milvus_uri:
                release_milvus_lite(self.directory / "milvus.db")
            self.store.close()

    def info(self) -> dict:
        c = self.config
        backends = {m: (b.kind if isinstance(b, FaissBackend) else "milvus") for m, b in self.backends.items()}
        size = sum(p.stat().st_size for p in self.directory.rglob("*") if p.is_file())
        return {"directory": str(self.directory), "items": len(self), "dim": c.dim, "backend": c.backend,
                "model": c.model, "precision": c.precision, "vectors": {m: self.store.count(m) for m in MODALITIES},
                "search_structure": backends, "bytes_on_disk": size}


def open(directory: str | Path) -> ItemIndex:  # noqa: A001 (vlm.index.open, as io.open for files)
    """Open an existing index folder for searching, adding and removing items, with no server."""
    return ItemIndex(directory)
