"""What an operator does to a served index folder, one thing at a time: a second server, an --overwrite build, a
snapshot that fails, a full disk at start-up, an emptied table, a backup and a check of a live folder. Each ends
in a truthful answer and every acknowledged item present, or in a refusal that names the file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from test_serve_api import make_collection, png_base64
from test_serve_durability import add, noise_image
from test_serve_faults import assert_all_there, bound_by_file_modes, error_of, file_size_limit

from vlm.cli import main
from vlm.index import ItemIndex
from vlm.serve.process import ServerProcess


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return make_collection(tmp_path_factory.mktemp("operations"))


@pytest.fixture
def index_copy(collection, tmp_path) -> Path:
    shutil.copytree(collection["index"], tmp_path / "index")
    return tmp_path / "index"


def vlm_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlm.cli", *args], capture_output=True, text=True, timeout=300)


def test_a_second_server_is_refused_naming_the_first_and_a_read_only_one_follows_it(collection, index_copy):
    log = index_copy.parent / "server.log"
    with ServerProcess(collection["checkpoint"], index_copy, log_path=log) as first:
        second = vlm_command("serve", "--checkpoint", str(collection["checkpoint"]), "--index", str(index_copy),
                             "--port", "1")
        assert second.returncode == 2
        assert second.stderr.strip().count("\n") == 0 and f"process {first.process.pid}" in second.stderr
        with ServerProcess(collection["checkpoint"], index_copy, "--read-only", log_path=log) as reader, \
                httpx.Client(base_url=first.url, timeout=30) as writer, httpx.Client(timeout=30) as client:
            new_id = add(writer, 7)
            image = {"image": png_base64(noise_image(7)), "k": 1}
            deadline = time.monotonic() + 10
            while (top := client.post(f"{reader.url}/v1/search", json=image).json()["results"][0]["id"]) != new_id:
                assert time.monotonic() < deadline, "the read-only server never saw the writer's add"
                time.sleep(0.2)
            refused = client.post(f"{reader.url}/v1/items", json={"image": png_base64(noise_image(8))})
            assert refused.status_code == 403 and error_of(refused)["code"] == "index_read_only"
            assert top == new_id


def test_overwrite_under_a_running_server_is_refused_and_loses_nothing(collection, index_copy):
    with ServerProcess(collection["checkpoint"], index_copy) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        acknowledged = {seed: add(client, seed) for seed in range(3)}
        build = vlm_command("index", "build", "--checkpoint", str(collection["checkpoint"]), "--data",
                            str(collection["root"] / "pairs.csv"), "--out", str(index_copy), "--overwrite")
        assert build.returncode == 2 and f"process {server.process.pid}" in build.stderr
        assert build.stderr.strip().count("\n") == 0
        acknowledged[3] = add(client, 3)  # the server still writes its own folder
    assert_all_there(index_copy, acknowledged)


def test_a_failed_snapshot_still_acknowledges_committed_adds(collection, index_copy):
    config = json.loads((index_copy / "index.json").read_text())
    (index_copy / "index.json").write_text(json.dumps({**config, "snapshot_every": 2}))
    log = index_copy.parent / "server.log"
    server = ServerProcess(collection["checkpoint"], index_copy, preexec_fn=bound_by_file_modes(),
                           log_path=log).start()
    acknowledged = {}
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            acknowledged[0] = add(client, 0)
            index_copy.chmod(0o555)  # snapshots cannot be written; the table's files and images/ still can
            for seed in range(1, 7):
                acknowledged[seed] = add(client, seed)  # 200: committed, whatever the snapshot does
            assert client.get("/v1/stats").json()["index"]["snapshot_error"]
            index_copy.chmod(0o755)
            acknowledged[7] = add(client, 7)
            assert client.get("/v1/stats").json()["index"]["snapshot_error"] is None  # retried, and written
    finally:
        server.kill()
        index_copy.chmod(0o755)
    assert "snapshot failed" in log.read_text()
    assert_all_there(index_copy, acknowledged)


def test_a_full_disk_at_start_up_serves_searches_read_only(collection, index_copy):
    (index_copy / "snapshots.json").unlink()  # the server must rewrite its snapshots at start
    limit = (index_copy / "image.faiss").stat().st_size // 2
    log = index_copy.parent / "server.log"
    server = ServerProcess(collection["checkpoint"], index_copy, preexec_fn=file_size_limit(limit),
                           log_path=log).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert len(client.post("/v1/search", json={"text": "a red circle", "k": 5}).json()["results"]) == 5
            refused = client.post("/v1/items", json={"image": png_base64(noise_image(1)), "caption": "x"})
            assert refused.status_code == 507 and error_of(refused)["code"] == "storage_full"
            stats = client.get("/v1/stats").json()["index"]
            assert stats["read_only"] is True and stats["read_only_reason"].startswith("cannot write items.sqlite")
    finally:
        server.stop()
    text = log.read_text()
    assert "serving read-only" in text and "Traceback" not in text


def test_an_emptied_table_is_never_served(collection, index_copy):
    (index_copy / "items.sqlite").write_bytes(b"")
    snapshot = (index_copy / "image.faiss").read_bytes()
    log = index_copy.parent / "server.log"
    server = ServerProcess(collection["checkpoint"], index_copy, log_path=log).start(until="/healthz")
    try:
        deadline = time.monotonic() + 60
        while "failed" not in (ready := httpx.get(f"{server.url}/readyz").json()["error"]["message"]):
            assert time.monotonic() < deadline, ready
            time.sleep(0.2)
        assert str(index_copy) not in ready  # the reason is for the operator's log
    finally:
        server.stop()
    assert f"{index_copy / 'items.sqlite'}: the item table is empty (0 bytes)" in log.read_text()
    assert (index_copy / "image.faiss").read_bytes() == snapshot


def test_backup_of_a_live_folder_holds_every_acknowledged_item(collection, index_copy, tmp_path):
    with ServerProcess(collection["checkpoint"], index_copy) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        acknowledged = {seed: add(client, seed) for seed in range(4)}
        assert main(["index", "backup", str(index_copy), str(tmp_path / "backup")]) == 0
        add(client, 99)  # after the backup: not in it
    assert_all_there(tmp_path / "backup", acknowledged)
    assert main(["index", "check", str(tmp_path / "backup")]) == 0
    index = ItemIndex(tmp_path / "backup")
    assert len(index) == 12 + 4
    index.close()


def test_index_check_names_what_is_wrong(collection, index_copy, capsys):
    assert main(["index", "check", str(index_copy)]) == 0
    data = bytearray((index_copy / "text.faiss").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (index_copy / "text.faiss").write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["index", "check", str(index_copy)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["problems"] == [
        "text.faiss: checksum does not match the manifest (set aside and rebuilt at open)"]
    assert main(["index", "check", str(index_copy), "--repair"]) == 0
    capsys.readouterr()
    assert main(["index", "check", str(index_copy)]) == 0
