"""`vlm index check` and `vlm index backup`: what an operator runs instead of guessing, or copying a live folder.

check reads every file of a folder without changing it (or, with `repair`, accepts the table as it is and
rebuilds the snapshots). backup makes a consistent copy of a folder a server is writing: the snapshots first,
then the table through SQLite's backup API (so it is at least as new as the snapshots' manifest), then the
images its rows name, into OUT.partial renamed to OUT when whole.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

from vlm.atomic_io import atomic_write
from vlm.index.config import CONFIG_NAME, read_config
from vlm.index.errors import IndexFolderError, IndexLockedError
from vlm.index.folder import STORE_NAME, ItemIndex
from vlm.index.lock import lock_holder
from vlm.index.manifest import MANIFEST_NAME, read_manifest, verify_snapshot
from vlm.index.mark import MARK_NAME, Mark, MarkFile
from vlm.index.part_vectors import PARTS_DIR, finished_parts, verify_part
from vlm.index.store import MODALITIES, ItemStore


def check_index(directory: str | Path, repair: bool = False) -> dict:
    """A report of every file's state; `ok` is False when anything would be refused or set aside at open."""
    directory = Path(directory)
    config = read_config(directory)
    holder = lock_holder(directory)
    if repair and holder is not None:
        raise IndexLockedError(f"{directory}: in use by process {holder}; stop it before --repair")
    report: dict = {"directory": str(directory), "backend": config.backend, "locked_by": holder, "problems": []}
    recorded = _read_mark(directory, report)  # before the table: a live writer only ever moves the table ahead
    store = _check_table(directory, report, writable=repair)
    if store is None:
        report["ok"] = False
        return report
    try:
        _check_mark(recorded, store, report)
        _check_snapshots(directory, store, report, config.backend)
        _check_parts(directory, store, report)
        report["orphan_images"] = _count_orphans(directory, store)
        report["ok"] = not report["problems"]
        if repair and not report["ok"]:
            manifest, _ = read_manifest(directory)
            store.repair_mark(Mark(manifest.changes, manifest.max_id) if manifest else Mark())
            report["repaired"] = list(report["problems"])
    finally:
        store.close()
    if report.get("repaired"):
        ItemIndex(directory).close()  # sets damaged snapshots aside and rebuilds them from the table
    return report


def _check_table(directory: Path, report: dict, writable: bool) -> ItemStore | None:
    path = directory / STORE_NAME
    if not path.exists() or path.stat().st_size == 0:
        report["problems"].append(f"{path.name}: {'missing' if not path.exists() else 'empty (0 bytes)'}")
        return None
    try:
        store = ItemStore(path, read_only=not writable, verify_mark=False)
    except (IndexFolderError, sqlite3.Error, OSError) as e:
        report["problems"].append(str(e))
        return None
    report["table"] = {"quick_check": "ok", "items": store.count(), "changes": store.changes, "max_id": store.max_id,
                       "vectors": {m: store.count(m) for m in MODALITIES}}
    return store


def _read_mark(directory: Path, report: dict) -> Mark | None:
    path = directory / MARK_NAME
    if not path.exists():
        return None
    mark = MarkFile(path, writable=False)
    try:
        return mark.read()
    except ValueError as e:
        report["problems"].append(str(e))
        return None
    finally:
        mark.close()


def _check_mark(recorded: Mark | None, store: ItemStore, report: dict) -> None:
    report["mark"] = {"changes": recorded.changes, "max_id": recorded.max_id} if recorded else None
    if recorded and (store.changes < recorded.changes or store.max_id < recorded.max_id):
        report["problems"].append(
            f"{STORE_NAME}: behind its commit mark ({store.changes} changes up to id {store.max_id}, the mark "
            f"records {recorded.changes} up to id {recorded.max_id}): committed items are missing")


def _check_snapshots(directory: Path, store: ItemStore, report: dict, backend: str) -> None:
    manifest, why = read_manifest(directory)
    if why:
        report["problems"].append(why)
    if manifest is not None and (manifest.changes > store.changes or manifest.max_id > store.max_id):
        report["problems"].append(f"{STORE_NAME}: older than {MANIFEST_NAME} (committed items are missing)")
    if backend != "faiss":
        return
    report["snapshots"] = {}
    for modality in MODALITIES:
        path = directory / f"{modality}.faiss"
        if not path.exists():
            report["snapshots"][path.name] = "missing (built from the table at open)"
            continue
        record = (manifest.snapshots or {}).get(path.name) if manifest else None
        reason = verify_snapshot(path, path.read_bytes(), record)
        if reason is not None:
            report["problems"].append(f"{path.name}: {reason} (set aside and rebuilt at open)")
        behind = store.count(modality) - record.count if record else 0
        report["snapshots"][path.name] = reason or (f"ok, {behind:+d} items to catch up at open" if behind else "ok")


def _check_parts(directory: Path, store: ItemStore, report: dict) -> None:
    """Each finished part's files against its done marker (sizes and sha256; the parts are never rewritten),
    and the table's rows against the parts' length."""
    folder = directory / PARTS_DIR
    if not folder.is_dir():
        return
    try:
        parts = finished_parts(folder)
    except IndexFolderError as e:
        report["problems"].append(str(e))
        return
    bad = [problem for part in parts for problem in verify_part(part)]
    report["parts"] = {"parts": len(parts), "rows": sum(p.rows for p in parts), "damaged": len(bad)}
    report["problems"].extend(bad)
    highest = store.highest_part_row()
    if highest >= report["parts"]["rows"]:
        report["problems"].append(f"{STORE_NAME}: refers to parts row {highest}, but {PARTS_DIR}/ holds "
                                  f"{report['parts']['rows']} rows (a part is missing)")


def _count_orphans(directory: Path, store: ItemStore) -> int:
    folder = directory / "images"
    if not folder.is_dir():
        return 0
    referenced = store.paths_under("images/")
    return sum(1 for p in folder.iterdir() if p.is_file() and f"images/{p.name}" not in referenced)


def backup_index(directory: str | Path, out: str | Path) -> dict:
    """A consistent copy of a (possibly live) index folder at `out`, which must not exist."""
    directory, out = Path(directory), Path(out)
    config = read_config(directory)
    if out.exists():
        raise IndexFolderError(f"{out}: already exists; back up into a new folder")
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copy2(directory / CONFIG_NAME, staging / CONFIG_NAME)
    snapshots = _copy_snapshots(directory, staging) if config.backend == "faiss" else 0
    if (directory / PARTS_DIR).is_dir():  # copied, not linked: damage to the original must not reach the backup
        shutil.copytree(directory / PARTS_DIR, staging / PARTS_DIR)
    rows = _backup_table(directory / STORE_NAME, staging / STORE_NAME)
    store = ItemStore(staging / STORE_NAME, read_only=True, verify_mark=False)
    try:
        mark = MarkFile(staging / MARK_NAME)
        mark.write(Mark(store.changes, store.max_id))
        mark.close()
        copied, missing = _copy_images(directory, staging, store.paths_under("images/"))
    finally:
        store.close()
    _fsync_tree(staging)
    os.replace(staging, out)
    return {"out": str(out), "items": rows, "snapshots": snapshots, "images": copied,
            "images_deleted_meanwhile": missing}


def _copy_snapshots(directory: Path, staging: Path) -> int:
    """The manifest and the snapshots it vouches for; a snapshot rewritten while copying is left out (it is
    rebuilt from the table when the backup is opened)."""
    for _ in range(3):
        manifest, _why = read_manifest(directory)
        if manifest is None:
            return 0
        copies = {}
        for name, record in (manifest.snapshots or {}).items():
            data = (directory / name).read_bytes() if (directory / name).exists() else b""
            if verify_snapshot(directory / name, data, record) is None:
                copies[name] = data
        if len(copies) == len(manifest.snapshots or {}):
            for name, data in copies.items():
                with atomic_write(staging / name) as f:
                    f.write(data)
            shutil.copy2(directory / MANIFEST_NAME, staging / MANIFEST_NAME)
            return len(copies)
    return 0


def _backup_table(source: Path, target: Path) -> int:
    """SQLite's online backup: a consistent snapshot of the table, WAL included, while a writer goes on."""
    src = sqlite3.connect(f"file:{source.resolve()}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=WAL")
        return dst.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    finally:
        dst.close()
        src.close()


def _copy_images(directory: Path, staging: Path, paths: set[str]) -> tuple[int, int]:
    copied = missing = 0
    for path in sorted(paths):
        try:
            (staging / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(directory / path, staging / path)
            copied += 1
        except FileNotFoundError:  # deleted after the table was copied
            missing += 1
    return copied, missing


def _fsync_tree(root: Path) -> None:
    for path in [*root.rglob("*"), root]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
