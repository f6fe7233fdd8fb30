"""Memory-mapped serving with workers (issue 25): a read-only open maps the faiss snapshots and still follows a
writer; `vlm serve --workers N --read-only` answers from one folder in N processes, exactly as one process does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from test_index_backends import make_items
from test_index_integrity import built
from test_serve_api import make_collection
from test_serve_faults import bound_by_file_modes

import vlm.index
from vlm.index import ItemIndex
from vlm.index.backends import FaissBackend, FaissConfig
from vlm.index.config import read_config
from vlm.serve.process import ServerProcess


def anonymous_rss_mb() -> float:
    """Private resident memory: a mapped file's pages are the page cache's, not counted here."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no RssAnon in /proc/self/status")


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_a_read_only_open_maps_the_snapshot_instead_of_copying_it(tmp_path, kind):
    dim, n = 512, 25_000 if kind == "flat" else 5_000  # flat: a 51 MB snapshot
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1, n + 1)
    config = FaissConfig(exact_max=n if kind == "flat" else 10)
    writer = FaissBackend(tmp_path / "image.faiss", dim, config)
    writer.rebuild(ids, vectors)
    assert writer.kind == kind
    record = writer.save()
    del writer
    snapshot_mb = record.bytes / 2**20

    before = anonymous_rss_mb()
    reader = FaissBackend(tmp_path / "image.faiss", dim, config, expected=record, writable=False)
    scores, found = reader.search(vectors[:8], k=1)
    grown = anonymous_rss_mb() - before
    assert reader.mapped and reader.rejected is None and reader.kind == kind
    assert list(found[:, 0]) == list(ids[:8])
    if kind == "flat":
        assert snapshot_mb > 45 and grown < snapshot_mb / 4, (grown, snapshot_mb)

    # a change copies the mapped index into memory first (faiss would abort on a mapped one), then applies
    reader.add(np.array([n + 1]), vectors[:1] * -1)
    reader.delete(np.array([1]))
    assert not reader.mapped and n + 1 in set(reader.ids()) and 1 not in set(reader.ids())


def test_a_read_only_reader_maps_follows_the_writer_and_never_writes(tmp_path):
    directory, items = built(tmp_path)
    writer = ItemIndex(directory)
    reader = vlm.index.open(directory, read_only=True)
    try:
        assert all(b.mapped for b in reader.backends.values())
        new = make_items(3, seed=50)
        writer.add(new)
        writer.delete(items[0].id)
        reader.follow(every_s=0)
        hits = reader.search(np.stack([it.image_vec for it in new]), k=1)
        assert [row[0].item.id for row in hits] == [it.id for it in new]
        assert items[0].id not in {row[0].item.id for row in reader.search(items[0].image_vec, k=3)}
        assert not any(b.mapped for b in reader.backends.values())  # held in memory from the first change
        snapshots = {p.name: p.stat().st_mtime_ns for p in directory.glob("*.faiss")}
    finally:
        reader.close()
    assert {p.name: p.stat().st_mtime_ns for p in directory.glob("*.faiss")} == snapshots  # the reader wrote none
    writer.close()


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> dict:
    return make_collection(tmp_path_factory.mktemp("workers"))


def worker_pids(pid: int) -> list[int]:
    """uvicorn's worker processes: the server's children started by multiprocessing's spawn."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def answers(url: str, queries: list[dict], timeout: float = 120) -> list[dict]:
    """Each query's answer. /readyz told that one worker is ready: another may still answer 503 while it loads."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=30) as client:
        out = []
        for body in queries:
            response = client.post("/v1/search", json=body)
            while response.status_code == 503 and time.monotonic() < deadline:
                time.sleep(0.2)
                response = client.post("/v1/search", json=body)
            assert response.status_code == 200, response.text
            out.append(response.json())
        return out


def test_two_read_only_workers_on_a_read_only_folder_answer_as_one_process(collection, tmp_path):
    folder = tmp_path / "index"
    shutil.copytree(collection["index"], folder)
    embedding = np.random.default_rng(1).standard_normal(read_config(folder).dim)
    embedding = (embedding / np.linalg.norm(embedding)).tolist()
    queries = [{"text": "a red circle", "k": 5}, {"embedding": embedding, "k": 5}] * 10
    folder.chmod(0o555)
    try:
        with ServerProcess(collection["checkpoint"], folder, "--read-only", preexec_fn=bound_by_file_modes(),
                           log_path=tmp_path / "one.log") as one:
            expected = answers(one.url, queries[:2])
        server = ServerProcess(collection["checkpoint"], folder, "--read-only", "--workers", "2",
                               preexec_fn=bound_by_file_modes(), log_path=tmp_path / "two.log").start()
        try:
            assert len(worker_pids(server.process.pid)) == 2
            got = answers(server.url, queries)
        finally:
            server.stop()
    finally:
        folder.chmod(0o755)
    assert got == expected * 10
    assert "Traceback" not in (tmp_path / "two.log").read_text()


def test_workers_without_read_only_are_refused_in_one_line(collection):
    result = subprocess.run([sys.executable, "-m", "vlm.cli", "serve", "--checkpoint", str(collection["checkpoint"]),
                             "--index", str(collection["index"]), "--workers", "2"],
                            capture_output=True, text=True, timeout=60, env={**os.environ})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--workers 2" in lines[0] and "--read-only" in lines[0], result.stderr
