"""An index folder whose vectors stay in its embedding parts (.npy + parquet): the table holds rows, not copies."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import numpy as np
import pytest

from vlm.atomic_io import atomic_write
from vlm.index import IndexConfig, Item, ItemIndex
from vlm.index.check import backup_index, check_index
from vlm.index.ingest import ingest_parts

DIM = 16


def unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_parts(directory, sizes: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Parts in the clip-retrieval layout; every third item has no caption (a zero text row)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images, texts, start = [], [], 0
    for n, size in enumerate(sizes):
        tag = f"000_{n:06d}"
        img, txt = unit(size, seed + n).astype(np.float16), unit(size, seed + 100 + n).astype(np.float16)
        has_text = [(start + i) % 3 != 0 for i in range(size)]
        txt[~np.array(has_text)] = 0
        for folder, prefix, array in (("img_emb", "img_emb", img), ("text_emb", "text_emb", txt)):
            (directory / folder).mkdir(parents=True, exist_ok=True)
            np.save(directory / folder / f"{prefix}_{tag}.npy", array)
        (directory / "metadata").mkdir(exist_ok=True)
        pq.write_table(pa.table({
            "key": [f"k{start + i}" for i in range(size)],
            "image_path": [f"img/{start + i}.jpg" for i in range(size)],
            "shard": [None] * size,
            "caption": [f"caption {start + i}" if has_text[i] else None for i in range(size)],
            "has_text": has_text,
            "extra": [json.dumps({"n": start + i}) for i in range(size)]}),
            directory / "metadata" / f"metadata_{tag}.parquet")
        (directory / "done").mkdir(exist_ok=True)
        names = [f"img_emb/img_emb_{tag}.npy", f"text_emb/text_emb_{tag}.npy", f"metadata/metadata_{tag}.parquet"]
        marker = {"rows": size, "bytes": {f: (directory / f).stat().st_size for f in names},
                  "sha256": {f: hashlib.sha256((directory / f).read_bytes()).hexdigest() for f in names}}
        with atomic_write(directory / "done" / f"{tag}.json") as f:
            f.write(json.dumps(marker).encode())
        images.append(img.astype(np.float32))
        texts.append(txt.astype(np.float32))
        start += size
    return np.concatenate(images), np.concatenate(texts)


@pytest.fixture
def built(tmp_path):
    folder = tmp_path / "idx"
    index = ItemIndex(folder, IndexConfig(dim=DIM))
    images, texts = write_parts(folder / "parts", [7, 5, 9])
    assert ingest_parts(index, batch_rows=4) == 21
    index.close()
    return folder, images, texts


def test_items_of_parts_are_searched_with_the_parts_vectors_and_no_copy_in_the_table(built):
    folder, images, texts = built
    index = ItemIndex(folder)
    try:
        assert len(index) == 21 and index.store.count("image") == 21 and index.store.count("text") == 14
        hits = index.search(images, k=1)
        assert [row[0].item.extra["n"] for row in hits] == list(range(21))
        assert hits[4][0].item.path == "img/4.jpg" and hits[4][0].item.caption == "caption 4"
        text_hits = index.search(texts[[1, 2, 20]], k=1, modality="text")
        assert [row[0].item.extra["n"] for row in text_hits] == [1, 2, 20]
        item = index.get(hits[3][0].item.id, vectors=True)
        assert np.allclose(item.image_vec, images[3], atol=2e-3) and item.text_vec is None  # 3 has no caption
        assert np.linalg.norm(item.image_vec) == pytest.approx(1.0, abs=1e-6)  # unit again after float16
    finally:
        index.close()
    blobs = sqlite3.connect(folder / "items.sqlite").execute(
        "SELECT COUNT(image_vec), COUNT(text_vec) FROM items").fetchone()
    assert blobs == (0, 0)


def test_parts_items_and_api_items_live_together_and_delete(built):
    folder, images, _ = built
    index = ItemIndex(folder)
    try:
        new = unit(1, 99)[0]
        [new_id] = index.add([Item(path="new.jpg", caption=None, image_vec=new)])
        victim = index.search(images[10:11], k=1)[0][0].item.id
        assert index.delete(victim)
        assert len(index) == 21 and index.store.count("image") == 21
    finally:
        index.close()
    index = ItemIndex(folder, read_only=True)
    try:
        assert index.search(new[None], k=1)[0][0].item.id == new_id
        assert index.search(images[10:11], k=1)[0][0].item.id != victim
        assert index.store.count("text") == 13  # item 10 had a caption
    finally:
        index.close()


def test_an_interrupted_ingest_resumes_without_adding_a_row_twice(tmp_path):
    folder = tmp_path / "idx"
    index = ItemIndex(folder, IndexConfig(dim=DIM))
    images, _ = write_parts(folder / "parts", [6, 6])
    store_add = index.store.add_part_rows
    calls = []

    def fail_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed mid-ingest, after two committed batches
        return store_add(*args, **kwargs)

    index.store.add_part_rows = fail_on_third
    with pytest.raises(KeyboardInterrupt):
        ingest_parts(index, batch_rows=4)
    index.store.add_part_rows = store_add
    assert len(index) == 6
    assert ingest_parts(index, batch_rows=4) == 6
    index.close()
    index = ItemIndex(folder)
    try:
        assert len(index) == 12
        keys = [h[0].item.extra["n"] for h in index.search(images, k=1)]
        assert keys == list(range(12))
    finally:
        index.close()


def test_a_table_from_before_parts_gains_the_columns_and_keeps_its_items(tmp_path):
    folder = tmp_path / "idx"
    index = ItemIndex(folder, IndexConfig(dim=DIM))
    index.add([Item(path="a.jpg", image_vec=unit(1, 5)[0])])
    index.close()
    db = sqlite3.connect(folder / "items.sqlite")
    db.execute("ALTER TABLE items DROP COLUMN part_row")
    db.execute("ALTER TABLE items DROP COLUMN part_text")
    db.commit()
    db.close()
    readonly = ItemIndex(folder, read_only=True)  # an old table read as it is
    assert len(readonly) == 1 and readonly.store.count("image") == 1
    readonly.close()
    index = ItemIndex(folder)
    try:
        assert len(index) == 1 and index.search(unit(1, 5), k=1)[0][0].item.path == "a.jpg"
    finally:
        index.close()


def test_check_finds_a_damaged_part_and_backup_carries_the_parts(built, tmp_path):
    folder, images, _ = built
    assert check_index(folder)["ok"] and check_index(folder)["parts"] == {"parts": 3, "rows": 21, "damaged": 0}
    backup_index(folder, tmp_path / "copy")
    index = ItemIndex(tmp_path / "copy", read_only=True)
    try:
        assert [h[0].item.extra["n"] for h in index.search(images, k=1)] == list(range(21))
    finally:
        index.close()
    part = folder / "parts" / "img_emb" / "img_emb_000_000001.npy"
    data = bytearray(part.read_bytes())
    data[-8:] = b"\x00" * 8
    part.write_bytes(bytes(data))  # damaged in place
    report = check_index(folder)
    assert not report["ok"] and report["parts"]["damaged"] == 1
    assert "img_emb_000_000001.npy: its sha256 differs" in report["problems"][0]
    assert check_index(tmp_path / "copy")["ok"]


def test_from_parts_builds_a_folder_that_searches_like_the_parts(tmp_path, capsys):
    """`vlm index embed` on other machines, then `vlm index from-parts`: no model, parts linked in."""
    from vlm.cli import main

    parts = tmp_path / "parts"
    images, _ = write_parts(parts, [5, 6])
    (parts / "parts.json").write_text(json.dumps({"dim": DIM, "model": "clip-tiny", "weights": "w", "precision":
                                                  "fp32", "source": "s", "world_size": 1, "part_size": 6}))
    (tmp_path / "photos").mkdir()
    out = tmp_path / "idx"
    assert main(["index", "from-parts", str(parts), "--out", str(out), "--image-root", str(tmp_path / "photos"),
                 "--index-factory", "HNSW8"]) == 0
    index = ItemIndex(out, read_only=True)
    try:
        assert index.config.model == "clip-tiny" and index.backends["image"].kind == "hnsw"
        hits = index.search(images, k=1)
        assert [h[0].item.extra["n"] for h in hits] == list(range(11))
        assert index.public_path(hits[2][0].item) == "img/2.jpg"  # relative to --image-root, never absolute
        assert (out / "parts" / "done" / "000_000001.json").stat().st_ino == \
            (parts / "done" / "000_000001.json").stat().st_ino  # linked, not copied
    finally:
        index.close()
    assert main(["index", "from-parts", str(parts), "--out", str(out)]) != 0
    assert "an index is already there" in capsys.readouterr().err


def test_an_interrupted_from_parts_resumes_in_its_staging_folder(tmp_path, monkeypatch):
    from vlm.index import from_parts

    parts = tmp_path / "parts"
    images, _ = write_parts(parts, [5, 6])
    (parts / "parts.json").write_text(json.dumps({"dim": DIM, "model": "m", "weights": "", "precision": "fp32",
                                                  "source": "s", "world_size": 1, "part_size": 6}))

    real = from_parts.ingest_parts

    def killed_after_one_batch(index):
        add = index.store.add_part_rows
        calls = []

        def add_once(*args):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return add(*args)

        index.store.add_part_rows = add_once
        real(index, batch_rows=4)

    monkeypatch.setattr(from_parts, "ingest_parts", killed_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        from_parts.build_from_parts(parts, tmp_path / "idx")
    assert (tmp_path / "idx.partial" / "parts" / "parts.json").exists() and not (tmp_path / "idx").exists()
    monkeypatch.setattr(from_parts, "ingest_parts", real)
    assert from_parts.build_from_parts(parts, tmp_path / "idx") == 11
    index = ItemIndex(tmp_path / "idx", read_only=True)
    try:
        assert len(index) == 11
        assert [h[0].item.extra["n"] for h in index.search(images, k=1)] == list(range(11))
    finally:
        index.close()


def test_from_parts_refuses_a_folder_without_header_or_finished_parts(tmp_path, capsys):
    from vlm.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["index", "from-parts", str(tmp_path / "empty"), "--out", str(tmp_path / "idx")]) != 0
    assert "no parts.json" in capsys.readouterr().err


def test_parts_are_read_by_row_without_mapping_them(built):
    """A server re-ranking from 10 GB of parts must not grow by the pages it touched: rows are read, not mapped."""
    from pathlib import Path

    from vlm.index.part_vectors import PartVectors

    folder, images, texts = built
    parts = PartVectors(folder / "parts")
    rows = np.array([20, 3, 3, 0, 8, 7, 15, 1])  # unsorted, repeated, across all three parts
    assert np.allclose(parts.read("image", rows), images[rows], atol=2e-3)
    assert np.allclose(parts.read("text", rows[:1]), texts[20] / np.linalg.norm(texts[20]), atol=2e-3)
    mapped = Path("/proc/self/maps").read_text()
    assert str(folder / "parts") not in mapped


def test_a_truncated_part_is_one_line_naming_it(built):
    from vlm.index.errors import IndexFolderError
    from vlm.index.part_vectors import PartVectors

    folder, _, _ = built
    part = folder / "parts" / "img_emb" / "img_emb_000_000002.npy"
    part.write_bytes(part.read_bytes()[:-DIM * 2 * 3])  # its last three rows lost
    with pytest.raises(IndexFolderError, match="part 000_000002 cannot be read .*short read"):
        PartVectors(folder / "parts").read("image", np.array([20]))


def test_an_open_at_the_snapshots_state_never_lists_the_index_ids(built, monkeypatch):
    """At 10M items, listing a mapped index's ids faulted in 2 GB of its pages at every server start: skipped when
    the snapshot is as new as the table, and still done when a commit came after it."""
    from vlm.index.backends import FaissBackend

    folder, images, _ = built
    ItemIndex(folder).close()  # the writer's open adds the ingested rows' vectors and saves the snapshots
    real = FaissBackend._stored_ids
    monkeypatch.setattr(FaissBackend, "_stored_ids", lambda self: pytest.fail("listed the index's ids"))
    index = ItemIndex(folder, read_only=True)
    try:
        assert index.search(images[:3], k=1)[0][0].item.extra["n"] == 0 and index.info()["mapped"]["image"]
    finally:
        index.close()
    monkeypatch.setattr(FaissBackend, "_stored_ids", real)
    writer = ItemIndex(folder)
    try:
        new = unit(1, 7)[0]
        [new_id] = writer.add([Item(path="late.jpg", caption=None, image_vec=new)])  # committed, no snapshot yet
        reader = ItemIndex(folder, read_only=True)
        try:
            assert reader.search(new[None], k=1)[0][0].item.id == new_id  # reconciled from the table
        finally:
            reader.close()
    finally:
        writer.close()


def test_reading_many_parts_holds_a_bounded_number_of_files_open(built, monkeypatch):
    """At 1B items the parts are 20,000 files, past a process's default limit of 1,024 open files."""
    import os

    from vlm.index import part_vectors

    folder, images, _ = built
    monkeypatch.setattr(part_vectors, "OPEN_READERS", 2)
    parts = part_vectors.PartVectors(folder / "parts")
    before = len(os.listdir("/proc/self/fd"))
    for rows in ([0, 8, 20], [20, 1], [13, 2, 19]):  # three parts, both modalities
        assert np.allclose(parts.read("image", np.array(rows)), images[rows], atol=2e-3)
        parts.read("text", np.array(rows))
        assert len(os.listdir("/proc/self/fd")) - before <= 2
