"""`vlm index build --precision int8|bf16|auto` and `vlm serve` at the index's precision, recording the CPU class."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from test_serve_api import make_collection

import vlm
from vlm.cli import main
from vlm.index import ItemIndex
from vlm.index.encoder import Encoder
from vlm.models.cpu import CPU_CLASSES
from vlm.serve.process import ServerProcess
from vlm.serve.service import query_precision


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> dict:
    """The fp32 collection of the API tests plus the same images indexed at int8."""
    collection = make_collection(tmp_path_factory.mktemp("precision"))
    collection["int8"] = collection["root"] / "index-int8"
    assert main(["index", "build", "--checkpoint", str(collection["checkpoint"]), "--data",
                 str(collection["root"] / "pairs.csv"), "--out", str(collection["int8"]), "--precision", "int8"]) == 0
    return collection

def test_int8_index_records_its_precision_and_stays_close_to_fp32(collection, capsys):
    assert main(["index", "info", str(collection["int8"])]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "int8"
    fp32, int8 = ItemIndex(collection["index"]), ItemIndex(collection["int8"])
    try:
        assert fp32.info()["precision"] == "fp32"
        for item_id in range(1, 13):
            a, b = fp32.get(item_id, vectors=True), int8.get(item_id, vectors=True)
            assert float(a.image_vec @ b.image_vec) > 0.99 and float(a.text_vec @ b.text_vec) > 0.99
            assert not np.array_equal(a.image_vec, b.image_vec)  # int8 really ran
    finally:
        fp32.close()
        int8.close()

def test_index_without_a_recorded_precision_reads_as_fp32(collection, tmp_path):
    config = json.loads((collection["index"] / "index.json").read_text())
    del config["precision"]
    from vlm.index.config import IndexConfig, read_config

    (tmp_path / "index.json").write_text(json.dumps(config))
    assert read_config(tmp_path).precision == "fp32" == IndexConfig(dim=4).precision

def test_serving_an_int8_index_encodes_queries_at_int8(collection):
    process = ServerProcess(collection["checkpoint"], collection["int8"], "--rerank-checkpoint",
                            str(collection["fusion"]), "--rerank-precision", "int8",
                            log_path=collection["root"] / "server.log")
    encoder = Encoder(vlm.load(collection["checkpoint"]), precision="int8")
    images = [Image.open(collection["root"] / "images" / f"{i}.png").convert("RGB") for i in range(12)]
    expected = encoder.encode_images(images) @ encoder.encode_texts(["a blue square"])[0]
    with process, httpx.Client(base_url=process.url, timeout=30) as http:
        stats = http.get("/v1/stats").json()
        assert stats["precision"] == "int8" and stats["reranker"] is True and stats["rerank_precision"] == "int8"
        assert stats["cpu_class"] in CPU_CLASSES
        assert http.get("/v1/stats").json()["index"]["precision"] == "int8"
        results = http.post("/v1/search", json={"text": "a blue square", "k": 12}).json()["results"]
        by_id = {int(Path(r["path"]).stem): r["score"] for r in results}
        np.testing.assert_allclose([by_id[i] for i in range(12)], expected, atol=1e-4)
        reranked = http.post("/v1/search", json={"text": "a blue square", "k": 4, "rerank_k": 4}).json()
        assert reranked["reranked"] and len(reranked["results"]) == 4

def test_serve_refuses_a_precision_the_index_was_not_built_at(collection, capsys):
    assert main(["serve", "--checkpoint", str(collection["checkpoint"]), "--index", str(collection["int8"]),
                 "--precision", "fp32"]) == 2
    err = capsys.readouterr().err.strip()
    assert "built at int8" in err and "--precision fp32" in err and len(err.splitlines()) == 1


def test_bf16_index_records_its_precision_and_cpu_class_and_stays_close(collection, tmp_path):
    out = tmp_path / "index-bf16"
    assert main(["index", "build", "--checkpoint", str(collection["checkpoint"]), "--data",
                 str(collection["root"] / "pairs.csv"), "--out", str(out), "--precision", "bf16"]) == 0
    config = json.loads((out / "index.json").read_text())
    assert config["precision"] == "bf16" and config["cpu_class"] in CPU_CLASSES
    fp32, bf16 = ItemIndex(collection["index"]), ItemIndex(out)
    try:
        for item_id in range(1, 13):
            a, b = fp32.get(item_id, vectors=True), bf16.get(item_id, vectors=True)
            assert float(a.image_vec @ b.image_vec) > 0.99 and float(a.text_vec @ b.text_vec) > 0.99
    finally:
        fp32.close()
        bf16.close()
    assert query_precision("auto", out) == "bf16"  # serve --precision auto follows the index


def test_auto_index_records_what_auto_chose(collection, tmp_path):
    out = tmp_path / "index-auto"
    assert main(["index", "build", "--checkpoint", str(collection["checkpoint"]), "--data",
                 str(collection["root"] / "pairs.csv"), "--out", str(out), "--precision", "auto"]) == 0
    assert json.loads((out / "index.json").read_text())["precision"] in ("fp32", "bf16")
