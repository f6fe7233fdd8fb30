"""The item table: SQLite holds every item's metadata *and* its vectors, and is the source of truth.

An item built from embedding parts keeps its vectors there instead (`part_row`, its row in DIR/parts/, and
`part_text`, whether that row has a text vector; vlm/index/part_vectors.py): the table still answers for it.
A vector backend (faiss, Milvus) is a search structure rebuilt or caught up from this table, so an item
is durable the moment its transaction commits: WAL with synchronous=FULL fsyncs the log on every commit,
and a `kill -9` can lose at most the vector backend's recent changes, which `ItemIndex` replays at start.
Ids come from AUTOINCREMENT and are never reused, so a stale snapshot can never confuse two items; on a shared
Milvus server they come from Milvus (vlm/index/milvus.py) and are stored as given.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np

from vlm.index.errors import IndexFolderError, IndexReadOnlyError
from vlm.index.mark import MARK_NAME, Mark, MarkFile
from vlm.index.part_vectors import PARTS_DIR, PartVectors
from vlm.index.storage import classify

log = logging.getLogger("vlm.index")
MODALITIES = ("image", "text")

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT,
    caption TEXT,
    extra TEXT NOT NULL DEFAULT '{}',
    image_vec BLOB,
    text_vec BLOB,
    source_key TEXT UNIQUE,
    part_row INTEGER,
    part_text INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pending_deletes (id INTEGER PRIMARY KEY);
"""


@dataclass
class Item:
    """One indexed thing: an image (by path) with an optional caption and free-form metadata."""

    path: str | None = None
    caption: str | None = None
    extra: dict = field(default_factory=dict)
    image_vec: np.ndarray | None = None
    text_vec: np.ndarray | None = None
    source_key: str | None = None  # position in the build's source, for resuming an interrupted build
    id: int | None = None

    def public(self) -> dict:
        return {"id": self.id, "path": self.path, "caption": self.caption, "extra": self.extra}


def _blob(vec: np.ndarray | None) -> bytes | None:
    return None if vec is None else np.ascontiguousarray(vec, dtype=np.float32).tobytes()


def _vec(blob: bytes | None) -> np.ndarray | None:
    return None if blob is None else np.frombuffer(blob, dtype=np.float32)


class ItemStore:
    """Thread-safe SQLite table of items; every write is one fsynced transaction, witnessed by the commit mark.

    `read_only` opens the table without writing anything (a folder this process cannot write, or a second
    server beside the writer); it can `refresh` to see the writer's later commits."""

    def __init__(self, path: str | Path, read_only: bool = False, verify_mark: bool = True):
        self.path = Path(path)
        self.read_only = read_only
        self._lock = threading.RLock()
        mark_path = self.path.with_name(MARK_NAME)
        self.mark = MarkFile(mark_path, writable=not read_only) if not read_only or mark_path.exists() else None
        recorded = self._read_mark() if verify_mark else None
        if recorded is not None and recorded.changes and (not self.path.exists() or self.path.stat().st_size == 0):
            state = "missing" if not self.path.exists() else "empty (0 bytes)"
            raise IndexFolderError(f"{self.path}: the item table is {state}, but {mark_path.name} records "
                                   f"{recorded.changes} committed changes up to id {recorded.max_id}; refusing to "
                                   "serve an empty index: restore the folder from a backup (vlm index backup)")
        self._db = self._connect()
        self._verify()
        self.changes, self.max_id = self._table_state()
        self._check_against(recorded)
        if verify_mark and self.mark is not None and not read_only and recorded != Mark(self.changes, self.max_id):
            self._write_mark()  # a new table, an index from before marks, or killed between commit and mark
        self._counts = self._count_all()

    def _read_mark(self) -> Mark | None:
        if self.mark is None:
            return None
        try:
            return self.mark.read()
        except ValueError as e:
            raise IndexFolderError(f"{e}; the table cannot be checked against it: run `vlm index check "
                                   f"{self.path.parent} --repair` to accept the table as it is") from None

    def _connect(self) -> sqlite3.Connection:
        try:
            if not self.read_only:
                db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(SCHEMA)
                _add_part_columns(db)
                return db
            return _connect_read_only(self.path)
        except sqlite3.DatabaseError as e:
            if classify(e) is not None:  # a full disk or a folder that cannot be written: not the table's fault
                raise
            raise _table_error(self.path, e) from None

    def _verify(self) -> None:
        """SQLite's own check of the file's structure (quick_check: pages, not index contents)."""
        try:
            result = self._db.execute("PRAGMA quick_check").fetchall()
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as e:
            if classify(e) is not None:
                raise
            raise _table_error(self.path, e) from None
        if result != [("ok",)]:
            raise IndexFolderError(f"{self.path}: the item table is damaged ({result[0][0]}); restore the folder "
                                   "from a backup (vlm index backup)")
        if not {"items", "meta"} <= tables:
            raise IndexFolderError(f"{self.path}: not a vlm item table (no items/meta tables)")
        self._part_columns = "part_row" in _columns(self._db)  # a read-only table from before parts lacks them
        self._parts: PartVectors | None = None

    def _table_state(self) -> tuple[int, int]:
        """(committed changes, highest id ever issued) as the table itself records them."""
        changes = self._db.execute("SELECT value FROM meta WHERE key = 'changes'").fetchone()
        seq = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
        return int(changes[0]) if changes else 0, int(seq[0]) if seq else 0

    def _check_against(self, recorded: Mark | None) -> None:
        if recorded is None or (self.changes >= recorded.changes and self.max_id >= recorded.max_id):
            return
        raise IndexFolderError(
            f"{self.path}: the table is behind its commit mark ({MARK_NAME}): it holds {self.changes} committed "
            f"changes up to id {self.max_id}, the mark records {recorded.changes} up to id {recorded.max_id}, so "
            "committed items are missing (a damaged or truncated items.sqlite-wal, or an older copy of the table); "
            "restore the folder from a backup, or accept the table as it is with `vlm index check "
            f"{self.path.parent} --repair`")

    def _write_mark(self) -> None:
        """After a commit: a mark that cannot be written leaves the commit standing (a mark behind its table is
        harmless, it is caught up at the next open), so it is logged, never raised."""
        try:
            self.mark.write(Mark(self.changes, self.max_id))
        except OSError as e:
            log.error("%s: could not update the commit mark (%s); the change is committed", self.mark.path, e)

    def _count_all(self) -> dict[str | None, int]:
        with self._lock:
            row = self._db.execute(f"SELECT COUNT(*), TOTAL({self._has('image')}), TOTAL({self._has('text')}) "
                                   "FROM items").fetchone()
        return {None: row[0], "image": int(row[1]), "text": int(row[2])}

    def _has(self, modality: str) -> str:
        """SQL: the row has a vector of this modality, in the table or in the folder's parts."""
        column = _column(modality)
        if not self._part_columns:
            return f"({column} IS NOT NULL)"
        return f"({column} IS NOT NULL OR {'part_row IS NOT NULL' if modality == 'image' else 'part_text = 1'})"

    @property
    def parts(self) -> PartVectors:
        if self._parts is None:
            self._parts = PartVectors(self.path.parent / PARTS_DIR)
        return self._parts

    def refresh(self) -> bool:
        """Read-only: catch up with the writer's commits; True when the table changed."""
        with self._lock:
            state = self._table_state()
            if state == (self.changes, self.max_id):
                return False
            self.changes, self.max_id = state
            self._counts = self._count_all()
            return True

    def repair_mark(self, floor: Mark | None = None) -> None:
        """Accept the table as it is: the mark takes the table's state, and ids continue after the highest ever
        issued (by the table, the mark, or `floor`), so an id a lost item had is never given to another."""
        recorded = None
        with contextlib.suppress(ValueError):
            recorded = self.mark.read()
        recorded = recorded or Mark()
        floor = floor or Mark()
        highest = max(self.max_id, recorded.max_id, floor.max_id)
        changes = max(self.changes, recorded.changes, floor.changes) + 1
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            if self._db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'items'", (highest,)).rowcount == 0:
                self._db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('items', ?)", (highest,))
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('changes', ?)", (str(changes),))
            self._db.execute("COMMIT")
            self.changes, self.max_id = changes, highest
            self._write_mark()

    def close(self) -> None:
        with self._lock:
            if not self.read_only:
                with contextlib.suppress(sqlite3.Error):  # a full disk: the WAL stays, and is replayed at open
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
            if self.mark is not None:
                self.mark.close()

    # --- metadata of the index itself
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, values: dict[str, str]) -> None:
        with self._lock:
            self._writable()
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(values.items()))

    # --- items
    def add(self, items: list[Item], ids: list[int] | None = None) -> list[int]:
        """Insert items in one transaction and set their ids: AUTOINCREMENT's, or `ids` (ones a shared Milvus
        assigned). Returns the ids; durable when this returns."""
        if ids is not None and len(ids) != len(items):
            raise ValueError(f"{len(ids)} ids for {len(items)} items")
        given = ids if ids is not None else [None] * len(items)
        rows = [(n, i.path, i.caption, json.dumps(i.extra), _blob(i.image_vec), _blob(i.text_vec), i.source_key)
                for n, i in zip(given, items, strict=True)]
        with self._lock:
            self._writable()
            with self._transaction():
                ids = [self._db.execute(
                    "INSERT INTO items (id, path, caption, extra, image_vec, text_vec, source_key) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", row).lastrowid for row in rows]
            self.max_id = max([self.max_id, *ids])
            self._counts[None] += len(rows)
            for modality, column in (("image", 4), ("text", 5)):
                self._counts[modality] += sum(row[column] is not None for row in rows)
            self._write_mark()
        for item, item_id in zip(items, ids, strict=True):
            item.id = item_id
        return ids

    def add_part_rows(self, items: list[Item], rows: list[int], has_text: list[bool]) -> list[int]:
        """Insert items whose vectors stay in the folder's parts, at these global rows; one transaction."""
        if not self._part_columns:
            raise IndexFolderError(f"{self.path}: a table from before embedding parts cannot take part rows")
        values = [(i.path, i.caption, json.dumps(i.extra), i.source_key, int(r), int(t))
                  for i, r, t in zip(items, rows, has_text, strict=True)]
        with self._lock:
            self._writable()
            with self._transaction():
                ids = [self._db.execute("INSERT INTO items (path, caption, extra, source_key, part_row, part_text) "
                                        "VALUES (?, ?, ?, ?, ?, ?)", v).lastrowid for v in values]
            self.max_id = max([self.max_id, *ids])
            self._counts[None] += len(values)
            self._counts["image"] += len(values)
            self._counts["text"] += sum(bool(t) for t in has_text)
            self._write_mark()
        for item, item_id in zip(items, ids, strict=True):
            item.id = item_id
        return ids

    def taken_keys(self, keys: list[str], chunk: int = 10_000) -> set[str]:
        """Those of `keys` an item already has (source_key is UNIQUE, so each lookup is indexed)."""
        taken: set[str] = set()
        for start in range(0, len(keys), chunk):
            part = keys[start : start + chunk]
            with self._lock:
                rows = self._db.execute(f"SELECT source_key FROM items WHERE source_key IN "
                                        f"({','.join('?' * len(part))})", part)
                taken.update(r[0] for r in rows)
        return taken

    def highest_part_row(self) -> int:
        """The highest parts row an item refers to, -1 for none: where an interrupted ingest resumes."""
        if not self._part_columns:
            return -1
        with self._lock:
            row = self._db.execute("SELECT MAX(part_row) FROM items").fetchone()
        return -1 if row[0] is None else int(row[0])

    def delete(self, item_id: int, pending: bool = False) -> bool:
        """Delete a row; `pending` also records the id, in the same transaction, as a delete still owed to a
        shared vector store (cleared by `clear_pending` once done there, replayed at open after a crash)."""
        with self._lock:
            self._writable()
            row = self._db.execute(f"SELECT {self._has('image')}, {self._has('text')} FROM items WHERE id = ?",
                                   (item_id,)).fetchone()
            if row is None:
                return False
            with self._transaction():
                self._db.execute("DELETE FROM items WHERE id = ?", (item_id,))
                if pending:
                    self._db.execute("INSERT OR IGNORE INTO pending_deletes VALUES (?)", (item_id,))
            self._counts[None] -= 1
            self._counts["image"] -= row[0]
            self._counts["text"] -= row[1]
            self._write_mark()
            return True

    def pending_deletes(self) -> list[int]:
        """Ids deleted here whose delete the shared vector store may not have seen yet."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM pending_deletes ORDER BY id")]

    def clear_pending(self, ids: list[int]) -> None:
        """Forget deletes the shared store has done; no item changes, so the change counter stays."""
        if not ids:
            return
        with self._lock:
            self._writable()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("DELETE FROM pending_deletes WHERE id = ?", [(int(i),) for i in ids])
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _transaction(self):
        """One committed change: the statements, plus the change counter the commit mark is checked against."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('changes', ?)", (str(self.changes + 1),))
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # a failed COMMIT (disk full, I/O error) has already rolled back
                self._db.execute("ROLLBACK")
            raise
        self.changes += 1

    def _writable(self) -> None:
        if self.read_only:
            raise IndexReadOnlyError(f"{self.path.parent}: the index is open read-only")

    def get(self, item_id: int, vectors: bool = False) -> Item | None:
        items = self.get_many([item_id], vectors)
        return items[0] if items else None

    def get_many(self, ids: list[int], vectors: bool = False) -> list[Item]:
        """Items in the order of `ids`; ids that are not there are left out."""
        if not ids:
            return []
        cols = "id, path, caption, extra" + (f", image_vec, text_vec, {self._part_select()}" if vectors else "")
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self._db.execute(f"SELECT {cols} FROM items WHERE id IN ({marks})", [int(i) for i in ids])
            by_id = {row[0]: self._item(row, vectors) for row in rows}
        return [by_id[int(i)] for i in ids if int(i) in by_id]

    def _part_select(self) -> str:
        return "part_row, part_text" if self._part_columns else "NULL, 0"

    def _item(self, row: tuple, vectors: bool) -> Item:
        item = Item(id=row[0], path=row[1], caption=row[2], extra=json.loads(row[3]))
        if vectors:
            item.image_vec, item.text_vec = _vec(row[4]), _vec(row[5])
            if row[6] is not None:  # vectors in the folder's parts
                item.image_vec = self.parts.read("image", np.array([row[6]]))[0]
                item.text_vec = self.parts.read("text", np.array([row[6]]))[0] if row[7] else None
        return item

    def source_keys(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT source_key FROM items WHERE source_key IS NOT NULL")}

    def paths_under(self, prefix: str) -> set[str]:
        """The image paths of items stored under `prefix` (the index's own images/ folder)."""
        with self._lock:
            rows = self._db.execute("SELECT path FROM items WHERE substr(path, 1, ?) = ?", (len(prefix), prefix))
            return {r[0] for r in rows}

    def count(self, modality: str | None = None) -> int:
        """Number of items, or of items that have a vector of `modality`: kept as items change, so O(1)."""
        if modality is not None:
            _column(modality)
        return self._counts[modality]

    def ids(self, modality: str) -> np.ndarray:
        """Ids of the items that have a vector of this modality."""
        with self._lock:
            rows = self._db.execute(f"SELECT id FROM items WHERE {self._has(modality)} ORDER BY id")
            return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def vectors(self, modality: str, ids: np.ndarray | None = None,
                chunk: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) in chunks: all vectors of a modality, or those of `ids`.

        A chunk binds one parameter per id; stock SQLite allows at most 32,766 per statement."""
        column = _column(modality)
        if ids is None:
            ids = self.ids(modality)
        for start in range(0, len(ids), chunk):
            part = [int(i) for i in ids[start : start + chunk]]
            with self._lock:
                rows = self._db.execute(
                    f"SELECT id, {column}, {self._part_select()} FROM items WHERE id IN ({','.join('?' * len(part))})"
                    f" AND {self._has(modality)} ORDER BY id", part).fetchall()
            if rows:
                yield np.array([r[0] for r in rows], dtype=np.int64), self._stack(modality, rows)

    def _stack(self, modality: str, rows: list[tuple]) -> np.ndarray:
        """Vectors of (id, blob, part_row, part_text) rows: from the blob, else from the parts."""
        in_parts = [n for n, r in enumerate(rows) if r[1] is None]
        from_parts = self.parts.read(modality, np.array([rows[n][2] for n in in_parts])) if in_parts else None
        out = np.empty((len(rows), self._dim(rows, from_parts)), dtype=np.float32)
        for n, r in enumerate(rows):
            if r[1] is not None:
                out[n] = np.frombuffer(r[1], dtype=np.float32)
        if in_parts:
            out[in_parts] = from_parts
        return out

    @staticmethod
    def _dim(rows: list[tuple], from_parts: np.ndarray | None) -> int:
        blob = next((r[1] for r in rows if r[1] is not None), None)
        return len(blob) // 4 if blob is not None else from_parts.shape[1]


def _column(modality: str) -> str:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    return f"{modality}_vec"


def _columns(db: sqlite3.Connection) -> set[str]:
    return {r[1] for r in db.execute("PRAGMA table_info(items)")}


def _add_part_columns(db: sqlite3.Connection) -> None:
    """A table from before embedding parts gets their columns (NULL, 0: every vector in the table)."""
    have = _columns(db)
    if "part_row" not in have:
        db.execute("ALTER TABLE items ADD COLUMN part_row INTEGER")
    if "part_text" not in have:
        db.execute("ALTER TABLE items ADD COLUMN part_text INTEGER NOT NULL DEFAULT 0")


def _table_error(path: Path, e: sqlite3.DatabaseError) -> IndexFolderError:
    return IndexFolderError(f"{path}: not a readable item table ({e}); restore the folder from a backup "
                            "(vlm index backup)")


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """mode=ro reads a live WAL beside a writer; in a folder nobody can write (no -shm can be made), a table with
    no WAL is opened immutable, and one with a WAL is refused rather than read without its last commits."""
    if not path.exists():
        raise sqlite3.OperationalError("no such file")
    uri = f"file:{quote(str(path.resolve()))}"
    db = sqlite3.connect(f"{uri}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
    try:
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.OperationalError:
        db.close()
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise sqlite3.OperationalError(f"cannot read {wal.name} without writing beside it (the folder is "
                                       "read-only); open it once writable to fold the WAL into the table")
    return sqlite3.connect(f"{uri}?immutable=1", uri=True, check_same_thread=False, isolation_level=None)
