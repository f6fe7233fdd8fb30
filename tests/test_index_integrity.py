"""Faults injected into an index folder, as an operator mistake or an accident would: each ends with every
acknowledged item present, or with a refusal to open that names the file. Never silently fewer items, reused
ids, or wrong answers."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from test_index_backends import BACKENDS, DIM, make_items, needs_milvus

import vlm.index
from vlm.index import IndexConfig, IndexFolderError, ItemIndex
from vlm.index import backends as backends_module
from vlm.index.errors import IndexLockedError, IndexReadOnlyError


def built(tmp_path, backend: str = "faiss", n: int = 40):
    """A closed index of n items (snapshots and manifest written), and the items with their ids."""
    directory = tmp_path / "idx"
    index = ItemIndex(directory, IndexConfig(dim=DIM, backend=backend))
    items = make_items(n)
    index.add(items)
    index.close()
    return directory, items


def assert_finds_itself(directory, items) -> None:
    index = ItemIndex(directory)
    try:
        assert len(index) == len(items)
        hits = index.search(np.stack([it.image_vec for it in items]), k=1)
        assert [row[0].item.id for row in hits] == [it.id for it in items]
        assert all(row[0].score == pytest.approx(1.0, abs=1e-4) for row in hits)
    finally:
        index.close()


# --- damaged snapshots (finding 3)
@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("snapshot", ["image.faiss", "text.faiss"])
def test_random_bytes_inside_a_snapshot_are_caught_and_rebuilt(tmp_path, caplog, snapshot, where):
    directory, items = built(tmp_path, n=2000)  # big enough that 4 KiB can land among the vectors, not the header
    path = directory / snapshot
    data = bytearray(path.read_bytes())
    at = int(len(data) * where)
    data[at : at + 4096] = np.random.default_rng(1).bytes(len(data[at : at + 4096]))
    path.write_bytes(bytes(data))
    assert_finds_itself(directory, items)
    assert f"{path}: snapshot not loaded (checksum does not match the manifest)" in caplog.text
    assert (directory / f"{snapshot}.corrupt").read_bytes() == bytes(data)
    text_index = ItemIndex(directory)  # rebuilt, saved and verified again: no second warning
    assert text_index.backends["text"].rejected is None and text_index.backends["image"].rejected is None
    text_index.close()


def test_a_snapshot_without_a_manifest_is_never_trusted(tmp_path, caplog):
    directory, items = built(tmp_path)
    (directory / "snapshots.json").unlink()
    assert_finds_itself(directory, items)
    assert "not in the manifest" in caplog.text


# --- an emptied or missing table (finding 2)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("accident", ["truncate", "delete", "delete_with_mark"])
def test_an_emptied_table_is_refused_and_the_vectors_are_kept(tmp_path, backend, accident):
    directory, _ = built(tmp_path, backend)
    table = directory / "items.sqlite"
    if accident == "truncate":
        table.write_bytes(b"")
    else:
        table.unlink()
        if accident == "delete_with_mark":
            (directory / "items.mark").unlink()
    snapshots = {p.name: p.read_bytes() for p in directory.glob("*.faiss")}
    with pytest.raises(IndexFolderError, match="items.sqlite") as refused:
        ItemIndex(directory)
    assert "\n" not in str(refused.value)
    assert {p.name: p.read_bytes() for p in directory.glob("*.faiss")} == snapshots  # never 'repaired' to empty
    with pytest.raises(IndexFolderError):  # and again: the refusal did not make the folder look valid
        ItemIndex(directory)


# --- a damaged WAL after a kill (finding 5)
KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, sys.argv[2])
    from test_index_backends import make_items
    from vlm.index import ItemIndex
    index = ItemIndex(sys.argv[1])
    for item in make_items(30, seed=7):
        print(index.add([item])[0], flush=True)  # acknowledged
    os.kill(os.getpid(), signal.SIGKILL)
""")


def killed_after_adds(tmp_path) -> tuple:
    """An index whose last 30 adds live only in the WAL, as a `kill -9` leaves it; their ids."""
    directory, items = built(tmp_path, n=10)
    out = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(directory), os.path.dirname(__file__)],
                         capture_output=True, text=True, timeout=120)
    acknowledged = [int(line) for line in out.stdout.split()]
    assert len(acknowledged) == 30, out.stderr
    wal = directory / "items.sqlite-wal"
    assert wal.stat().st_size > 4096, "the adds were expected in the WAL"
    return directory, acknowledged


def damage_wal(wal, how: str) -> None:
    data = bytearray(wal.read_bytes())
    frame = 24 + 4096
    if how == "delete":
        wal.unlink()
    elif how == "empty":
        wal.write_bytes(b"")
    elif how == "header_only":
        wal.write_bytes(bytes(data[:32]))
    elif how == "mid_frame":
        wal.write_bytes(bytes(data[: 32 + 3 * frame + 100]))
    elif how == "last_frames":
        wal.write_bytes(bytes(data[: len(data) - 2 * frame]))
    else:  # random bytes at an offset into the frames
        at = 32 + int(how) * frame + 50
        data[at : at + 512] = np.random.default_rng(int(how)).bytes(512)
        wal.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["delete", "empty", "header_only", "mid_frame", "last_frames", "1", "5"])
def test_a_damaged_wal_never_loses_acknowledged_items_silently(tmp_path, how):
    directory, acknowledged = killed_after_adds(tmp_path)
    damage_wal(directory / "items.sqlite-wal", how)
    try:
        index = ItemIndex(directory)
    except IndexFolderError as e:
        assert "items.sqlite" in str(e) and "backup" in str(e) and "\n" not in str(e)
        return
    try:  # opened: then nothing acknowledged is missing, and the next id is new
        present = {item.id for item in index.get_many(acknowledged)}
        assert present == set(acknowledged)
        assert index.add(make_items(1, seed=99))[0] > max(acknowledged)
    finally:
        index.close()


def test_an_undamaged_wal_after_a_kill_keeps_every_add(tmp_path):
    directory, acknowledged = killed_after_adds(tmp_path)
    index = ItemIndex(directory)
    assert len(index.get_many(acknowledged)) == 30 and len(index) == 40
    index.close()


def test_repair_accepts_the_table_and_never_reuses_an_id(tmp_path):
    directory, acknowledged = killed_after_adds(tmp_path)
    (directory / "items.sqlite-wal").unlink()
    with pytest.raises(IndexFolderError, match="behind its commit mark"):
        ItemIndex(directory)
    from vlm.index.check import check_index

    report = check_index(directory, repair=True)
    assert not report["ok"] and report["repaired"]
    index = ItemIndex(directory)
    assert len(index) == 10  # what the table kept
    assert index.add(make_items(1, seed=99))[0] > max(acknowledged)
    index.close()


# --- one writer per folder (findings 1 and 6)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_second_writer_is_refused_naming_the_holder(tmp_path, backend):
    directory, _ = built(tmp_path, backend)
    first = ItemIndex(directory)
    try:
        with pytest.raises(IndexLockedError, match=f"in use by process {os.getpid()}"):
            ItemIndex(directory)
    finally:
        first.close()
    ItemIndex(directory).close()  # released on close


def test_a_lock_held_by_another_process_names_its_pid_and_dies_with_it(tmp_path):
    directory, _ = built(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from vlm.index import ItemIndex; "
                               "ItemIndex(sys.argv[1]); print('open', flush=True); time.sleep(60)", str(directory)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(IndexLockedError, match=f"process {holder.pid}"):
            ItemIndex(directory)
    finally:
        holder.kill()
        holder.wait()
    ItemIndex(directory).close()  # the kernel dropped the lock with the process


def test_a_read_only_reader_follows_the_writer(tmp_path):
    directory, items = built(tmp_path)
    writer = ItemIndex(directory)
    reader = vlm.index.open(directory, read_only=True)
    try:
        new = make_items(3, seed=50)
        writer.add(new)
        reader.follow(every_s=0)
        hits = reader.search(np.stack([it.image_vec for it in new]), k=1)
        assert [row[0].item.id for row in hits] == [it.id for it in new]
        with pytest.raises(IndexReadOnlyError):
            reader.add(make_items(1, seed=51))
    finally:
        reader.close()
        writer.close()


# --- a snapshot that fails after the commit (finding 4)
def test_a_failed_snapshot_never_turns_a_committed_add_into_an_error(tmp_path, monkeypatch, caplog):
    directory = tmp_path / "idx"
    index = ItemIndex(directory, IndexConfig(dim=DIM, snapshot_every=1))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(backends_module, "atomic_write", disk_full)
    items = make_items(5)
    ids = [index.add([item])[0] for item in items]  # no error: each is committed
    assert index.info()["snapshot_error"] and "snapshot failed" in caplog.text
    monkeypatch.undo()
    index.add(make_items(1, seed=9))  # the snapshot is retried, and now succeeds
    assert index.info()["snapshot_error"] is None
    index.close()
    reopened = ItemIndex(directory)
    assert {it.id for it in reopened.get_many(ids)} == set(ids) and len(reopened) == 6
    reopened.close()


# --- /v1/stats costs O(1) (finding 10)
def test_info_never_walks_the_folder_and_its_counts_follow_every_change(tmp_path, monkeypatch):
    directory, items = built(tmp_path)
    index = ItemIndex(directory)
    index.delete(items[0].id)
    index.add([vlm.index.Item(path="images/a.png", image_vec=make_items(1)[0].image_vec)])  # an image, no caption
    (directory / "images").mkdir()
    for i in range(50):
        (directory / "images" / f"{i}.png").write_bytes(b"x")

    def walked(*args, **kwargs):
        raise AssertionError("info() walked a folder")

    monkeypatch.setattr(type(directory), "rglob", walked)
    monkeypatch.setattr(os, "walk", walked)
    info = index.info()
    assert info["items"] == 40 and info["vectors"] == {"image": 40, "text": 39}
    index.close()


# --- start-up errors name the file and field (finding 13)
@pytest.mark.parametrize(("content", "message"), [
    (b"{not json", "index.json: not valid JSON"),
    (b"\xff\xfe\x00", "index.json: not valid JSON"),
    (b"[1, 2]", "index.json: must hold a JSON object, got list"),
    (b'{"dim": 16, "colour": "red"}', "index.json: unknown field 'colour'"),
    (b'{"dim": "abc"}', "index.json: field 'dim' must be a positive integer, got 'abc'"),
    (b'{"dim": 16, "backend": "bogus"}', "index.json: field 'backend' must be one of faiss, milvus"),
    (b'{"dim": 16, "faiss": {"nprobe": -1}}', "index.json: field 'faiss.nprobe' must be a positive integer"),
    (b'{"backend": "faiss"}', "index.json: field 'dim' is missing"),
])
def test_a_bad_index_json_is_one_line_naming_the_file_and_field(tmp_path, content, message):
    directory, _ = built(tmp_path)
    (directory / "index.json").write_bytes(content)
    with pytest.raises(IndexFolderError, match=message.replace("(", r"\(").replace(")", r"\)")) as refused:
        ItemIndex(directory)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("damage", ["garbage", "half"])
def test_a_malformed_table_is_named(tmp_path, damage):
    directory, _ = built(tmp_path)
    table = directory / "items.sqlite"
    data = table.read_bytes()
    table.write_bytes(b"garbage" * 500 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(IndexFolderError, match="items.sqlite"):
        ItemIndex(directory)


# --- orphan image files (finding 15)
def test_orphan_image_files_are_removed_at_open(tmp_path):
    directory, _ = built(tmp_path)
    index = ItemIndex(directory)
    (directory / "images").mkdir()
    (directory / "images" / "kept.png").write_bytes(b"png")
    index.add([vlm.index.Item(path="images/kept.png", image_vec=make_items(1)[0].image_vec)])
    (directory / "images" / "orphan.png").write_bytes(b"png")  # as an add killed before its commit leaves it
    index.close()
    ItemIndex(directory).close()
    assert sorted(p.name for p in (directory / "images").iterdir()) == ["kept.png"]


@needs_milvus
def test_milvus_lite_second_process_is_refused_by_the_lock_not_by_milvus(tmp_path):
    directory, _ = built(tmp_path, "milvus")
    first = ItemIndex(directory)
    try:
        with pytest.raises(IndexLockedError, match="in use by process"):
            ItemIndex(directory)
    finally:
        first.close()
