"""Faults under a real `vlm serve`: a read-only index folder, a full disk, a corrupt faiss snapshot, clients that
hang up mid-request. Each ends in a clear error or a clean recovery, and no acknowledged change is lost.

Root ignores file modes, and these tests run as root in CI: there the server process drops CAP_DAC_OVERRIDE,
CAP_DAC_READ_SEARCH and CAP_FOWNER from its capability bounding set before it starts (prctl), so after exec it
is a root without them and the kernel refuses its writes to a 0555 folder, as it would for a service user. The full
disk is a file-size limit (RLIMIT_FSIZE) on the server process: writes past it fail with EFBIG, as they fail
with ENOSPC on a full disk, and no mount or tmpfs is needed.
"""

from __future__ import annotations

import base64
import ctypes
import os
import resource
import shutil
import sqlite3
import threading
from pathlib import Path

import httpx
import pytest
from test_serve_api import make_collection, png_base64
from test_serve_durability import add, noise_image

from vlm.index import ItemIndex
from vlm.serve.process import ServerProcess

PR_CAPBSET_DROP = 24
CAPS_THAT_IGNORE_FILE_MODES = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return make_collection(tmp_path_factory.mktemp("faults"))


@pytest.fixture
def index_copy(collection, tmp_path) -> Path:
    shutil.copytree(collection["index"], tmp_path / "index")
    return tmp_path / "index"


def bound_by_file_modes():
    """A preexec_fn for the server: as root, drop the capabilities that let root ignore file modes."""
    if os.geteuid() != 0:
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def drop() -> None:
        for capability in CAPS_THAT_IGNORE_FILE_MODES:
            if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")

    return drop


def error_of(response: httpx.Response) -> dict:
    assert response.headers["content-type"].startswith("application/json"), response.text
    return response.json()["error"]


def added_images(index: Path) -> tuple[dict[int, str], set[str]]:
    """(id -> path of the rows of items added through the API, the image files in DIR/images)."""
    with sqlite3.connect(index / "items.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = dict(db.execute("SELECT id, path FROM items WHERE path LIKE 'images/%'").fetchall())
    return rows, {f"images/{p.name}" for p in (index / "images").glob("*.png")}


def assert_index_consistent(index: Path) -> dict[int, str]:
    """SQLite is intact and every added image belongs to a row, and every row's image exists."""
    rows, files = added_images(index)
    assert set(rows.values()) == files
    return rows


def assert_all_there(index: Path, acknowledged: dict[int, int], deleted: set[int] = frozenset()) -> None:
    """After a restart's open (which removes the image files of adds killed before their commit): every
    acknowledged add is in the table with its image file, every acknowledged delete is gone, and no file lacks
    its row nor row its file."""
    ItemIndex(index).close()
    rows = assert_index_consistent(index)
    with sqlite3.connect(index / "items.sqlite") as db:
        captions = dict(db.execute("SELECT id, caption FROM items").fetchall())
    for seed, item_id in acknowledged.items():
        if item_id in deleted:
            assert item_id not in captions
        else:
            assert captions[item_id] == f"noise {seed}" and (index / rows[item_id]).is_file()


def test_a_read_only_index_folder_serves_searches_and_refuses_writes(collection, index_copy):
    index_copy.chmod(0o555)
    log = index_copy.parent / "server.log"
    server = ServerProcess(collection["checkpoint"], index_copy, preexec_fn=bound_by_file_modes(),
                           log_path=log).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            search = client.post("/v1/search", json={"text": "a red circle", "k": 3})
            assert search.status_code == 200 and len(search.json()["results"]) == 3
            refused = client.post("/v1/items", json={"image": png_base64(noise_image(1)), "caption": "x"})
            assert refused.status_code == 403 and error_of(refused)["code"] == "index_read_only"
            assert client.delete("/v1/items/1").status_code == 403
            stats = client.get("/v1/stats").json()["index"]
            assert stats["read_only"] is True and stats["items"] == 12
            assert str(index_copy) not in refused.text + str(stats)
    finally:
        server.stop()
        index_copy.chmod(0o755)
    text = log.read_text()
    assert "serving read-only" in text and str(index_copy) in text  # the operator's log names the folder
    assert "Traceback" not in text


def test_a_folder_made_read_only_while_serving_refuses_writes_and_loses_nothing(collection, index_copy):
    log = index_copy.parent / "server.log"
    server = ServerProcess(collection["checkpoint"], index_copy, preexec_fn=bound_by_file_modes(),
                           log_path=log).start()
    acknowledged = {}
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for seed in range(4):
                acknowledged[seed] = add(client, seed)
            for folder in (index_copy, index_copy / "images"):
                folder.chmod(0o555)
            refused = client.post("/v1/items", json={"image": png_base64(noise_image(99)), "caption": "late"})
            assert refused.status_code == 403, refused.text
            assert error_of(refused)["code"] == "index_read_only" and str(index_copy) not in refused.text
            top = client.post("/v1/search", json={"image": png_base64(noise_image(2)), "k": 1}).json()
            assert top["results"][0]["id"] == acknowledged[2]  # searches still work
            # the row goes (SQLite's files stay writable), its image file stays behind, logged
            assert client.delete(f"/v1/items/{acknowledged[3]}").json() == {"deleted": acknowledged[3]}
    finally:
        server.kill()
        for folder in (index_copy, index_copy / "images"):
            folder.chmod(0o755)
    assert "could not remove its image" in log.read_text()
    rows, files = added_images(index_copy)
    leftover = files - set(rows.values())
    assert len(leftover) == 1
    (index_copy / leftover.pop()).unlink()
    assert_all_there(index_copy, acknowledged, deleted={acknowledged[3]})


def file_size_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_refuses_the_add_cleanly_and_loses_nothing(collection, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(collection["index"], index)
    limit = max(p.stat().st_size for p in index.rglob("*") if p.is_file()) + 48 * 1024
    log = tmp_path / "server.log"
    server = ServerProcess(collection["checkpoint"], index, preexec_fn=file_size_limit(limit), log_path=log).start()
    acknowledged, refusals = {}, []
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for seed in range(200):
                body = {"image": png_base64(noise_image(seed)), "caption": f"noise {seed}", "metadata": {"seed": seed}}
                response = client.post("/v1/items", json=body)
                if response.status_code == 200:
                    acknowledged[seed] = response.json()["id"]
                else:
                    refusals.append(response)
                    if len(refusals) == 3:
                        break
            assert acknowledged and len(refusals) == 3, f"limit {limit} bytes was never reached"
            for refused in refusals:
                assert refused.status_code == 507, refused.text
                assert error_of(refused)["code"] == "storage_full" and str(index) not in refused.text
            assert client.post("/v1/search", json={"text": "noise 1", "k": 3}).status_code == 200
            assert client.get("/healthz").status_code == 200
    finally:
        server.kill()
    assert_all_there(index, acknowledged)
    with sqlite3.connect(index / "items.sqlite") as db:  # a 507 means not committed: no refused add is stored
        stored = db.execute("SELECT COUNT(*) FROM items WHERE caption LIKE 'noise %'").fetchone()[0]
    assert stored == len(acknowledged)


def test_a_corrupt_faiss_snapshot_is_rebuilt_from_the_table(collection, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(collection["index"], index)
    (index / "image.faiss").write_bytes(b"not a faiss index" * 100)
    text_snapshot = (index / "text.faiss").read_bytes()
    (index / "text.faiss").write_bytes(text_snapshot[: len(text_snapshot) // 2])
    log = tmp_path / "server.log"
    with ServerProcess(collection["checkpoint"], index, log_path=log) as server:
        image = (collection["root"] / "images" / "5.png").read_bytes()
        body = {"image": base64.b64encode(image).decode(), "k": 12}
        results = httpx.post(f"{server.url}/v1/search", json=body, timeout=30).json()["results"]
        assert len(results) == 12 and results[0]["caption"] == collection["captions"][5]
        by_caption = httpx.post(f"{server.url}/v1/search", json={"text": "a red circle", "k": 12, "modality": "text"},
                                timeout=30).json()["results"]
        assert len(by_caption) == 12
    assert "snapshot not loaded" in log.read_text()
    assert (index / "image.faiss.corrupt").read_bytes().startswith(b"not a faiss index")
    assert (index / "text.faiss.corrupt").is_file()


def test_clients_that_hang_up_mid_request_leave_the_server_clean(collection, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(collection["index"], index)
    log = tmp_path / "server.log"
    server = ServerProcess(collection["checkpoint"], index, log_path=log).start()
    try:
        def impatient(i: int) -> None:
            body = ({"text": f"query {i}", "k": 12} if i % 3 == 0 else
                    {"image": png_base64(noise_image(i)), "k": 12} if i % 3 == 1 else
                    None)
            timeout = httpx.Timeout(30, read=0.001 * (1 + i % 20))  # gone at a different moment each time
            try:
                if body is None:
                    httpx.post(f"{server.url}/v1/items", timeout=timeout,
                               json={"image": png_base64(noise_image(i)), "caption": f"noise {i}"})
                else:
                    httpx.post(f"{server.url}/v1/search", json=body, timeout=timeout)
            except httpx.TimeoutException:
                pass

        threads = [threading.Thread(target=impatient, args=(i,)) for i in range(60)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            acknowledged = {7000: add(client, 7000)}
            assert len(client.post("/v1/search", json={"text": "a red circle", "k": 3}).json()["results"]) == 3
            stats = client.get("/v1/stats").json()
            assert stats["index"]["items"] >= 13
    finally:
        server.kill()
    text = log.read_text()
    assert "unhandled error" not in text and "Traceback" not in text, text[-3000:]
    assert_all_there(index, acknowledged)
