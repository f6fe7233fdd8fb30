"""Fill an index folder's item table from its embedding parts (DIR/parts/), without copying a vector.

Each item row records its row in the parts; its vectors are read from there when the search structures are built
(vlm/index/part_vectors.py). Batches are one transaction each, and a killed ingest resumes after the highest row
already in the table, so no row is added twice.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlm.index.folder import ItemIndex
from vlm.index.part_vectors import PARTS_DIR, finished_parts
from vlm.index.store import Item


def ingest_parts(index: ItemIndex, batch_rows: int = 10_000) -> int:
    """Add the parts' rows the table does not hold yet; returns how many. The vectors reach the search
    structures when the folder is next opened (as `ItemIndex.add(..., index_vectors=False)` leaves them)."""
    parts_dir = index.directory / PARTS_DIR
    done = index.store.highest_part_row()
    root = index.store.get_meta("image_root")  # a file's image_path is relative to the source's image root
    added, start = 0, 0
    for part in finished_parts(parts_dir):
        end = start + part.rows
        if end > done + 1:
            table = part.metadata()
            if table.num_rows != part.rows:
                raise ValueError(f"{parts_dir}: part {part.tag} has {table.num_rows} metadata rows for "
                                 f"{part.rows} vectors")
            first = max(0, done + 1 - start)
            for lo in range(first, part.rows, batch_rows):
                rows = table.slice(lo, batch_rows).to_pylist()
                items = [item_from_row(r, root) for r in rows]
                numbers = list(range(start + lo, start + lo + len(rows)))
                unique_keys(index, items, numbers)
                index.store.add_part_rows(items, numbers, [bool(r["has_text"]) for r in rows])
                added += len(rows)
        start = end
    return added


def unique_keys(index: ItemIndex, items: list[Item], rows: list[int]) -> None:
    """A key seen before (one image on rows far apart in a pairs file, which a streamed read does not group)
    becomes `key#row<N>`: each of its captions stays an item, and no key is held in memory across batches."""
    taken = index.store.taken_keys([i.source_key for i in items if i.source_key is not None])
    for item, row in zip(items, rows, strict=True):
        if item.source_key is None:
            continue
        if item.source_key in taken:
            item.source_key = f"{item.source_key}#row{row}"
        taken.add(item.source_key)


def item_from_row(row: dict, root: str | None) -> Item:
    """The item of one metadata row, without its vectors (they stay in the parts)."""
    extra = json.loads(row.get("extra") or "{}")
    if row.get("shard"):
        extra.setdefault("shard", row["shard"])
    path = row.get("image_path")
    if path and root and not extra.get("copied") and "://" not in path:  # a copy's is the index folder's
        path = str(Path(root) / path)
    return Item(path=path or row.get("shard"), caption=row.get("caption"), extra=extra, source_key=row.get("key"))

