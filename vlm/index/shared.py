"""What an index folder does differently on a Milvus server collection shared with other writers.

Each writer keeps its own folder and item table; the collection holds every writer's vectors, and its registry
(`MilvusRegistry`) every writer's item ids and metadata. Three rules keep the writers from losing each other's
items:

- **Ids come from Milvus** (the registry's auto_id), never from a writer's own counter, so no two writers ever
  give one id to two items. The registry row is written first, then the local row with that id, then the vectors.
- **Start-up only adds.** A writer adds the vectors its table holds and the collection lacks (after a crash), and
  leaves every vector it does not know alone: those are held by other writers. It never deletes at start-up,
  except the deletes its own table recorded as owed (`pending_deletes`, written in the delete's transaction).
- **A hit from another writer is shown**, with the metadata the registry holds for it.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np

from vlm.index.errors import IndexFolderError
from vlm.index.milvus import MilvusBackend, MilvusRegistry
from vlm.index.store import Item, ItemStore

log = logging.getLogger("vlm.index")


def open_registry(uri: str, name: str, token: str, store: ItemStore) -> MilvusRegistry:
    """The collection's registry; created only for a table that has never held an item, so a table pointed at
    the wrong server or collection (or at a dropped one) is refused, not re-registered under new ids."""
    registry = MilvusRegistry(uri, name, token, create=store.max_id == 0)
    if registry.collection_missing:
        registry.close()
        raise IndexFolderError(
            f"{store.path}: the table holds items added through Milvus collection {registry.collection} at {uri}, "
            "and that collection is not there: check --milvus-uri and the collection name (index.json), or restore "
            "the collection; a fresh collection needs a fresh index folder")
    return registry


def replay_pending(store: ItemStore, backends: dict[str, MilvusBackend], registry: MilvusRegistry) -> int:
    """Deletes committed here that the shared collection may not have seen (a crash or a server outage between
    the commit and the Milvus delete); Milvus deletes are idempotent, so replaying one twice is harmless."""
    ids = store.pending_deletes()
    if ids:
        delete_shared(ids, backends, registry)
        store.clear_pending(ids)
        log.info("%s: replayed %d deletes the shared collection had not seen", store.path.parent, len(ids))
    return len(ids)


def delete_shared(ids: list[int], backends: dict[str, MilvusBackend], registry: MilvusRegistry) -> None:
    """Vectors first, then the registry row: a search never returns an id whose metadata is already gone."""
    for backend in backends.values():
        backend.delete(np.asarray(ids, dtype=np.int64))
    registry.delete(ids)


def reconcile_shared(store: ItemStore, modality: str, backend: MilvusBackend, registry: MilvusRegistry) -> int:
    """Add the vectors of this table that the collection lacks; delete nothing. Returns how many were added."""
    table_ids = store.ids(modality)
    held = backend.present(table_ids)
    missing = np.setdiff1d(table_ids, held)
    if len(missing):
        registered = registry.present(missing)
        gone = [int(i) for i in missing if int(i) not in registered]
        if gone:
            log.warning("%s: %d %s items of the table were deleted from the shared collection through another "
                        "folder holding them (a copy of this one); not added back (ids %s)", store.path.parent,
                        len(gone), modality, gone[:10])
        missing = np.array(sorted(registered), dtype=np.int64)
        for ids, vectors in store.vectors(modality, missing):
            backend.add(ids, vectors)
    others = backend.count() - len(held) - len(missing)
    if others > 0:
        log.info("%s: %d vectors are held by other writers; left as they are", backend.collection, others)
    return len(missing)


def register(items: list[Item], store: ItemStore, registry: MilvusRegistry) -> list[int]:
    """Ids from Milvus, then the local rows; a commit that fails takes its registry rows back with it."""
    ids = registry.register(items)
    try:
        return store.add(items, ids)
    except BaseException:
        with contextlib.suppress(Exception):
            registry.delete(ids)
        raise


def complete(hits: list[tuple[int, float]], local: dict[int, Item], registry: MilvusRegistry | None,
             directory) -> list[tuple[Item, float, bool]]:
    """(item, score, local) for each hit: from this table, else from the registry (another writer's item). A hit
    neither knows (deleted while the search ran) is left out and logged, never dropped silently."""
    unknown = [i for i, _ in hits if i not in local]
    remote = registry.fetch(unknown) if registry is not None and unknown else {}
    lost = [i for i in unknown if i not in remote]
    if lost:
        level = logging.WARNING if registry is not None else logging.DEBUG
        log.log(level, "%s: %d search hits have no item in this table nor in the shared registry (deleted while "
                "the search ran); left out: ids %s", directory, len(lost), lost[:10])
    return [(local[i], s, True) if i in local else (remote[i], s, False) for i, s in hits if i in local or i in remote]
