"""The retrieval API over real HTTP: `vlm index build` on drawn images, then `vlm serve` in a subprocess."""

from __future__ import annotations

import base64
import csv
import importlib.util
import io
import json
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import vlm
from vlm.cli import main
from vlm.index.encoder import Encoder, Reranker
from vlm.serve.process import ServerProcess

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square"]


def draw(colour: str, shape: str, size: int = 32) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    box = [size // 5, size // 5, size - size // 5, size - size // 5]
    (ImageDraw.Draw(image).ellipse if shape == "circle" else ImageDraw.Draw(image).rectangle)(box, fill=colour)
    return image


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


PQ_FACTORY = "IVF2,PQ8x2"  # a compressed index that 12 items can train (4 centroids per sub-quantizer)


def write_collection(root: Path) -> dict:
    """12 drawn images + pairs.csv and random clip-tiny and fusion-tiny checkpoints (no index yet)."""
    torch.manual_seed(0)
    (root / "images").mkdir(parents=True)
    rows = []
    for i, (colour, shape) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        draw(colour, shape).save(root / "images" / f"{i}.png")
        rows.append((f"images/{i}.png", f"a {colour} {shape}"))
    with open(root / "pairs.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "caption"), *rows])
    vlm.create_model("clip-tiny").save(root / "clip.pt")
    vlm.create_model("fusion-tiny").save(root / "fusion.pt")
    return {"root": root, "checkpoint": root / "clip.pt", "fusion": root / "fusion.pt", "pairs": root / "pairs.csv",
            "captions": [caption for _, caption in rows]}


def make_collection(root: Path, *build_args: str) -> dict:
    """`write_collection` and an index of it built by the CLI."""
    written = write_collection(root)
    assert main(["index", "build", "--checkpoint", str(root / "clip.pt"), "--data", str(root / "pairs.csv"),
                 "--out", str(root / "index"), *build_args]) == 0
    return {**written, "index": root / "index"}


@pytest.fixture(scope="module", params=["flat", "pq-mapped"])
def collection(request, tmp_path_factory) -> dict:
    """Every route twice: on an exact index, and on a compressed (IVF-PQ) one served read-only, memory-mapped."""
    if request.param == "flat":
        return {**make_collection(tmp_path_factory.mktemp("serve")), "read_only": False}
    made = make_collection(tmp_path_factory.mktemp("serve-pq"), "--index-factory", PQ_FACTORY)
    return {**made, "read_only": True}


@pytest.fixture(scope="module")
def server(collection):
    read_only = ["--read-only"] if collection["read_only"] else []
    process = ServerProcess(collection["checkpoint"], collection["index"], "--rerank-checkpoint",
                            str(collection["fusion"]), *read_only, log_path=collection["root"] / "server.log")
    with process:
        yield process


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def encoder(collection) -> Encoder:
    return Encoder(vlm.load(collection["checkpoint"]))


def test_health_and_readiness(http, collection):
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").json() == {"status": "ready"}  # nothing more without the key
    stats = http.get("/v1/stats").json()
    assert stats["index"]["items"] == 12 and stats["reranker"] is True and "directory" not in stats["index"]
    want = "ivfpq" if collection["read_only"] else "flat"
    assert stats["index"]["search_structure"]["image"] == want
    assert stats["index"]["read_only"] is collection["read_only"]
    assert stats["index"]["mapped"]["image"] is collection["read_only"]  # the snapshot's pages, not a copy


def test_search_by_an_indexed_image_finds_it_first(http, collection):
    image = Image.open(collection["root"] / "images" / "5.png")
    results = http.post("/v1/search", json={"image": png_base64(image), "k": 3}).json()["results"]
    assert results[0]["caption"] == collection["captions"][5]
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert Path(results[0]["path"]).name == "5.png"


def test_text_search_scores_are_the_models_cosine_similarities(http, encoder, collection):
    results = http.post("/v1/search", json={"text": "a blue square", "k": 12}).json()["results"]
    images = [Image.open(collection["root"] / "images" / f"{i}.png").convert("RGB") for i in range(12)]
    expected = encoder.encode_images(images) @ encoder.encode_texts(["a blue square"])[0]
    by_caption = dict(zip(collection["captions"], expected, strict=True))
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    for r in results:
        assert r["score"] == pytest.approx(float(by_caption[r["caption"]]), abs=1e-4)


def test_caption_modality_searches_caption_vectors(http):
    results = http.post("/v1/search", json={"text": "a green circle", "k": 1, "modality": "text"}).json()["results"]
    assert results[0]["caption"] == "a green circle" and results[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_embed_returns_the_models_embeddings(http, encoder):
    body = {"texts": ["a red circle", "a blue square"], "images": [png_base64(draw("red", "circle"))]}
    out = http.post("/v1/embed", json=body).json()
    np.testing.assert_allclose(out["text_embeddings"], encoder.encode_texts(body["texts"]), atol=1e-5)
    np.testing.assert_allclose(out["image_embeddings"], encoder.encode_images([draw("red", "circle")]), atol=1e-5)
    assert out["dim"] == 32


def test_search_by_embedding_matches_search_by_text(http):
    embedding = http.post("/v1/embed", json={"texts": ["a purple square"]}).json()["text_embeddings"][0]
    by_embedding = http.post("/v1/search", json={"embedding": embedding, "k": 5}).json()["results"]
    by_text = http.post("/v1/search", json={"text": "a purple square", "k": 5}).json()["results"]
    assert [r["id"] for r in by_embedding] == [r["id"] for r in by_text]


def test_classify_gives_a_softmax_over_the_labels(http, encoder):
    image = draw("orange", "square")
    labels = ["circle", "square", "star"]
    out = http.post("/v1/classify", json={"image": png_base64(image), "labels": labels, "templates": ["a {}"]}).json()
    probs = {p["label"]: p["probability"] for p in out["labels"]}
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    logits = encoder.logit_scale * encoder.encode_texts([f"a {label}" for label in labels]) @ encoder.encode_images(
        [image])[0]
    expected = torch.softmax(torch.tensor(logits), 0).numpy()
    for label, p in zip(labels, expected, strict=True):
        assert probs[label] == pytest.approx(float(p), abs=1e-4)


def test_rerank_orders_the_top_k_by_the_early_fusion_score(http, collection):
    out = http.post("/v1/search", json={"text": "a red circle", "k": 6, "rerank_k": 4}).json()
    assert out["reranked"]
    head = out["results"][:4]
    reranker = Reranker(vlm.load(collection["fusion"]))
    assert not any(Path(r["path"]).is_absolute() for r in out["results"])  # relative to the source's folder
    expected = reranker.score("a red circle", [Image.open(collection["root"] / r["path"]).convert("RGB")
                                               for r in head])
    assert [r["rerank_score"] for r in head] == pytest.approx(sorted(expected, reverse=True), abs=1e-4)
    assert all("rerank_score" not in r for r in out["results"][4:])


def test_added_item_is_searchable_then_deleted(http, collection):
    image = draw("black", "circle")
    if collection["read_only"]:  # a read-only server says so in one line; its folder's writer adds and deletes
        refused = http.post("/v1/items", json={"image": png_base64(image), "caption": "a black circle"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "index_read_only"
        assert http.delete("/v1/items/1").status_code == 403
        return
    added = http.post("/v1/items", json={"image": png_base64(image), "caption": "a black circle",
                                         "metadata": {"source": "test"}}).json()
    item = http.get(f"/v1/items/{added['id']}").json()
    assert item["caption"] == "a black circle" and item["extra"] == {"source": "test"}
    top = http.post("/v1/search", json={"image": png_base64(image), "k": 1}).json()["results"][0]
    assert top["id"] == added["id"]
    served = Image.open(io.BytesIO(http.get(item["image_url"]).content))
    assert np.array_equal(np.asarray(served.convert("RGB")), np.asarray(image))
    assert http.delete(f"/v1/items/{added['id']}").json() == {"deleted": added["id"]}
    missing = http.get(f"/v1/items/{added['id']}")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    ids = [r["id"] for r in http.post("/v1/search", json={"image": png_base64(image), "k": 20}).json()["results"]]
    assert added["id"] not in ids


def test_concurrent_text_queries_share_forward_passes(http, server):
    before = http.get("/v1/stats").json()["text_batches"]
    statuses = []

    def query(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            statuses.append(client.post("/v1/search", json={"text": f"query number {i}", "k": 3}).status_code)

    threads = [threading.Thread(target=query, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = http.get("/v1/stats").json()["text_batches"]
    assert statuses == [200] * 24
    assert after["requests"] - before["requests"] == 24
    assert after["batches"] - before["batches"] < 24  # some requests were encoded together


def test_openapi_documents_the_endpoints(http):
    assert http.get("/docs").status_code == 200
    paths = http.get("/openapi.json").json()["paths"]
    for path in ("/v1/search", "/v1/embed", "/v1/classify", "/v1/items", "/v1/items/{item_id}", "/knn-service"):
        assert path in paths


def load_clip_client():
    """clip-retrieval 2.45's own `ClipClient`, loaded from its module file: the package's __init__ imports its
    whole server stack (flask, torch models ...), the client module needs only `requests`."""
    spec = importlib.util.find_spec("clip_retrieval")
    if spec is None or importlib.util.find_spec("requests") is None:
        pytest.skip("clip-retrieval is not installed (pip install --no-deps clip-retrieval==2.45.0 requests)")
    path = Path(spec.submodule_search_locations[0]) / "clip_client.py"
    module_spec = importlib.util.spec_from_file_location("clip_retrieval_clip_client", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_clip_retrieval_client_works_unchanged(server, collection):
    clip_client = load_clip_client()
    client = clip_client.ClipClient(url=f"{server.url}/knn-service", indice_name="index", num_images=5,
                                    deduplicate=False, modality=clip_client.Modality.IMAGE)
    by_text = client.query(text="a yellow circle")
    assert len(by_text) == 5
    for result in by_text:
        assert {"id", "similarity", "caption", "url", "image_path", "image"} <= set(result)
        assert not Path(result["image_path"]).is_absolute()  # relative to the source, never a server path
        assert Image.open(io.BytesIO(base64.b64decode(result["image"]))).format == "JPEG"
    by_image = client.query(image=str(collection["root"] / "images" / "7.png"))
    assert by_image[0]["caption"] == collection["captions"][7]
    assert by_image[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    embedding = httpx.post(f"{server.url}/v1/embed", json={"texts": ["a yellow circle"]}).json()["text_embeddings"][0]
    by_embedding = client.query(embedding_input=embedding)
    assert [r["id"] for r in by_embedding] == [r["id"] for r in by_text]
    captions = clip_client.ClipClient(url=f"{server.url}/knn-service", indice_name="index", num_images=3,
                                      deduplicate=False, modality=clip_client.Modality.TEXT)
    assert captions.query(text="a blue circle")[0]["caption"] == "a blue circle"


def test_knn_service_answers_clip_clients_exact_request_bytes(http, collection):
    """The body `ClipClient.__search_knn_api__` sends: json.dumps of all its fields and no Content-Type."""
    image = base64.b64encode((collection["root"] / "images" / "3.png").read_bytes()).decode("utf-8")
    for text, image_b64 in (("a green square", None), (None, image)):
        body = {"text": text, "image": image_b64, "image_url": None, "embedding_input": None, "deduplicate": True,
                "use_safety_model": True, "use_violence_detector": True, "indice_name": "index",
                "use_mclip": False, "aesthetic_score": 9, "aesthetic_weight": 0.5, "modality": "image",
                "num_images": 4, "num_result_ids": 4}
        response = http.post("/knn-service", content=json.dumps(body))
        assert response.status_code == 200, response.text
        results = response.json()
        assert 1 <= len(results) <= 4 and all(isinstance(r["id"], int) for r in results)
        assert [r["similarity"] for r in results] == sorted((r["similarity"] for r in results), reverse=True)
    assert results[0]["caption"] == collection["captions"][3]


def test_clip_retrieval_metadata_and_indices_list(http):
    assert http.get("/indices-list").json() == ["index"]
    out = http.post("/metadata", content=json.dumps({"ids": [2, 1, 999], "indice_name": "index"})).json()
    assert [o["id"] for o in out] == [2, 1, 999]
    assert out[0]["metadata"]["caption"] == "a red square" and "image" in out[0]["metadata"]
    assert out[2]["metadata"] == {}
