"""Vector backends behind one interface: add, delete, get by id, search with k, persist.

- `FaissBackend` (default, embedded): exact inner product (`IndexFlatIP`) up to `exact_max` vectors, HNSW or
  IVF above it; saved as one file written atomically. Opened read-only, the snapshot is memory-mapped: processes
  serving the same folder share its pages through the page cache instead of each holding a copy.
- `MilvusBackend` (vlm/index/milvus.py): pymilvus' `MilvusClient`, on a milvus-lite file for one machine or a
  server URI for a Milvus cluster, with the same calls.

Vectors are L2-normalised, so inner product is cosine similarity. Ids are int64 item ids.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlm.atomic_io import atomic_write
from vlm.index.manifest import SnapshotRecord, digest, verify_snapshot, verify_snapshot_file

log = logging.getLogger("vlm.index")


@dataclass(frozen=True)
class FaissConfig:
    exact_max: int = 1_000_000  # exact search below this many vectors; a flat scan of 1M x 512 is ~50 ms
    approximate: str = "hnsw"  # "hnsw" or "ivf" above exact_max
    hnsw_m: int = 32
    ef_search: int = 128
    ivf_nlist: int = 0  # 0: 4 * sqrt(n), the usual faiss rule of thumb
    nprobe: int = 16


class VectorBackend(ABC):
    dim: int

    @abstractmethod
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    @abstractmethod
    def delete(self, ids: np.ndarray) -> None: ...

    @abstractmethod
    def get(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of these ids, (N, dim); KeyError for an id that is not there."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (Q, k), best first; ids -1 (score -inf) where fewer than k exist."""

    @abstractmethod
    def ids(self) -> np.ndarray: ...

    @abstractmethod
    def save(self) -> SnapshotRecord | None:
        """Make every change so far durable in the backend's own storage; a file backend returns its record."""

    def close(self) -> None:
        self.save()

    def __len__(self) -> int:
        return len(self.ids())


def _as_matrix(vectors: np.ndarray, dim: int) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"vectors must have shape (N, {dim}), got {vectors.shape}")
    return vectors


class FaissBackend(VectorBackend):
    """`expected` is the snapshot's manifest record: a file that does not match it is never loaded (set aside
    as `.corrupt` when `writable`), and the owner (`ItemIndex`) rebuilds the index from the item table.

    Not `writable` (a read-only open), the snapshot is memory-mapped (`IO_FLAG_MMAP_IFC`: the vectors of a flat
    or HNSW index stay in the file's pages, shared by every process that maps it; `IO_FLAG_MMAP` alone still
    copies a flat index into memory in faiss 1.15). A mapped index is immutable: faiss aborts the process (a
    failed assertion, or a segfault) on an add or remove there, so the first change a read-only open follows
    (`ItemIndex.follow`) first copies the mapped index into memory (`_own`), and from then on that modality is
    held in memory as a writable open holds it. A writer replaces snapshots by rename, so a mapped file's pages
    stay valid however many snapshots it writes after."""

    def __init__(self, path: str | Path, dim: int, config: FaissConfig = FaissConfig(),
                 expected: SnapshotRecord | None = None, writable: bool = True):
        import faiss

        self._faiss = faiss
        self.path, self.dim, self.config, self.writable = Path(path), dim, config, writable
        self._lock = threading.RLock()
        self._tombstones: set[int] = set()  # approximate indexes hide deleted ids until the next save
        self.rejected: str | None = None  # why the snapshot on disk was not loaded
        self.mapped = False  # the index reads its vectors from the memory-mapped snapshot
        self.index = self._load(expected) if self.path.exists() else self._empty()

    def _load(self, expected: SnapshotRecord | None):
        if self.writable:
            data = self.path.read_bytes()
            reason = verify_snapshot(self.path, data, expected)
        else:
            before = self.path.stat()
            reason = verify_snapshot_file(self.path, expected)
        if reason is None:
            try:
                if self.writable:
                    index = self._faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
                else:
                    index, mapped = self._read_mapped()
                    after = self.path.stat()
                    if (after.st_ino, after.st_dev, after.st_mtime_ns) != (before.st_ino, before.st_dev,
                                                                          before.st_mtime_ns):
                        raise ValueError("replaced by a writer while it was read")  # rebuilt from the table
                    self.mapped = mapped
                if index.d != self.dim or index.ntotal != expected.count:
                    raise ValueError(f"holds {index.ntotal} vectors of dimension {index.d}, the manifest says "
                                     f"{expected.count} of {self.dim}")
                return index
            except (RuntimeError, ValueError) as e:  # faiss reports a bad file as RuntimeError
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        self.rejected = reason
        self._set_aside(reason)
        return self._empty()

    def _read_mapped(self):
        """Flat and HNSW indexes map (checked in faiss 1.15); an index faiss cannot map is read into memory."""
        try:
            return self._faiss.read_index(str(self.path), self._faiss.IO_FLAG_MMAP_IFC), True
        except RuntimeError as e:
            log.info("%s: cannot be memory-mapped (%s); read into memory", self.path, str(e).splitlines()[0])
            return self._faiss.read_index(str(self.path)), False

    def _set_aside(self, reason: str) -> None:
        aside = self.path.with_name(self.path.name + ".corrupt")
        if self.writable:
            try:
                self.path.replace(aside)
            except OSError:
                aside = self.path
        log.warning("%s: snapshot not loaded (%s); %s, rebuilding it from the item table", self.path, reason,
                    f"kept as {aside.name}" if self.writable else "left in place (read-only)")

    def _empty(self):
        return self._faiss.IndexIDMap2(self._faiss.IndexFlatIP(self.dim))

    @property
    def kind(self) -> str:
        inner = self._faiss.downcast_index(self.index.index)
        return {"IndexFlatIP": "flat", "IndexHNSWFlat": "hnsw", "IndexIVFFlat": "ivf"}.get(
            type(inner).__name__, type(inner).__name__)

    def rebuild(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """A fresh index of these vectors, exact or approximate by their number."""
        faiss, config = self._faiss, self.config
        vectors = _as_matrix(vectors, self.dim)
        n = len(vectors)
        if n <= config.exact_max:
            inner = faiss.IndexFlatIP(self.dim)
        elif config.approximate == "hnsw":
            inner = faiss.IndexHNSWFlat(self.dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efSearch = config.ef_search
        elif config.approximate == "ivf":
            nlist = config.ivf_nlist or int(4 * np.sqrt(n))
            inner = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            inner.train(vectors)
            inner.nprobe = config.nprobe
            inner.make_direct_map()  # reconstruct by id
        else:
            raise ValueError(f"faiss approximate index must be 'hnsw' or 'ivf', got {config.approximate!r}")
        index = faiss.IndexIDMap2(inner)
        if n:
            index.add_with_ids(vectors, np.asarray(ids, dtype=np.int64))
        with self._lock:
            self.index, self._tombstones, self.mapped = index, set(), False

    def _own(self) -> None:
        """Before the first change to a memory-mapped index: copy it into memory (faiss cannot change a mapped
        index; it aborts the process). Called with the lock held."""
        if self.mapped:
            self.index = self._faiss.deserialize_index(self._faiss.serialize_index(self.index))
            self.mapped = False
            log.info("%s: a change followed; this modality is now held in memory, no longer mapped", self.path)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = _as_matrix(vectors, self.dim)
        with self._lock:
            self._own()
            self.index.add_with_ids(vectors, np.asarray(ids, dtype=np.int64))

    def delete(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        with self._lock:
            if self.kind != "flat":  # HNSW cannot remove at all, IVF not with its id map
                self._tombstones.update(int(i) for i in ids)
            else:
                self._own()
                self.index.remove_ids(ids)

    def get(self, ids: np.ndarray) -> np.ndarray:
        with self._lock:
            out = []
            for i in np.asarray(ids, dtype=np.int64):
                if int(i) in self._tombstones:
                    raise KeyError(int(i))
                try:
                    out.append(self.index.reconstruct(int(i)))
                except RuntimeError:  # faiss: "key not found"
                    raise KeyError(int(i)) from None
            return np.stack(out) if out else np.zeros((0, self.dim), np.float32)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = _as_matrix(queries, self.dim)
        with self._lock:
            scores, ids = self.index.search(queries, k, params=self._search_params())
        scores[ids < 0] = -np.inf
        return scores, ids

    def _search_params(self):
        if not self._tombstones:
            return None
        banned = np.fromiter(self._tombstones, dtype=np.int64)
        selector = self._faiss.IDSelectorNot(self._faiss.IDSelectorBatch(banned))
        if self.kind == "hnsw":
            return self._faiss.SearchParametersHNSW(sel=selector, efSearch=self.config.ef_search)
        return self._faiss.SearchParametersIVF(sel=selector, nprobe=self.config.nprobe)

    def ids(self) -> np.ndarray:
        with self._lock:
            ids = self._faiss.vector_to_array(self.index.id_map).astype(np.int64)
        return np.setdiff1d(ids, np.fromiter(self._tombstones, dtype=np.int64)) if self._tombstones else ids

    def close(self) -> None:
        if self.writable:  # a read-only open never writes (it wrote a snapshot the manifest did not name)
            self.save()

    def save(self) -> SnapshotRecord:
        """Write the snapshot atomically; returns the record the manifest keeps for it."""
        with self._lock:
            if self._tombstones:  # compact: a saved HNSW index never holds deleted vectors
                keep = self.ids()
                self.rebuild(keep, np.stack([self.index.reconstruct(int(i)) for i in keep])
                             if len(keep) else np.zeros((0, self.dim), np.float32))
            data = self._faiss.serialize_index(self.index)
            ids = self._faiss.vector_to_array(self.index.id_map)
        record = SnapshotRecord(sha256=digest(data.tobytes()), bytes=int(data.nbytes), count=int(len(ids)),
                                dim=self.dim, min_id=int(ids.min()) if len(ids) else 0,
                                max_id=int(ids.max()) if len(ids) else 0)
        with atomic_write(self.path) as f:
            f.write(data.tobytes())
        return record
