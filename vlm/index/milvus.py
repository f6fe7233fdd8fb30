"""Milvus: one collection per modality, on a milvus-lite file (one machine) or a Milvus server URI (shared).

A server collection may be shared by several writers, each with its own index folder. Beside the vector
collections `<name>_image` and `<name>_text` it then holds the item registry `<name>_items` (`MilvusRegistry`):
one row per item with its caption, path and extra, whose `auto_id` primary key is the item's id everywhere.
Milvus allocates those ids from one cluster-wide allocator, so no two writers ever get the same one.

The token (`user:password` or an API key) is passed to pymilvus and never written, logged or put in a message.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from vlm.index.backends import VectorBackend, _as_matrix
from vlm.index.errors import IndexFolderError
from vlm.index.store import Item

log = logging.getLogger("vlm.index")

INDEX_TYPES = ("FLAT", "HNSW", "IVF_PQ", "DISKANN")
TOKEN_ENV = "VLM_MILVUS_TOKEN"
QUERY_CHUNK = 10_000  # ids per `id in [...]` query: below Milvus' 16,384-row query window
MAX_TEXT = 65_535  # Milvus' longest VARCHAR, in bytes


def is_server_uri(uri: str) -> bool:
    """A Milvus server (shared by design) rather than a milvus-lite file (one process)."""
    return "://" in uri


def resolve_token(token: str = "") -> str:
    """The token given, else $VLM_MILVUS_TOKEN: the environment keeps it out of `ps` and shell history."""
    return token or os.environ.get(TOKEN_ENV, "")


def index_params(index_type: str, dim: int) -> dict:
    """Build parameters: HNSW as faiss' (M=32), IVF_PQ with 4 dimensions per sub-quantizer (128 B a 512-d
    vector, LAION's PQ128), DiskANN with the server's defaults."""
    if index_type == "HNSW":
        return {"M": 32, "efConstruction": 200}
    if index_type == "IVF_PQ":
        m = max(d for d in range(1, max(1, dim // 4) + 1) if dim % d == 0)
        return {"nlist": 1024, "m": m, "nbits": 8}
    if index_type in ("FLAT", "DISKANN"):
        return {}
    raise ValueError(f"Milvus index type must be one of {', '.join(INDEX_TYPES)}, got {index_type!r}")


def search_params(index_type: str, k: int) -> dict:
    """Search breadth: each structure needs at least k candidates (ef, search_list) to return k."""
    params = {"HNSW": {"ef": max(k, 128)}, "IVF_PQ": {"nprobe": 32}, "DISKANN": {"search_list": max(k, 100)}}
    return {"metric_type": "IP", "params": params.get(index_type, {})}


def connect(uri: str, token: str = ""):
    """A MilvusClient; a server that cannot be reached or refuses the token is one line without the token."""
    from pymilvus import MilvusClient

    if not is_server_uri(uri):
        return MilvusClient(uri=uri)
    try:
        return MilvusClient(uri=uri, token=token) if token else MilvusClient(uri=uri)
    except Exception as e:  # pymilvus: MilvusException, whatever went wrong
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        if token:
            reason = reason.replace(token, "***")
        how = ("with the token given" if token
               else f"without a token (set {TOKEN_ENV} or --milvus-token if it needs one)")
        raise IndexFolderError(f"{uri}: cannot connect to the Milvus server {how}: {reason}") from None


class _DropLiteTimestampWarning(logging.Filter):
    """milvus-lite answers a query iterator without a server timestamp, and pymilvus then warns on every
    iteration ("failed to get mvccTs ..., use client-side ts instead") before doing the right thing: one
    process writes the file, so the client's clock is the order of writes. Nothing for a user to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to get mvccTs" not in record.getMessage()


_DROP_LITE_TIMESTAMP_WARNING = _DropLiteTimestampWarning()


class MilvusBackend(VectorBackend):
    """One Milvus collection (id INT64 primary key, vector FLOAT_VECTOR, IP metric, `index_type` search)."""

    def __init__(self, uri: str, collection: str, dim: int, token: str = "", index_type: str = "FLAT"):
        if not is_server_uri(uri):  # a milvus-lite file; a server's timestamps are worth the warning
            logging.getLogger("pymilvus.client.iterator.query_iterator").addFilter(_DROP_LITE_TIMESTAMP_WARNING)
        self.uri, self.collection, self.dim, self.index_type = uri, collection, dim, index_type
        self.client = connect(uri, token)
        if not self.client.has_collection(collection):
            self._create()
        self.client.load_collection(collection)

    def _create(self) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        params = self.client.prepare_index_params()
        params.add_index("vector", index_type=self.index_type, metric_type="IP",
                         params=index_params(self.index_type, self.dim))
        # Session: a writer reads its own writes at once, other writers' within the server's tick.
        extra = {"consistency_level": "Session"} if is_server_uri(self.uri) else {}
        self.client.create_collection(self.collection, schema=schema, index_params=params, **extra)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = _as_matrix(vectors, self.dim)
        rows = [{"id": int(i), "vector": v.tolist()} for i, v in zip(ids, vectors, strict=True)]
        for start in range(0, len(rows), 10_000):  # keep each gRPC message well under its size limit
            self.client.upsert(self.collection, rows[start : start + 10_000])

    def delete(self, ids: np.ndarray) -> None:
        if len(ids):
            self.client.delete(self.collection, ids=[int(i) for i in ids])

    def get(self, ids: np.ndarray) -> np.ndarray:
        wanted = [int(i) for i in ids]
        rows = {r["id"]: r["vector"] for r in self.client.get(self.collection, ids=wanted, output_fields=["vector"])}
        missing = [i for i in wanted if i not in rows]
        if missing:
            raise KeyError(missing[0])
        return np.array([rows[i] for i in wanted], dtype=np.float32).reshape(len(wanted), self.dim)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = _as_matrix(queries, self.dim)
        hits = self.client.search(self.collection, data=queries.tolist(), limit=k, output_fields=["id"],
                                  search_params=search_params(self.index_type, k))
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        for q, row in enumerate(hits):
            for j, hit in enumerate(row[:k]):
                scores[q, j], ids[q, j] = hit["distance"], hit["id"]
        return scores, ids

    def ids(self) -> np.ndarray:
        iterator = self.client.query_iterator(self.collection, batch_size=10_000, filter="id >= 0",
                                              output_fields=["id"])
        ids: list[int] = []
        while batch := iterator.next():
            ids.extend(row["id"] for row in batch)
        iterator.close()
        return np.array(sorted(ids), dtype=np.int64)

    def present(self, ids: np.ndarray) -> np.ndarray:
        """Those of `ids` the collection holds, read at once (Strong): O(len(ids)), not O(collection)."""
        return np.array(sorted(present(self.client, self.collection, ids)), dtype=np.int64)

    def count(self) -> int:
        """Vectors in the collection, every writer's."""
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(rows[0]["count(*)"])

    def save(self) -> None:
        """milvus-lite persists on flush. A server has every acknowledged write in its log already; a flush there
        only seals segments early (2 s a call on a 2.3 standalone), so a closing writer leaves that to it."""
        if not is_server_uri(self.uri):
            self.client.flush(self.collection)
        return None

    def close(self) -> None:
        self.save()
        self.client.close()


def present(client, collection: str, ids) -> set[int]:
    """The ids of `ids` that `collection` holds, in chunks, with Strong consistency (every acknowledged write)."""
    ids = [int(i) for i in ids]
    found: set[int] = set()
    for start in range(0, len(ids), QUERY_CHUNK):
        part = ids[start : start + QUERY_CHUNK]
        rows = client.query(collection, filter=f"id in {part}", output_fields=["id"], consistency_level="Strong")
        found.update(int(r["id"]) for r in rows)
    return found


class MilvusRegistry:
    """`<name>_items` on a Milvus server: each item's id (Milvus' auto_id, never reused across writers) and its
    metadata, so a writer can show the hits other writers added. Milvus needs a vector field in every
    collection; this one's is a 2-d zero vector, never searched."""

    def __init__(self, uri: str, name: str, token: str = "", create: bool = True):
        """`create`: make the registry when it is not there; otherwise `collection_missing` says so."""
        self.uri, self.collection = uri, f"{name}_items"
        self.client = connect(uri, token)
        self.collection_missing = False
        if not self.client.has_collection(self.collection):
            if self.client.has_collection(f"{name}_image"):
                self.client.close()
                raise IndexFolderError(
                    f"{uri}: collection {name}_image has no item registry ({self.collection}): it was made by an "
                    "older vlm whose writers took ids from their own tables, so ids in it may collide; build into "
                    "a new --milvus-collection")
            if not create:
                self.collection_missing = True
                return
            self._create()
        self.client.load_collection(self.collection)

    def _create(self) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=True)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)
        for name in ("path", "caption", "extra"):
            schema.add_field(name, DataType.VARCHAR, max_length=MAX_TEXT)
        params = self.client.prepare_index_params()
        params.add_index("vector", index_type="FLAT", metric_type="L2")
        self.client.create_collection(self.collection, schema=schema, index_params=params,
                                      consistency_level="Session")

    def register(self, items: list[Item]) -> list[int]:
        """Insert the items' metadata; returns the ids Milvus assigned them, in order."""
        if not items:
            return []
        rows = [{"vector": [0.0, 0.0], "path": _text(i.path, "path"), "caption": _text(i.caption, "caption"),
                 "extra": _text(json.dumps(i.extra), "extra", "{}")} for i in items]
        return [int(i) for i in self.client.insert(self.collection, rows)["ids"]]

    def fetch(self, ids: list[int]) -> dict[int, Item]:
        """The registered items among `ids` (any writer's), by id."""
        found: dict[int, Item] = {}
        for start in range(0, len(ids), QUERY_CHUNK):
            part = [int(i) for i in ids[start : start + QUERY_CHUNK]]
            rows = self.client.query(self.collection, filter=f"id in {part}",
                                     output_fields=["id", "path", "caption", "extra"], consistency_level="Strong")
            for r in rows:
                found[int(r["id"])] = Item(id=int(r["id"]), path=r["path"] or None, caption=r["caption"] or None,
                                           extra=json.loads(r["extra"] or "{}"))
        return found

    def present(self, ids) -> set[int]:
        return present(self.client, self.collection, ids)

    def delete(self, ids: list[int]) -> None:
        if ids:
            self.client.delete(self.collection, ids=[int(i) for i in ids])

    def close(self) -> None:
        self.client.close()


def _text(value: str | None, field: str, empty: str = "") -> str:
    """A VARCHAR holds 65,535 bytes: longer metadata stays whole in the writer's table; other writers see it cut."""
    value = value or empty
    if len(value.encode()) <= MAX_TEXT:
        return value
    log.warning("item %s is over %d bytes: the shared registry keeps %s", field, MAX_TEXT,
                "an empty object" if field == "extra" else "its first characters")
    return empty if field == "extra" else value.encode()[:MAX_TEXT].decode(errors="ignore")


def release_milvus_lite(path) -> None:
    """Stop the in-process milvus-lite server of a .db file, so the folder can be moved or opened again."""
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(str(path))
