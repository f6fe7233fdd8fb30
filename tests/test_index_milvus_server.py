"""Several writers on one REAL Milvus server (PyPI's `milvus==2.3.5` standalone, on 127.0.0.1, with auth on).

No id is reused between writers, no start-up deletes another writer's vectors (a stale copy of a folder
included), another writer's hit is shown with its metadata, the token works and never shows, and each index
type serves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from test_index_backends import DIM, make_items, unit_vectors

from vlm.index import IndexConfig, IndexFolderError, ItemIndex, MilvusBackend
from vlm.index.check import backup_index

TOKEN = "root:Milvus"  # the standalone server's default user, with authorization enabled
START_TIMEOUT_S = 120


@dataclasses.dataclass
class Server:
    uri: str
    token: str
    start_s: float


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(server, deadline: float) -> None:
    """The package's own wait polls for 180 s even after the process died; this one notices."""
    url = f"http://127.0.0.1:{server.webservice_port}/healthz"
    while time.monotonic() < deadline:
        if server.server_proc.poll() is not None:
            raise RuntimeError(f"the milvus process exited with status {server.server_proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if b"OK" in answer.read():
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"not healthy after {START_TIMEOUT_S} s")


def _loopback_etcd(base: Path):
    """The package's template leaves the embedded etcd's peer port at 2380, so a second server on the machine (another
    test run) would fail to start: give etcd its own free loopback ports through an etcd config file."""
    import milvus
    from milvus import MilvusServerConfig

    package = Path(milvus.__file__).parent / "data"
    client, peer = _free_port(), _free_port()
    (base / "etcd.yaml").write_text(
        f"listen-client-urls: http://127.0.0.1:{client}\nadvertise-client-urls: http://127.0.0.1:{client}\n"
        f"listen-peer-urls: http://127.0.0.1:{peer}\ninitial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
        f"initial-cluster: default=http://127.0.0.1:{peer}\n")
    template = (package / "config.yaml.template").read_text()
    (base / "milvus.yaml.template").write_text(
        template.replace("etcd:\n", f"etcd:\n  config:\n    path: {base / 'etcd.yaml'}\n", 1))
    config = MilvusServerConfig(template=str(base / "milvus.yaml.template"))
    config.glog_conf_file = str(package / "glog.conf")  # set only for the package's own template
    config.set("etcd_port", client)
    return config


def _stop(server) -> None:
    """A graceful stop first (the package's own waits 1 s, then kills)."""
    if server.server_proc is not None and server.server_proc.poll() is None:
        server.server_proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.server_proc.wait(timeout=5)
    server.stop()


@pytest.fixture(scope="module")
def milvus(tmp_path_factory) -> Server:
    """A standalone Milvus server for this module, stopped at its end; skipped (with why) where it cannot run.
    Clients reach it on 127.0.0.1 only (etcd listens there only; Milvus 2.3 has no bind address for the rest)."""
    try:
        from milvus import MilvusServer
    except ImportError:
        pytest.skip("the milvus package (a standalone Milvus server) is not installed: pip install 'milvus==2.3.5'")
    base = tmp_path_factory.mktemp("milvus-server")
    server = MilvusServer(_loopback_etcd(base), wait_for_started=False)
    server.set_base_dir(str(base))
    server.listen_port = _free_port()
    server.config.set("authorization_enabled", True)
    started = time.monotonic()
    try:
        server.start()
        _wait_healthy(server, started + START_TIMEOUT_S)
    except Exception as e:  # no binary for this platform, a port taken, a process that dies at once
        _stop(server)
        log = base / "logs" / "milvus-stdout.log"
        errors = [line[:300] for line in (log.read_text(errors="replace").splitlines() if log.exists() else [])
                  if "[ERROR]" in line or "[FATAL]" in line]
        pytest.skip(f"the Milvus server could not start: {e}; {errors[:1]}")
    yield Server(f"http://127.0.0.1:{server.listen_port}", TOKEN, time.monotonic() - started)
    _stop(server)


@pytest.fixture
def name() -> str:
    """A collection of this test's own on the module's server."""
    return f"t{uuid.uuid4().hex[:12]}"


def config(milvus: Server, name: str, **kwargs) -> IndexConfig:
    return IndexConfig(dim=DIM, backend="milvus", milvus_uri=milvus.uri, milvus_collection=name,
                       milvus_token=milvus.token, **kwargs)


def stored_ids(milvus: Server, collection: str) -> set[int]:
    """Every id a collection holds, read straight from the server (Strong: every acknowledged write)."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=milvus.uri, token=milvus.token)
    try:
        rows = client.query(collection, filter="id >= 0", output_fields=["id"], consistency_level="Strong",
                            limit=16_000)
        return {int(r["id"]) for r in rows}
    finally:
        client.close()


def eventually(check, timeout_s: float = 10.0):
    """Another writer's insert is visible to a Session reader within the server's tick (about 200 ms)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def add_concurrently(writers: list[ItemIndex], per_writer: int) -> list[list[int]]:
    """Each writer adds `per_writer` items, two at a time, all writers at once."""
    ids: list[list[int]] = [[] for _ in writers]

    def run(w: int) -> None:
        items = make_items(per_writer, seed=1000 * (w + 1))
        for start in range(0, per_writer, 2):
            ids[w] += writers[w].add(items[start : start + 2])

    threads = [threading.Thread(target=run, args=(w,)) for w in range(len(writers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ids


def test_two_writers_and_a_stale_replica_reuse_no_id_and_delete_no_vector(milvus, name, tmp_path, caplog):
    a, b = ItemIndex(tmp_path / "a", config(milvus, name)), ItemIndex(tmp_path / "b", config(milvus, name))
    first_a, first_b = add_concurrently([a, b], 10)
    assert len(set(first_a) | set(first_b)) == 20  # two writers at once, no id given twice
    backup_index(tmp_path / "a", tmp_path / "stale")  # a copy of A, soon behind it
    late_a = a.add(make_items(4, seed=7))
    late_b = b.add(make_items(4, seed=8))
    assert a.delete(first_a[0])  # A deletes one of the items its stale copy still holds
    expected = (set(first_a) | set(first_b) | set(late_a) | set(late_b)) - {first_a[0]}
    for modality in ("image", "text", "items"):
        assert stored_ids(milvus, f"{name}_{modality}") == expected

    # start-up adds what the stale copy lacks, deletes nothing, and revives nothing A deleted
    with caplog.at_level(logging.INFO, logger="vlm.index"):
        stale = ItemIndex(tmp_path / "stale", milvus_token=milvus.token)
        empty = ItemIndex(tmp_path / "fresh", config(milvus, name))  # a new writer with an empty table
    assert "vectors are held by other writers; left as they are" in caplog.text
    assert f"not added back (ids [{first_a[0]}])" in caplog.text
    for modality in ("image", "text", "items"):
        assert stored_ids(milvus, f"{name}_{modality}") == expected
    new = stale.add(make_items(3, seed=9)) + empty.add(make_items(3, seed=10))
    assert len(set(new)) == 6 and not set(new) & (expected | {first_a[0]})  # never an id used before
    for index in (a, b, stale, empty):
        index.close()


def test_a_hit_from_another_writer_is_shown_with_its_metadata(milvus, name, tmp_path):
    a, b = ItemIndex(tmp_path / "a", config(milvus, name)), ItemIndex(tmp_path / "b", config(milvus, name))
    items = make_items(3, seed=3)
    ids = b.add(items)

    def top_hit():
        hits = a.search(items[1].image_vec, k=1)[0]
        return hits[0] if hits and hits[0].item.id == ids[1] else None

    hit = eventually(top_hit)
    assert hit is not None and not hit.local
    assert (hit.item.caption, hit.item.path, hit.item.extra) == ("caption 1", "img1.png", {"n": 1})
    assert a.get(ids[2]).caption == "caption 2" and a.get(ids[2], vectors=True).text_vec is not None
    assert not a.delete(ids[2])  # only the writer whose table holds an item deletes it
    own = a.add(make_items(1, seed=4))[0]
    assert a.search(make_items(1, seed=4)[0].image_vec, k=1)[0][0].item.id == own
    assert a.search(make_items(1, seed=4)[0].image_vec, k=1)[0][0].local
    a.close()
    b.close()


def test_a_crash_between_the_table_and_milvus_is_caught_up_at_open(milvus, name, tmp_path):
    other = ItemIndex(tmp_path / "other", config(milvus, name))
    theirs = other.add(make_items(3, seed=5))
    index = ItemIndex(tmp_path / "a", config(milvus, name))
    committed = index.add(make_items(4, seed=6), index_vectors=False)  # killed before the vectors reached Milvus
    index.store.delete(committed[0], pending=True)  # killed between a delete's commit and Milvus
    index.close()
    assert not stored_ids(milvus, f"{name}_image") & set(committed)
    index = ItemIndex(tmp_path / "a", milvus_token=milvus.token)
    assert stored_ids(milvus, f"{name}_image") == set(theirs) | set(committed[1:])
    assert stored_ids(milvus, f"{name}_items") == set(theirs) | set(committed[1:])
    assert index.store.pending_deletes() == []
    assert index.search(make_items(4, seed=6)[2].image_vec, k=1)[0][0].item.id == committed[2]
    index.close()
    other.close()


def test_a_table_pointed_at_a_missing_collection_is_refused(milvus, name, tmp_path):
    index = ItemIndex(tmp_path / "a", config(milvus, name))
    index.add(make_items(2))
    index.close()
    moved = json.loads((tmp_path / "a" / "index.json").read_text())
    (tmp_path / "a" / "index.json").write_text(json.dumps({**moved, "milvus_collection": name + "x"}))
    with pytest.raises(IndexFolderError, match=f"{name}x_items .* not there"):
        ItemIndex(tmp_path / "a", milvus_token=milvus.token)


def indexed_rows(backend: MilvusBackend, rows: int, timeout_s: float = 60) -> int:
    """Rows the server has built its index over, once all of them are or at the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        done = backend.client.describe_index(backend.collection, "vector")["indexed_rows"]
        if done >= rows or time.monotonic() > deadline:
            return done
        time.sleep(0.5)


# The PyPI server's binary has no DiskANN (its index build fails with bad_function_call): the collection is made
# and searched (by a scan of the unindexed segment), but no DiskANN index is built there.
@pytest.mark.parametrize("index_type, builds", [("HNSW", True), ("IVF_PQ", True), ("DISKANN", False)])
def test_each_index_type_serves(milvus, name, index_type, builds):
    backend = MilvusBackend(milvus.uri, name, DIM, milvus.token, index_type)
    vectors = unit_vectors(2000, seed=11)  # past the 1,024 rows under which Milvus builds no index
    backend.add(np.arange(1, 2001), vectors)
    backend.client.flush(name)  # seal the segment, so the index is built
    assert backend.client.describe_index(name, "vector")["index_type"] == index_type
    if builds:
        assert indexed_rows(backend, 2000) == 2000
    scores, ids = backend.search(vectors[:50], k=10)
    assert np.mean(ids[:, 0] == np.arange(1, 51)) >= 0.9 and np.all(ids >= 1)
    backend.close()


def test_the_token_comes_from_the_environment_and_never_shows(milvus, name, tmp_path, monkeypatch):
    index = ItemIndex(tmp_path / "a", config(milvus, name))
    index.close()
    saved = (tmp_path / "a" / "index.json").read_text()
    assert milvus.token not in saved and "milvus_token" not in saved
    assert milvus.token not in repr(config(milvus, name))
    wrong = "root:not-the-password"
    with pytest.raises(IndexFolderError, match="with the token given") as refused:
        ItemIndex(tmp_path / "a", milvus_token=wrong)
    assert wrong not in str(refused.value)
    monkeypatch.delenv("VLM_MILVUS_TOKEN", raising=False)
    with pytest.raises(IndexFolderError, match="VLM_MILVUS_TOKEN"):
        ItemIndex(tmp_path / "a")
    monkeypatch.setenv("VLM_MILVUS_TOKEN", milvus.token)
    ItemIndex(tmp_path / "a").close()


def test_two_cli_builds_into_one_collection_share_it(milvus, name, tmp_path, monkeypatch):
    from test_serve_api import draw

    import vlm
    from vlm.cli import main

    (tmp_path / "images").mkdir()
    for i, (colour, shape) in enumerate([("red", "circle"), ("blue", "square"), ("green", "triangle")]):
        draw(colour, shape).save(tmp_path / "images" / f"{i}.png")
    vlm.create_model("clip-tiny").save(tmp_path / "clip.pt")
    monkeypatch.setenv("VLM_MILVUS_TOKEN", milvus.token)
    args = ["index", "build", "--checkpoint", str(tmp_path / "clip.pt"), "--data", str(tmp_path / "images"),
            "--backend", "milvus", "--milvus-uri", milvus.uri, "--milvus-collection", name, "--milvus-index", "HNSW"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert main([*args, "--out", str(tmp_path / "two")]) == 0
    one, two = ItemIndex(tmp_path / "one"), ItemIndex(tmp_path / "two")
    ids_one, ids_two = set(one.store.ids("image")), set(two.store.ids("image"))
    assert len(ids_one) == len(ids_two) == 3 and not ids_one & ids_two  # the same images, other ids
    assert stored_ids(milvus, f"{name}_image") == ids_one | ids_two
    mine = one.get(min(ids_one), vectors=True)
    twin = next(i for i in two.get_many(sorted(ids_two)) if i.extra["image_id"] == mine.extra["image_id"])
    hits = one.search(mine.image_vec, k=2)[0]  # the same image twice: one's own and two's
    assert {(h.item.id, h.local) for h in hits} == {(mine.id, True), (twin.id, False)}
    assert json.loads((tmp_path / "one" / "index.json").read_text())["milvus_index"] == "HNSW"
    one.close()
    two.close()


def test_the_server_started_on_loopback(milvus):
    assert milvus.uri.startswith("http://127.0.0.1:")
    print(f"Milvus server start: {milvus.start_s:.1f} s")


# --- without a server


def test_build_options_carry_the_token_and_index_type_from_the_command_line(monkeypatch, tmp_path):
    from vlm.cli import main
    from vlm.index import build as build_module
    from vlm.index.cli import MILVUS_INDEX_TYPES
    from vlm.index.milvus import INDEX_TYPES

    assert MILVUS_INDEX_TYPES == INDEX_TYPES
    seen = {}
    monkeypatch.setattr(build_module, "build_index", lambda checkpoint, data, out, options: seen.update(o=options))
    assert main(["index", "build", "--checkpoint", "c.pt", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--backend", "milvus", "--milvus-uri", "http://127.0.0.1:1", "--milvus-token", "u:secret",
                 "--milvus-index", "IVF_PQ", "--milvus-collection", "photos"]) == 0
    options = seen["o"]
    assert (options.milvus_token, options.milvus_index, options.milvus_collection) == ("u:secret", "IVF_PQ", "photos")
    assert "secret" not in repr(options)


@pytest.mark.parametrize("field, value, message", [
    ("milvus_token", "u:secret", "holds a Milvus token; remove it"),
    ("milvus_index", "IVF_FLAT", "field 'milvus_index' must be one of FLAT, HNSW, IVF_PQ, DISKANN"),
])
def test_index_json_refuses_a_token_and_an_unknown_index_type(tmp_path, field, value, message):
    (tmp_path / "index.json").write_text(json.dumps({"dim": DIM, "backend": "milvus", field: value}))
    with pytest.raises(IndexFolderError, match=message) as refused:
        ItemIndex(tmp_path)
    assert "secret" not in str(refused.value)


def test_ivf_pq_codes_take_four_dimensions_each():
    from vlm.index.milvus import index_params

    assert index_params("IVF_PQ", 512)["m"] == 128 and index_params("IVF_PQ", 16)["m"] == 4
    assert 30 % index_params("IVF_PQ", 30)["m"] == 0


def test_the_table_takes_the_ids_it_is_given_and_records_owed_deletes(tmp_path):
    from vlm.index import ItemStore

    store = ItemStore(tmp_path / "items.sqlite")
    items = make_items(2)
    given = [470965065844523108, 470965065844523200]  # Milvus auto_ids are this large
    assert store.add(items, given) == given and [i.id for i in items] == given
    assert store.add(items) == [given[1] + 1, given[1] + 2]  # items that carry ids are new items without `ids`
    with pytest.raises(ValueError, match="2 ids for 1 items"):
        store.add(make_items(1), given)
    assert store.delete(470965065844523108, pending=True) and store.pending_deletes() == [470965065844523108]
    store.clear_pending([470965065844523108])
    assert store.pending_deletes() == [] and store.max_id == given[1] + 2
    store.close()
