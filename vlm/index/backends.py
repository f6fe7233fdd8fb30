"""Vector backends behind one interface: add, delete, get by id, search with k, persist.

- `FaissBackend` (default, embedded): exact inner product (`IndexFlatIP`) up to `exact_max` vectors, HNSW or
  IVF above it; or, given a memory budget or a factory string, the structure vlm/index/budget.py chooses
  (flat, HNSW, IVF-Flat, OPQ+IVF+PQ), built by streaming and tuned (vlm/index/tuning.py); saved as one file
  written atomically. Opened read-only, the snapshot is memory-mapped: processes
  serving the same folder share its pages through the page cache instead of each holding a copy.
- `MilvusBackend` (vlm/index/milvus.py): pymilvus' `MilvusClient`, on a milvus-lite file for one machine or a
  server URI for a Milvus cluster, with the same calls.

Vectors are L2-normalised, so inner product is cosine similarity. Ids are int64 item ids.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlm.atomic_io import atomic_write
from vlm.index.budget import Chunks, build_streaming, choose_factory, in_chunks, parse_size
from vlm.index.manifest import SnapshotRecord, verify_snapshot_file
from vlm.index.tuning import QuerySet, TuningRecord, evaluate, hnsw_of, record_tuning, rescore

log = logging.getLogger("vlm.index")


@dataclass(frozen=True)
class FaissConfig:
    exact_max: int = 1_000_000  # exact search below this many vectors; a flat scan of 1M x 512 is ~50 ms
    approximate: str = "hnsw"  # "hnsw" or "ivf" above exact_max
    hnsw_m: int = 32
    ef_search: int = 128
    ivf_nlist: int = 0  # 0: 4 * sqrt(n), the usual faiss rule of thumb
    nprobe: int = 16
    max_index_memory: str = ""  # "4G": the structure is chosen to fit (vlm/index/budget.py), then tuned
    index_factory: str = ""  # a faiss factory string ("OPQ64_512,IVF4096,PQ64x8"); wins over the budget
    refine: int = 100  # a PQ index's top this many are rescored exactly with the stored vectors (on disk)
    tuning: dict[str, TuningRecord] = field(default_factory=dict)  # per modality, written after a budgeted build

    def __post_init__(self) -> None:
        if self.max_index_memory:
            parse_size(self.max_index_memory)  # a bad size is one line before any work

    @property
    def budgeted(self) -> bool:
        return bool(self.max_index_memory or self.index_factory)

    def factory_for(self, n: int, dim: int) -> str:
        """The faiss factory string for n vectors: the explicit one, the budget's choice, or today's rule."""
        if self.index_factory:
            return self.index_factory
        if self.max_index_memory:
            return choose_factory(n, dim, parse_size(self.max_index_memory), self.exact_max)
        if n <= self.exact_max:
            return "Flat"
        if self.approximate == "hnsw":
            return f"HNSW{self.hnsw_m}"
        if self.approximate == "ivf":
            return f"IVF{self.ivf_nlist or max(1, int(4 * np.sqrt(n)))},Flat"
        raise ValueError(f"faiss approximate index must be 'hnsw' or 'ivf', got {self.approximate!r}")


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


COMPACT_FRACTION = 0.2  # an HNSW index is rebuilt without its deleted vectors once they pass this share
KINDS = {"IndexFlatIP": "flat", "IndexFlat": "flat", "IndexHNSWFlat": "hnsw", "IndexIVFFlat": "ivf",
         "IndexIVFPQ": "ivfpq", "IndexIVFScalarQuantizer": "ivfsq", "IndexIVFPQFastScan": "ivfpqfs"}


class FaissBackend(VectorBackend):
    """`expected` is the snapshot's manifest record: a file that does not match it is never loaded (set aside
    as `.corrupt` when `writable`), and the owner (`ItemIndex`) rebuilds the index from the item table.

    Flat and HNSW indexes sit in an `IndexIDMap2`; IVF indexes (IVF-Flat, IVF-PQ, with or without OPQ) keep the
    item ids in their own lists. A delete never rebuilds the index: flat and IVF remove the vectors in place
    (`remove_ids`); HNSW cannot remove, so it keeps tombstones, filtered at search and saved beside the snapshot
    (`image.faiss.deleted`), and the graph is rebuilt without them only once they pass `COMPACT_FRACTION`.

    Not `writable` (a read-only open), the snapshot is memory-mapped (`IO_FLAG_MMAP_IFC`: the vectors or codes
    stay in the file's pages, shared by every process that maps it; `IO_FLAG_MMAP` alone still copies a flat
    index into memory in faiss 1.15). A mapped index is immutable: faiss aborts the process (a failed
    assertion, or a segfault) on an add or remove there, so the first change a read-only open follows
    (`ItemIndex.follow`) first copies the mapped index into memory (`_own`), and from then on that modality is
    held in memory as a writable open holds it. A writer replaces snapshots by rename, so a mapped file's pages
    stay valid however many snapshots it writes after."""

    def __init__(self, path: str | Path, dim: int, config: FaissConfig = FaissConfig(),
                 expected: SnapshotRecord | None = None, writable: bool = True):
        import faiss

        self._faiss = faiss
        self.path, self.dim, self.config, self.writable = Path(path), dim, config, writable
        self._lock = threading.RLock()
        self._tombstones: set[int] = set()  # deleted ids an HNSW index still holds, hidden from search
        self.rejected: str | None = None  # why the snapshot on disk was not loaded
        self.mapped = False  # the index reads its vectors from the memory-mapped snapshot
        self.tuning: TuningRecord | None = None  # what the last budgeted build measured
        # ids -> their exact vectors (the owner's table or parts, on disk): re-ranks a compressed index's results
        self.vectors_of: Callable[[np.ndarray], np.ndarray] | None = None
        self.index = self._load(expected) if self.path.exists() else self._empty()
        if self.path.exists() and not self.rejected:
            self._tombstones = self._read_tombstones()

    @property
    def _deleted_path(self) -> Path:
        return self.path.with_name(self.path.name + ".deleted")

    def _load(self, expected: SnapshotRecord | None):
        before = self.path.stat()
        reason = verify_snapshot_file(self.path, expected)  # streamed: a 10M index is never read twice
        if reason is None:
            try:
                if self.writable:
                    index = self._faiss.read_index(str(self.path))
                else:
                    index, self.mapped = self._read_mapped()
                after = self.path.stat()
                if (after.st_ino, after.st_dev, after.st_mtime_ns) != (before.st_ino, before.st_dev,
                                                                      before.st_mtime_ns):
                    raise ValueError("replaced by a writer while it was read")  # rebuilt from the table
                if index.d != self.dim or index.ntotal != expected.count:
                    raise ValueError(f"holds {index.ntotal} vectors of dimension {index.d}, the manifest says "
                                     f"{expected.count} of {self.dim}")
                return index
            except (RuntimeError, ValueError) as e:  # faiss reports a bad file as RuntimeError
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        self.rejected, self.mapped = reason, False
        self._set_aside(reason)
        return self._empty()

    def _read_mapped(self):
        """Flat, HNSW and IVF indexes map (checked in faiss 1.15); one faiss cannot map is read into memory."""
        try:
            return self._faiss.read_index(str(self.path), self._faiss.IO_FLAG_MMAP_IFC), True
        except RuntimeError as e:
            log.info("%s: cannot be memory-mapped (%s); read into memory", self.path, str(e).splitlines()[0])
            return self._faiss.read_index(str(self.path)), False

    def _read_tombstones(self) -> set[int]:
        """The deleted ids saved with an HNSW snapshot; a lost file is harmless (the owner's reconcile with the
        table deletes them again)."""
        try:
            return {int(i) for i in np.load(self._deleted_path)} if self._deleted_path.exists() else set()
        except (OSError, ValueError) as e:
            log.warning("%s: unreadable (%s); deletes are taken from the item table again", self._deleted_path, e)
            return set()

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
    def _ivf(self):
        return self._faiss.try_extract_index_ivf(self.index)

    @property
    def kind(self) -> str:
        """flat, hnsw, ivf (IVF-Flat), ivfpq (opq-ivfpq with an OPQ rotation), ivfsq, ..."""
        faiss = self._faiss
        top = faiss.downcast_index(self.index)
        inner = faiss.downcast_index(top.index) if isinstance(top, faiss.IndexIDMap2) else top
        prefix = ""
        if isinstance(inner, faiss.IndexPreTransform):
            prefix, inner = "opq-", faiss.downcast_index(inner.index)
        return prefix + KINDS.get(type(inner).__name__, type(inner).__name__)

    def rebuild(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """A fresh index of these vectors (held by the caller), exact or approximate by their number."""
        vectors = _as_matrix(vectors, self.dim)
        ids = np.asarray(ids, dtype=np.int64)
        self.rebuild_from(lambda: in_chunks(ids, vectors), len(ids))

    def rebuild_from(self, chunks: Chunks, n: int, queries: Callable[[], dict[str, QuerySet]] | None = None) -> None:
        """A fresh index of the n vectors `chunks()` yields (each call a new pass), never all in memory. A
        budgeted config (a memory budget or a factory string) is then tuned on `queries` and recorded in the
        folder's index.json."""
        factory = self.config.factory_for(n, self.dim) if n else "Flat"
        start = time.perf_counter()
        index = build_streaming(factory, self.dim, chunks, n)
        build_s = time.perf_counter() - start
        ivf = self._faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.nprobe = min(self.config.nprobe, ivf.nlist)
        if hnsw_of(index) is not None:
            hnsw_of(index).efSearch = self.config.ef_search
        with self._lock:
            self.index, self._tombstones, self.mapped = index, set(), False
        if self.config.budgeted and queries is not None and n:
            self.tuning = evaluate(index, factory, queries(), chunks, self._size(), build_s, searcher=self,
                                   refine=self._refine(1))
            config_path = self.path.parent / "index.json"
            if self.writable and config_path.exists():
                record_tuning(config_path, self.path.name.split(".")[0], self.tuning)
            log.info("%s: %s tuned: %s", self.path, factory, self.tuning)

    def _size(self) -> int:
        counter = []
        self._faiss.write_index(self.index, self._faiss.PyCallbackIOWriter(lambda b: counter.append(len(b))))
        return sum(counter)

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

    @property
    def _tombstoned(self) -> bool:
        """HNSW (and an IVF inside an id map, from before IVF kept its own ids) cannot remove in place."""
        return isinstance(self.index, self._faiss.IndexIDMap2) and self.kind != "flat"

    def delete(self, ids: np.ndarray) -> None:
        """In place (flat, IVF), or as tombstones (HNSW): never a rebuild of the whole index."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        with self._lock:
            if self._tombstoned:
                self._tombstones.update(int(i) for i in ids)
                return
            self._own()
            ivf = self._ivf
            if ivf is not None and ivf.direct_map.type == self._faiss.DirectMap.Hashtable:
                self.index.remove_ids(self._faiss.IDSelectorArray(len(ids), self._faiss.swig_ptr(ids)))
            else:
                self.index.remove_ids(ids)

    def get(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors (a PQ index gives its decoded approximation)."""
        with self._lock:
            ivf = self._ivf
            if ivf is not None and ivf.direct_map.type == self._faiss.DirectMap.NoMap:
                self._own()  # reconstruct by id needs a direct map; built on first use only (~40 B a vector)
                self._ivf.set_direct_map_type(self._faiss.DirectMap.Hashtable)
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
        depth = self._refine(k)
        with self._lock:
            scores, ids = self.index.search(queries, max(k, depth), params=self._search_params())
        if depth:
            scores, ids = rescore(queries, ids, self.vectors_of, k)
        scores[ids < 0] = -np.inf
        return scores, ids

    def _refine(self, k: int) -> int:
        """How many candidates to rescore exactly: a PQ index's codes blur the small score gaps between close
        neighbours (recall@10 about 0.7 with 136 B codes at 512-d), their exact vectors do not."""
        if self.vectors_of is None or not self.config.refine or "pq" not in self.kind:
            return 0
        return max(k, self.config.refine)

    def _search_params(self):
        if not self._tombstones:
            return None
        banned = np.fromiter(self._tombstones, dtype=np.int64)
        selector = self._faiss.IDSelectorNot(self._faiss.IDSelectorBatch(banned))
        hnsw = hnsw_of(self.index)
        if hnsw is not None:
            return self._faiss.SearchParametersHNSW(sel=selector, efSearch=hnsw.efSearch)
        return self._faiss.SearchParametersIVF(sel=selector, nprobe=self._ivf.nprobe)

    def _stored_ids(self) -> np.ndarray:
        """Every id the index holds, deleted HNSW ones included: the id map, or an IVF's inverted lists."""
        faiss = self._faiss
        if isinstance(self.index, faiss.IndexIDMap2):
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)
        invlists, parts = self._ivf.invlists, []
        for lst in range(invlists.nlist):
            size = invlists.list_size(lst)
            if size:
                parts.append(faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy())
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def ids(self) -> np.ndarray:
        with self._lock:
            ids = self._stored_ids()
        banned = np.fromiter(self._tombstones, dtype=np.int64)
        return np.setdiff1d(ids, banned, assume_unique=True) if self._tombstones else ids

    def close(self) -> None:
        if self.writable:  # a read-only open never writes (it wrote a snapshot the manifest did not name)
            self.save()

    def compact(self) -> None:
        """Rebuild an HNSW index without its deleted vectors (streamed, in batches of reconstructed vectors)."""
        with self._lock:
            keep = self.ids()
            hnsw = hnsw_of(self.index)
            ef = hnsw.efSearch if hnsw is not None else None
            index = self.index
            self.rebuild_from(lambda: ((b, np.stack([index.reconstruct(int(i)) for i in b]))
                                       for b in np.array_split(keep, max(1, len(keep) // 10_000)) if len(b)),
                              len(keep))
            if ef is not None and hnsw_of(self.index) is not None:
                hnsw_of(self.index).efSearch = ef

    def save(self) -> SnapshotRecord:
        """Write the snapshot (and an HNSW index's tombstones) atomically; returns the manifest's record."""
        with self._lock:
            if self._tombstones and len(self._tombstones) > COMPACT_FRACTION * self.index.ntotal:
                self.compact()
            if self._tombstones or self._deleted_path.exists():
                with atomic_write(self._deleted_path) as f:
                    np.save(f, np.fromiter(sorted(self._tombstones), dtype=np.int64))
            ids = self._stored_ids()
            sha, size = hashlib.sha256(), 0
            with atomic_write(self.path) as f:
                def write(block: bytes) -> None:
                    nonlocal size
                    sha.update(block)
                    f.write(block)
                    size += len(block)

                self._faiss.write_index(self.index, self._faiss.PyCallbackIOWriter(write))
        return SnapshotRecord(sha256=sha.hexdigest(), bytes=size, count=int(self.index.ntotal), dim=self.dim,
                              min_id=int(ids.min()) if len(ids) else 0, max_id=int(ids.max()) if len(ids) else 0)
