"""Limits and safety over real HTTP: every bad request gets the right 4xx and a JSON error, and the server
keeps serving."""

from __future__ import annotations

import base64
import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from test_serve_api import draw, make_collection, png_base64

from vlm.serve.errors import ApiError
from vlm.serve.process import ServerProcess
from vlm.serve.service import ServeConfig, Service

KEY = "test-key-123"
MAX_BODY = 100_000
MAX_PIXELS = 256 * 256


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    collection = make_collection(tmp_path_factory.mktemp("limits"))
    process = ServerProcess(collection["checkpoint"], collection["index"], "--api-key", KEY,
                            "--max-body-bytes", str(MAX_BODY), "--max-image-pixels", str(MAX_PIXELS),
                            "--max-k", "50", "--max-batch", "4", log_path=collection["root"] / "server.log")
    with process:
        yield process


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {KEY}"}) as client:
        yield client


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert "Traceback" not in response.text


def assert_invalid(response: httpx.Response, field: str) -> None:
    """A value the OpenAPI schema refuses: 422 naming the field."""
    assert_error(response, 422, "invalid_request")
    assert response.json()["error"]["message"].startswith(f"{field}:"), response.text


def decompression_bomb() -> str:
    """A 10000 x 10000 PNG (10^8 pixels) that compresses to a few kilobytes."""
    buffer = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buffer, format="PNG", optimize=True)
    assert len(buffer.getvalue()) < MAX_BODY
    return base64.b64encode(buffer.getvalue()).decode()


def test_missing_or_wrong_key_is_401(server):
    body = {"text": "a red circle"}
    assert_error(httpx.post(f"{server.url}/v1/search", json=body), 401, "unauthorized")
    assert_error(httpx.post(f"{server.url}/v1/search", json=body, headers={"X-API-Key": "nope"}), 401, "unauthorized")
    assert_error(httpx.post(f"{server.url}/knn-service", json={**body, "modality": "image", "num_images": 2}),
                 401, "unauthorized")
    assert httpx.post(f"{server.url}/v1/search", json=body, headers={"X-API-Key": KEY}).status_code == 200


def test_health_checks_and_page_need_no_key(server):
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    assert "<html" in httpx.get(f"{server.url}/").text


def test_oversized_body_is_413(http):
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    big = png_base64(Image.fromarray(noise))
    assert len(big) > MAX_BODY
    assert_error(http.post("/v1/search", json={"image": big}), 413, "body_too_large")


def test_oversized_chunked_body_is_413(http):
    def chunks():
        yield b'{"text": "'
        for _ in range(20):
            yield b"x" * 10_000
        yield b'"}'

    response = http.post("/v1/search", content=chunks(), headers={"Content-Type": "application/json"})
    assert_error(response, 413, "body_too_large")


def test_decompression_bomb_is_refused_before_decoding(http):
    assert_error(http.post("/v1/search", json={"image": decompression_bomb()}), 413, "image_too_large")
    assert_error(http.post("/v1/items", json={"image": decompression_bomb(), "caption": "bomb"}), 413,
                 "image_too_large")


def test_bad_base64_and_non_images_are_400(http):
    assert_error(http.post("/v1/search", json={"image": "not base64 at all!"}), 400, "bad_base64")
    text_file = base64.b64encode(b"just some text, not an image").decode()
    assert_error(http.post("/v1/search", json={"image": text_file}), 400, "not_an_image")
    assert_error(http.post("/v1/embed", json={"images": [text_file]}), 400, "not_an_image")
    assert_error(http.post("/knn-service", json={"image": "%%%", "modality": "image", "num_images": 3,
                                                 "indice_name": "index"}), 400, "bad_base64")


def test_request_limits_and_bad_shapes(http):
    assert_invalid(http.post("/v1/search", json={"text": "x", "k": 51}), "k")
    assert_invalid(http.post("/v1/search", json={"text": "x", "k": 0}), "k")
    assert_error(http.post("/v1/search", json={"text": "x", "image": png_base64(draw("red", "circle"))}),
                 400, "bad_query")
    assert_invalid(http.post("/v1/search", json={"embedding": [1.0, 2.0]}), "embedding")
    assert_error(http.post("/v1/search", json={"embedding": [0.0] * 32}), 400, "bad_embedding")
    assert_invalid(http.post("/v1/search", json={"text": "x", "modality": "audio"}), "modality")
    assert_invalid(http.post("/v1/search", json={"txt": "a typo"}), "txt")
    assert_invalid(http.post("/v1/embed", json={"texts": ["a"] * 5}), "texts")
    assert_error(http.post("/v1/embed", json={"texts": ["a"] * 3, "images": [png_base64(draw("red", "circle"))] * 2}),
                 413, "batch_too_large")
    assert_error(http.post("/v1/classify", json={"image": png_base64(draw("red", "circle")), "labels": ["circle"],
                                                 "templates": ["no place for the label"]}), 400, "bad_template")
    assert_error(http.post("/v1/search", json={"text": "x", "rerank_k": 3}), 400, "no_reranker")
    assert_error(http.post("/v1/search", json={"k": "many"}), 422, "invalid_request")
    assert_error(http.post("/v1/search", content=b"{not json", headers={"Content-Type": "application/json"}),
                 422, "invalid_request")
    assert_error(http.get("/v1/items/999999"), 404, "not_found")
    assert_error(http.get("/no/such/path"), 404, "not_found")


def test_a_huge_rerank_k_is_refused_before_the_search(http):
    """rerank_k is checked before the search that would fetch max(k, rerank_k) candidates (gigabytes here)."""
    start = time.perf_counter()
    assert_invalid(http.post("/v1/search", json={"text": "x", "rerank_k": 10**9}), "rerank_k")
    assert time.perf_counter() - start < 5
    assert_error(http.post("/v1/search", json={"text": "x", "rerank_k": 3}), 400, "no_reranker")
    assert_error(http.post("/v1/search", json={"embedding": [1.0] * 32, "rerank_k": 3}), 400, "bad_query")
    assert len(http.post("/v1/search", json={"text": "a red circle", "k": 3}).json()["results"]) == 3


def test_rerank_k_is_checked_against_the_limit_when_there_is_a_reranker():
    service = Service(ServeConfig(checkpoint="unused", index="unused", max_rerank_k=200))
    try:
        service.reranker = object()  # only its presence is checked
        for bad in (0, 201, 10**9):
            with pytest.raises(ApiError) as raised:
                service.check_rerank_k(bad, text_query=True)
            assert (raised.value.status, raised.value.code) == (400, "bad_rerank_k")
        service.check_rerank_k(200, text_query=True)
        service.check_rerank_k(None, text_query=False)
    finally:
        service.close()


def test_unknown_index_name_is_404(http):
    body = {"text": "a red circle", "modality": "image", "num_images": 3, "indice_name": "laion5B"}
    assert_error(http.post("/knn-service", json=body), 404, "unknown_index")
    assert_error(http.post("/metadata", json={"ids": [1], "indice_name": "laion5B"}), 404, "unknown_index")


def test_image_url_fetching_is_off_by_default(http):
    body = {"image_url": "http://127.0.0.1:1/cat.jpg", "modality": "image", "num_images": 3, "indice_name": "index"}
    assert_error(http.post("/knn-service", json=body), 403, "image_url_disabled")


def test_server_keeps_serving_after_bad_requests(http):
    for _ in range(3):
        http.post("/v1/search", json={"image": decompression_bomb()})
        http.post("/v1/search", json={"image": "???"})
    assert http.get("/healthz").status_code == 200
    assert len(http.post("/v1/search", json={"text": "a red circle", "k": 3}).json()["results"]) == 3


def raw_post(http: httpx.Client, path: str, text: str) -> httpx.Response:
    """JSON the way a client could write it: lone surrogates and NaN are legal to Python's json module."""
    return http.post(path, content=text.encode(), headers={"Content-Type": "application/json"})


def test_values_no_store_or_answer_could_hold_are_refused_by_name(http):
    assert_invalid(raw_post(http, "/v1/search", '{"text": "\\ud800"}'), "text")
    image = png_base64(draw("red", "circle"))
    assert_invalid(raw_post(http, "/v1/items", f'{{"image": "{image}", "metadata": {{"x": NaN}}}}'), "metadata")
    assert_invalid(raw_post(http, "/v1/items", f'{{"image": "{image}", "caption": "\\udfff"}}'), "caption")
    assert_invalid(raw_post(http, "/v1/search", '{"embedding": [' + ", ".join(["Infinity"] * 32) + "]}"),
                   "embedding.0")
    nested = {"a": {}}
    for _ in range(40):
        nested = {"a": nested}
    assert_invalid(http.post("/v1/items", json={"image": image, "metadata": nested}), "metadata")
    assert raw_post(http, "/v1/search", "[" * 40_000 + "]" * 40_000).status_code in (400, 422)
    assert raw_post(http, "/knn-service", "[" * 40_000 + "]" * 40_000).status_code == 400


def test_an_elongated_image_is_refused_before_the_resize_would_blow_it_up(http):
    strip = png_base64(Image.new("RGB", (4000, 1), "red"))  # 4000 pixels; resized to the model's size: far more
    assert_error(http.post("/v1/search", json={"image": strip}), 413, "image_too_large")


def test_clip_retrieval_bodies_are_validated_by_name(http):
    base = {"modality": "image", "indice_name": "index"}
    assert_invalid(http.post("/knn-service", json={**base, "text": "x", "num_images": "many"}), "num_images")
    assert_invalid(http.post("/knn-service", json={**base, "text": "x", "num_images": 10**30}), "num_images")
    assert_invalid(http.post("/knn-service", json={**base, "embedding_input": ["a"] * 32}), "embedding_input.0")
    assert_invalid(http.post("/knn-service", json={**base, "text": "x", "modality": "audio"}), "modality")
    assert_invalid(http.post("/metadata", json={"ids": [2**63], "indice_name": "index"}), "ids.0")
    assert_invalid(http.post("/metadata", json={"ids": "1,2", "indice_name": "index"}), "ids")
    ok = http.post("/metadata", json={"ids": [-(2**63), 2**63 - 1], "indice_name": "index"})
    assert ok.status_code == 200 and [r["metadata"] for r in ok.json()] == [{}, {}]
