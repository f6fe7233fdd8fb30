"""clip-retrieval's back-end protocol (clip_back.py of clip-retrieval 2.45), so its `ClipClient` works unchanged.

`ClipClient.query` posts a JSON body *without* a content type (`requests.post(url, data=json.dumps(...))`),
so the body is parsed here whatever the header says, as Flask's `get_json(force=True)` does. Its response is
read as a list of dicts with `id`, `similarity`, `caption`, `url`, and `image` (base64 JPEG) when the item has
an `image_path`. The safety, violence, aesthetic and mclip options need models we do not ship: they are
accepted and have no effect.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from vlm.serve.errors import ApiError
from vlm.serve.index import Hit
from vlm.serve.service import Service
from vlm.serve.store import Item

DEDUPLICATE_THRESHOLD = 0.94  # clip-retrieval drops results whose embeddings are this similar to a better one


async def read_json_body(request: Request) -> dict:
    try:
        body = json.loads(await request.body() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, "bad_json", f"request body is not JSON ({e})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "request body must be a JSON object")
    return body


def image_base64(service: Service, item: Item) -> str | None:
    """The item's image as base64 JPEG, as clip-retrieval's `convert_metadata_to_base64` sends it."""
    path = service.index.resolve_path(item)
    if path is None or not path.is_file():
        return None
    buffer = io.BytesIO()
    try:
        service.decode_image(path.read_bytes(), str(item.id)).save(buffer, format="JPEG")
    except ApiError:
        return None
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def metadata(service: Service, item: Item) -> dict:
    meta = {"caption": item.caption, "url": item.extra.get("url"), "image_path": item.path}
    image = image_base64(service, item)
    if image is not None:
        meta["image"] = image
    return meta


def deduplicate(service: Service, hits: list[Hit], modality: str) -> list[Hit]:
    if len(hits) < 2:
        return hits
    vectors = np.stack([getattr(it, f"{modality}_vec") for it in service.index.store.get_many(
        [h.item.id for h in hits], vectors=True)])
    similar = vectors @ vectors.T
    keep = [i for i in range(len(hits)) if not (similar[i, :i] > DEDUPLICATE_THRESHOLD).any()]
    return [hits[i] for i in keep]


def build_clip_router(service: Service) -> APIRouter:
    router = APIRouter(tags=["clip-retrieval"])

    @router.get("/indices-list", summary="clip-retrieval: names of the indexes served")
    async def indices_list() -> list[str]:
        return [service.config.name]

    def check_index(body: dict) -> None:
        name = body.get("indice_name")
        if name is not None and name != service.config.name:
            raise ApiError(404, "unknown_index", f"no index named {name!r}; this server has {[service.config.name]}")

    @router.post("/knn-service", summary="clip-retrieval: nearest neighbours of a text, image or embedding")
    async def knn_service(request: Request) -> list[dict]:
        service.require_ready()
        body = await read_json_body(request)
        check_index(body)
        modality = body.get("modality", "image")
        if modality not in ("image", "text"):
            raise ApiError(400, "bad_modality", f"modality must be 'image' or 'text', got {modality!r}")
        num_images = int(body.get("num_images") or 40)
        num_result_ids = int(body.get("num_result_ids") or num_images)
        service.check_k(num_images, "num_images")
        service.check_k(num_result_ids, "num_result_ids")
        vector = await query_vector(service, body)
        hits = await service.search(vector, max(num_result_ids, num_images), modality)
        if body.get("deduplicate"):
            hits = await run_in_threadpool(deduplicate, service, hits, modality)

        def results() -> list[dict]:
            return [{**metadata(service, h.item), "id": h.item.id, "similarity": h.score} for h in hits[:num_images]]

        return await run_in_threadpool(results)

    @router.post("/metadata", summary="clip-retrieval: metadata of ids")
    async def metadata_service(request: Request) -> list[dict]:
        service.require_ready()
        body = await read_json_body(request)
        check_index(body)
        ids = body.get("ids") or []
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise ApiError(400, "bad_ids", "ids must be a list of integers")
        if len(ids) > service.config.max_k:
            raise ApiError(413, "too_many_ids", f"at most {service.config.max_k} ids per request")

        def lookup() -> list[dict]:
            items = {it.id: it for it in service.index.get_many(ids)}
            return [{"id": i, "metadata": metadata(service, items[i]) if i in items else {}} for i in ids]

        return await run_in_threadpool(lookup)

    return router


async def query_vector(service: Service, body: dict) -> np.ndarray:
    """clip-retrieval's precedence: text, then image, then image_url, then embedding_input."""
    if body.get("text"):
        return (await service.embed_texts([str(body["text"])]))[0]
    if body.get("image"):
        return (await service.embed_images([service.decode_base64_image(str(body["image"]))]))[0]
    if body.get("image_url"):
        image = await run_in_threadpool(service.fetch_image_url, str(body["image_url"]))
        return (await service.embed_images([image]))[0]
    if body.get("embedding_input") is not None:
        return service.query_vector(body["embedding_input"])
    raise ApiError(400, "bad_query", "must fill one of text, image, image_url and embedding_input")
