"""Durability: an add or a delete acknowledged with a 200 survives `kill -9` of the server, and nothing is corrupt."""

from __future__ import annotations

import sqlite3
import threading

import httpx
import numpy as np
import pytest
from PIL import Image
from test_serve_api import make_collection, png_base64

from vlm.serve.process import ServerProcess


def noise_image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8))


def add(client: httpx.Client, seed: int) -> int:
    body = {"image": png_base64(noise_image(seed)), "caption": f"noise {seed}", "metadata": {"seed": seed}}
    response = client.post("/v1/items", json=body)
    assert response.status_code == 200, response.text
    return response.json()["id"]


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return make_collection(tmp_path_factory.mktemp("durability"))


def test_acknowledged_items_survive_kill_9(collection):
    log = collection["root"] / "server.log"
    server = ServerProcess(collection["checkpoint"], collection["index"], log_path=log).start()
    acknowledged: dict[int, int] = {}  # seed -> id
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for seed in range(50):
                acknowledged[seed] = add(client, seed)
            deleted = {acknowledged[seed] for seed in range(0, 50, 5)}
            for item_id in deleted:  # acknowledged deletes must stay deleted too
                assert client.delete(f"/v1/items/{item_id}").status_code == 200

            three_late_adds = threading.Event()

            def keep_adding() -> None:  # still writing when the process is killed
                with httpx.Client(base_url=server.url, timeout=30) as late:
                    for seed in range(1000, 1100):
                        try:
                            acknowledged[seed] = add(late, seed)
                        except (httpx.TransportError, AssertionError):
                            break
                        if seed == 1002:
                            three_late_adds.set()
                three_late_adds.set()

            writer = threading.Thread(target=keep_adding)
            writer.start()
            three_late_adds.wait(timeout=60)
            server.kill()
            writer.join()
    finally:
        server.kill()

    with sqlite3.connect(collection["index"] / "items.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    restarted = ServerProcess(collection["checkpoint"], collection["index"], log_path=log).start()
    try:
        with httpx.Client(base_url=restarted.url, timeout=30) as client:
            assert client.get("/v1/stats").json()["index"]["items"] >= 12 + len(acknowledged) - len(deleted)
            for seed, item_id in acknowledged.items():
                if item_id in deleted:
                    assert client.get(f"/v1/items/{item_id}").status_code == 404
                    continue
                item = client.get(f"/v1/items/{item_id}").json()
                assert item["caption"] == f"noise {seed}" and item["extra"] == {"seed": seed}
                assert client.get(item["image_url"]).status_code == 200
            for seed in list(acknowledged)[::7]:
                top = client.post("/v1/search", json={"image": png_base64(noise_image(seed)), "k": 1}).json()
                if acknowledged[seed] in deleted:  # the faiss snapshot caught up with the delete
                    assert top["results"][0]["id"] != acknowledged[seed]
                else:
                    assert top["results"][0]["id"] == acknowledged[seed]
            assert add(client, 5000) > max(acknowledged.values())  # ids are never reused
    finally:
        restarted.stop()
