"""An index folder: the SQLite item table (source of truth) plus one vector backend per modality.

    DIR/index.json      what built it: backend, dimension, model and its precision, faiss settings (written once,
                        atomically)
    DIR/items.sqlite    items with metadata and vectors (WAL, synchronous=FULL)
    DIR/items.mark      the commit mark: the table's change counter and highest id, after every commit
    DIR/image.faiss     faiss snapshots (faiss backend), caught up from the table at open
    DIR/snapshots.json  each snapshot's checksum, count and dimension, written after the snapshots
    DIR/index.lock      held (flock) by the one process that writes the folder
    DIR/milvus.db       milvus-lite file (milvus backend without a server URI)
    DIR/images/         images added through the API

index.json is read by vlm/index/config.py. Opening an index checks every file (the table with SQLite's
quick_check and against its mark, each snapshot against the manifest), then reconciles each backend with the
table: ids missing from the backend are added, ids the table no longer has are deleted. That is what makes a
`kill -9` harmless and a damaged snapshot a rebuild.
A Milvus server collection is shared with other writers, and follows vlm/index/shared.py instead: ids come from
Milvus, and start-up only adds.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from vlm.index import shared
from vlm.index.backends import FaissBackend, VectorBackend
from vlm.index.config import BACKENDS, CONFIG_NAME, IndexConfig, check_writable, read_config, write_config
from vlm.index.errors import IndexFolderError, IndexLockedError, IndexReadOnlyError
from vlm.index.lock import FolderLock
from vlm.index.manifest import Manifest, read_manifest, write_manifest
from vlm.index.milvus import (
    INDEX_TYPES,
    MilvusBackend,
    MilvusRegistry,
    release_milvus_lite,
    resolve_token,
)
from vlm.index.storage import StorageFailure, storage_failure
from vlm.index.store import MODALITIES, Item, ItemStore
from vlm.index.tuning import table_queries

__all__ = ["Hit", "IndexFolderError", "IndexLockedError", "IndexReadOnlyError", "ItemIndex", "open"]

STORE_NAME = "items.sqlite"
log = logging.getLogger("vlm.index")


@dataclass
class Hit:
    item: Item
    score: float
    local: bool = True  # False: another writer's item on a shared Milvus, its metadata from the registry


class ItemIndex:
    """Add, delete, get and search items; thread-safe.

    Opened writable, it holds the folder's lock (one writer per folder). Opened `read_only`, or fallen back to
    read-only because the folder cannot be written (permissions, a full disk; `read_only_reason` says which file),
    it serves searches, refuses writes, and `follow`s a writer's commits."""

    def __init__(self, directory: str | Path, config: IndexConfig | None = None, read_only: bool = False,
                 milvus_token: str = ""):
        """Open the index in `directory`, or create it there when `config` is given and none exists. The Milvus
        token is `milvus_token`, else `config.milvus_token`, else $VLM_MILVUS_TOKEN."""
        self.directory = Path(directory)
        if config is not None and not (self.directory / CONFIG_NAME).exists():
            if config.backend not in BACKENDS:
                raise IndexFolderError(f"index backend must be one of {BACKENDS}, got {config.backend!r}")
            if config.milvus_index not in INDEX_TYPES:
                raise IndexFolderError(f"Milvus index type must be one of {INDEX_TYPES}, got {config.milvus_index!r}")
            self.directory.mkdir(parents=True, exist_ok=True)
            write_config(self.directory, config)
        token = resolve_token(milvus_token or (config.milvus_token if config is not None else ""))
        self.config = replace(read_config(self.directory), milvus_token=token)
        self.registry: MilvusRegistry | None = None
        self._lock = threading.RLock()
        self._changes = 0
        self._followed_at = 0.0
        self.snapshot_error: str | None = None
        self.read_only_reason: str | None = "opened read-only" if read_only else None
        self._folder_lock: FolderLock | None = None
        if read_only:
            self._open(read_only=True)
            return
        try:
            self._open(read_only=False)
        except StorageFailure as e:  # a full disk or a read-only folder: serve what is there, refuse writes
            self._release()
            log.error("%s: cannot write %s (%s); serving read-only: searches work, adds and deletes are refused",
                      self.directory, e.path, e.reason)
            self.read_only_reason = f"cannot write {e.path.name}: {e.reason}"
            self.full = e.full
            self._open(read_only=True)

    @property
    def read_only(self) -> bool:
        return self.read_only_reason is not None

    # --- opening
    def _open(self, read_only: bool) -> None:
        self.full = getattr(self, "full", False)
        try:
            with storage_failure(self.directory, self.directory):
                if not read_only:
                    self._folder_lock = FolderLock(self.directory)
                    check_writable(self.directory)
            self.store = self._open_store(read_only)
            manifest = self._read_manifest()
            if self.config.shared:
                self.registry = shared.open_registry(self.config.milvus_uri, self.config.milvus_collection,
                                                     self.config.milvus_token, self.store)
            self.backends = {m: self._open_backend(m, manifest, read_only) for m in MODALITIES}
            self._refuse_emptied_table(manifest)
            with storage_failure(self.directory):
                if self.registry is not None and not read_only:
                    shared.replay_pending(self.store, self.backends, self.registry)
                changed = [not self._snapshot_current(m, manifest) and self.reconcile(m, save=False) != (0, 0)
                           for m in MODALITIES]
                if not read_only:
                    if any(changed) or not self._manifest_matches(manifest):
                        self.save()
                    self._remove_orphan_images()
        except BaseException:
            self._release()
            raise

    def _open_store(self, read_only: bool) -> ItemStore:
        with storage_failure(self.directory, self.directory / STORE_NAME):
            return ItemStore(self.directory / STORE_NAME, read_only=read_only)

    def _read_manifest(self) -> Manifest | None:
        manifest, why = read_manifest(self.directory)
        if why:
            log.warning("%s; its snapshots are rebuilt from the item table", why)
        if manifest is not None and (manifest.changes > self.store.changes or manifest.max_id > self.store.max_id):
            raise IndexFolderError(
                f"{self.store.path}: the table is older than its snapshot manifest (it holds {self.store.changes} "
                f"changes up to id {self.store.max_id}, the manifest {manifest.changes} up to id {manifest.max_id}):"
                " committed items are missing; restore the folder from a backup, or accept the table as it is with "
                f"`vlm index check {self.directory} --repair`")
        return manifest

    def _open_backend(self, modality: str, manifest: Manifest | None, read_only: bool) -> VectorBackend:
        c = self.config
        if c.backend == "faiss":
            expected = (manifest.snapshots or {}).get(f"{modality}.faiss") if manifest else None
            backend = FaissBackend(self.directory / f"{modality}.faiss", c.dim, c.faiss, expected, not read_only)
            backend.vectors_of = lambda ids: self._exact_vectors(modality, ids)  # re-ranks a PQ index's hits
            return backend
        uri = c.milvus_uri or str(self.directory / "milvus.db")
        try:
            return MilvusBackend(uri, f"{c.milvus_collection}_{modality}", c.dim, c.milvus_token, c.milvus_index)
        except IndexFolderError:
            raise
        except Exception as e:  # pymilvus raises its own MilvusException; milvus-lite one process per file
            if not c.milvus_uri:
                raise IndexFolderError(f"{uri}: milvus-lite could not open it ({str(e).splitlines()[0]}); a "
                                       "milvus-lite file serves one process: stop the other one, or use a Milvus "
                                       "server (--milvus-uri) to serve from several") from None
            raise

    def _exact_vectors(self, modality: str, ids: np.ndarray) -> np.ndarray:
        """The table's (or its parts') vectors of these sorted ids; zeros for one deleted meanwhile."""
        out = np.zeros((len(ids), self.config.dim), np.float32)
        for got, vectors in self.store.vectors(modality, ids):
            out[np.searchsorted(ids, got)] = vectors
        return out

    def _refuse_emptied_table(self, manifest: Manifest | None) -> None:
        """An empty table beside vectors is a lost table, never an empty index to 'repair' the vectors down to.
        (A shared collection's vectors are other writers' too: open_registry refuses a lost table there.)"""
        if self.store.count() or self.store.max_id or self.config.shared:
            return
        for modality, backend in self.backends.items():
            held = len(backend)
            if held:
                raise IndexFolderError(f"{self.store.path}: the item table is empty, but the {modality} vectors "
                                       f"hold {held} items; refusing to serve (or empty) them: restore the folder "
                                       "from a backup (vlm index backup)")

    def _snapshot_current(self, modality: str, manifest: Manifest | None) -> bool:
        """The snapshot was written at the table's present state (no commit since: the same change counter and
        highest id), so reconciling would find nothing. Skipping it spares listing every id the index holds,
        which at 10M items faulted in 2 GB of a mapped index's pages and took 90 s of a server's start."""
        backend = self.backends[modality]
        record = (manifest.snapshots or {}).get(f"{modality}.faiss") if manifest else None
        return (self.registry is None and isinstance(backend, FaissBackend) and record is not None
                and not backend.rejected  # loaded, and matching the record (count, dimension, size)
                and (manifest.changes, manifest.max_id) == (self.store.changes, self.store.max_id))

    def _manifest_matches(self, manifest: Manifest | None) -> bool:
        if self.config.backend != "faiss":
            return True
        return manifest is not None and all(
            not b.rejected and f"{m}.faiss" in (manifest.snapshots or {}) for m, b in self.backends.items())

    def _remove_orphan_images(self) -> None:
        """Image files no row refers to: an add killed between writing its image and committing its row."""
        folder = self.directory / "images"
        if not folder.is_dir():
            return
        referenced = self.store.paths_under("images/")
        orphans = [p for p in folder.iterdir() if p.is_file() and f"images/{p.name}" not in referenced]
        for path in orphans:
            with contextlib.suppress(OSError):
                path.unlink()
        if orphans:
            log.info("%s: removed %d image files no item refers to (left by interrupted adds)", folder, len(orphans))

    def _release(self) -> None:
        for backend in getattr(self, "backends", {}).values():
            with contextlib.suppress(Exception):
                backend.close()
        if getattr(self, "store", None) is not None:
            with contextlib.suppress(Exception):
                self.store.close()
            self.store = None
        if self.registry is not None:
            with contextlib.suppress(Exception):
                self.registry.close()
            self.registry = None
        if self.config.backend == "milvus" and not self.config.milvus_uri:
            with contextlib.suppress(Exception):
                release_milvus_lite(self.directory / "milvus.db")
        self.backends = {}
        if self._folder_lock is not None:
            self._folder_lock.release()
            self._folder_lock = None

    def reconcile(self, modality: str, save: bool = True) -> tuple[int, int]:
        """Bring the backend in line with the table; returns (added, removed). A shared Milvus collection only
        gets what the table has and it lacks, and only from a writer (vlm/index/shared.py)."""
        backend = self.backends[modality]
        if self.registry is not None:
            added = 0 if self.read_only else shared.reconcile_shared(self.store, modality, backend, self.registry)
            return added, 0
        table_ids, backend_ids = self.store.ids(modality), backend.ids()
        # both sorted and unique: assume_unique skips two sorts by hash (90 s of a 10M folder's open under load)
        missing = np.setdiff1d(table_ids, backend_ids, assume_unique=True)
        extra = np.setdiff1d(backend_ids, table_ids, assume_unique=True)
        if isinstance(backend, FaissBackend) and len(backend_ids) == 0 and len(missing):
            # A whole build at once, streamed from the table: faiss picks the structure by its size (or budget).
            backend.rebuild_from(lambda: self.store.vectors(modality), len(missing),
                                 lambda: table_queries(self.store))
        else:
            for ids, vectors in self.store.vectors(modality, missing):
                backend.add(ids, vectors)
        if len(extra):
            backend.delete(extra)
        if save and (len(missing) or len(extra)):
            self.save()
        return len(missing), len(extra)

    # --- items
    def add(self, items: list[Item], index_vectors: bool = True) -> list[int]:
        """Add items; each is durable (committed and fsynced) when this returns. `index_vectors=False` writes
        the table only (a build): the vectors reach the search structures when the folder is next opened."""
        for item in items:
            for vec in (item.image_vec, item.text_vec):
                if vec is not None and vec.shape != (self.config.dim,):
                    raise ValueError(f"vector has shape {vec.shape}, the index holds dimension {self.config.dim}")
        with self._lock:
            self._refuse_read_only()
            if self.registry is not None:
                ids = shared.register(items, self.store, self.registry)
            else:
                ids = self.store.add(items)
            if not index_vectors:
                return ids
            for modality in MODALITIES:
                pairs = [(i.id, getattr(i, f"{modality}_vec")) for i in items]
                pairs = [(i, v) for i, v in pairs if v is not None]
                if pairs:
                    self.backends[modality].add(np.array([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))
            self._changed(len(items))
        return ids

    def delete(self, item_id: int) -> bool:
        with self._lock:
            self._refuse_read_only()
            item = self.store.get(item_id)
            if item is None or not self.store.delete(item_id, pending=self.registry is not None):
                return False
            if self.registry is not None:
                self._delete_shared(item_id)
            else:
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

    def _delete_shared(self, item_id: int) -> None:
        """The row is gone (committed, with the delete recorded as owed); a server that fails now gets it at the
        next open."""
        try:
            shared.delete_shared([item_id], self.backends, self.registry)
            self.store.clear_pending([item_id])
        except Exception as e:  # pymilvus' MilvusException, a lost connection
            log.error("%s: deleted item %s, but the shared Milvus collection could not be told (%s); it is "
                      "retried when the index is next opened", self.directory, item_id, str(e).splitlines()[0])

    def _refuse_read_only(self) -> None:
        if self.read_only:
            raise IndexReadOnlyError(f"{self.directory}: the index is read-only ({self.read_only_reason})")

    def get(self, item_id: int, vectors: bool = False) -> Item | None:
        """This table's item, else (a shared Milvus) another writer's, from the registry and the collections."""
        items = self.get_many([item_id], vectors)
        return items[0] if items else None

    def get_many(self, ids: list[int], vectors: bool = False) -> list[Item]:
        """Items in the order of `ids`, absent ones left out; on a shared Milvus, other writers' too."""
        local = {item.id: item for item in self.store.get_many(ids, vectors)}
        unknown = [int(i) for i in ids if int(i) not in local]
        if self.registry is not None and unknown:
            remote = self.registry.fetch(unknown)
            if vectors:
                for item in remote.values():
                    item.image_vec, item.text_vec = (self._stored_vector(m, item.id) for m in MODALITIES)
            local.update(remote)
        return [local[int(i)] for i in ids if int(i) in local]

    def _stored_vector(self, modality: str, item_id: int) -> np.ndarray | None:
        try:
            return self.backends[modality].get(np.array([item_id]))[0]
        except KeyError:
            return None

    def search(self, queries: np.ndarray, k: int, modality: str = "image") -> list[list[Hit]]:
        """The k best items for each query vector, by cosine similarity, best first."""
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != self.config.dim:
            raise ValueError(f"embedding has dimension {queries.shape[1]}, the index holds {self.config.dim}")
        self.follow()
        scores, ids = self.backends[modality].search(queries, k)
        results = []
        for row_scores, row_ids in zip(scores, ids, strict=True):
            valid = [(int(i), float(s)) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]
            items = {item.id: item for item in self.store.get_many([i for i, _ in valid])}
            results.append([Hit(item, s, local) for item, s, local
                            in shared.complete(valid, items, self.registry, self.directory)])
        return results

    def follow(self, every_s: float = 1.0) -> None:
        """Read-only beside a writer: at most once a second, catch the search structures up with its commits."""
        if not self.read_only or time.monotonic() - self._followed_at < every_s:
            return
        with self._lock:
            self._followed_at = time.monotonic()
            if self.store.refresh():
                for modality in MODALITIES:
                    self.reconcile(modality, save=False)

    def resolve_path(self, item: Item) -> Path | None:
        """The image file of an item: relative paths are relative to the index folder."""
        if not item.path:
            return None
        path = Path(item.path)
        return path if path.is_absolute() else self.directory / path

    def public_path(self, item: Item) -> str | None:
        """The item's image as a client may see it: relative to the index folder or to the source it was built
        from, never a path on this server."""
        if not item.path or not Path(item.path).is_absolute():
            return item.path
        root = self.image_root
        if root is not None:
            with contextlib.suppress(ValueError):
                return Path(item.path).relative_to(root).as_posix()
        return Path(item.path).name

    @property
    def image_root(self) -> Path | None:
        if not hasattr(self, "_image_root"):
            source = self.store.get_meta("image_root") or (self.store.get_meta("source") or "").split(" split=")[0]
            self._image_root = Path(source) if source else None
            if self._image_root is not None and self._image_root.suffix:  # a pairs file: its folder
                self._image_root = self._image_root.parent
        return self._image_root

    def __len__(self) -> int:
        return self.store.count()

    # --- persistence
    def _changed(self, n: int) -> None:
        self._changes += n
        if self.config.backend == "faiss" and self._changes >= self.config.snapshot_every:
            self.try_save()

    def try_save(self) -> bool:
        """Snapshot after a commit: a failure (a full disk) is logged and retried at the next change, and never
        turns the committed change into an error."""
        try:
            self.save()
            self.snapshot_error = None
            return True
        except (OSError, RuntimeError) as e:
            self.snapshot_error = str(e)
            log.error("%s: snapshot failed (%s); the table holds every change, the snapshot is retried",
                      self.directory, e)
            return False

    def save(self) -> None:
        with self._lock:
            records = {}
            for modality, backend in self.backends.items():
                record = backend.save()
                if record is not None:
                    records[f"{modality}.faiss"] = record
            if self.config.backend == "faiss":
                write_manifest(self.directory, Manifest(self.store.changes, self.store.max_id, records))
            self._changes = 0

    def close(self) -> None:
        with self._lock:
            if not self.read_only and self._changes:
                self.try_save()
            self._release()

    def info(self) -> dict:
        """Counts kept as items change and a few `stat`s: O(1) whatever the index holds."""
        c = self.config
        backends = {m: (b.kind if isinstance(b, FaissBackend) else "milvus") for m, b in self.backends.items()}
        size = 0
        for path in self.directory.iterdir():
            with contextlib.suppress(OSError):
                if path.is_file():
                    size += path.stat().st_size
        return {"directory": str(self.directory), "items": len(self), "dim": c.dim, "backend": c.backend,
                "model": c.model, "precision": c.precision, "vectors": {m: self.store.count(m) for m in MODALITIES},
                "search_structure": backends,
                "mapped": {m: bool(getattr(b, "mapped", False)) for m, b in self.backends.items()},
                "bytes_on_disk": size, "read_only": self.read_only,
                "read_only_reason": self.read_only_reason,
                "snapshot_error": self.snapshot_error}


def open(directory: str | Path, read_only: bool = False,  # noqa: A001 (vlm.index.open, as io.open)
         milvus_token: str = "") -> ItemIndex:
    """Open an existing index folder for searching, adding and removing items, with no server."""
    return ItemIndex(directory, read_only=read_only, milvus_token=milvus_token)

