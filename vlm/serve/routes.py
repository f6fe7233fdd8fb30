"""The JSON API under /v1, plus /healthz and /readyz."""

# No `from __future__ import annotations`: the body models are made per server, and FastAPI must see them.
import contextlib
import uuid
from typing import Annotated

import numpy as np
from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from vlm.atomic_io import atomic_write
from vlm.eval.zeroshot import class_prompts
from vlm.index.folder import Hit, ItemIndex
from vlm.index.store import Item
from vlm.serve.errors import ApiError, error_response
from vlm.serve.schemas import (
    ERROR_RESPONSES,
    MAX_ID,
    ClassifyOut,
    DeletedOut,
    EmbedOut,
    ItemOut,
    SearchOut,
    index_dim,
    request_models,
)
from vlm.serve.service import Service, raise_storage_error

ItemIdPath = Annotated[int, PathParam(ge=1, le=MAX_ID, description="an id POST /v1/items returned")]
# A stateful fuzzer (and a reader) follows these from POST /v1/items to the item it created.
ITEM_LINKS = {name: {"operationId": op, "parameters": {"item_id": "$response.body#/id"}}
              for name, op in (("GetItem", "get_item"), ("GetItemImage", "get_item_image"),
                               ("DeleteItem", "delete_item"))}

DEFAULT_TEMPLATES = ("a photo of a {}.", "{}")


def item_view(item: Item, index: ItemIndex) -> dict:
    """An item as clients see it: its path relative to the index or its source, never a path on this server."""
    return {**item.public(), "path": index.public_path(item), "image_url": f"/v1/items/{item.id}/image"}


def hit_view(hit: Hit, index: ItemIndex) -> dict:
    return {**item_view(hit.item, index), "score": hit.score}


def build_router(service: Service) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["v1"], responses=ERROR_RESPONSES)
    config = service.config
    models = request_models(config.max_k, config.max_rerank_k, config.max_batch, config.max_body_bytes,
                            index_dim(config.index))
    SearchRequest, EmbedRequest, ClassifyRequest, AddItemRequest = (  # noqa: N806 (classes)
        models.search, models.embed, models.classify, models.add_item)

    @router.post("/search", summary="Ranked items for a text, an image or an embedding", operation_id="search",
                 response_model=None, responses={200: {"model": SearchOut}})
    async def search(body: SearchRequest) -> dict:
        service.require_ready()
        given = [name for name in ("text", "image", "embedding") if getattr(body, name) is not None]
        if len(given) != 1:
            raise ApiError(400, "bad_query", f"give exactly one of text, image, embedding (got {given or 'none'})")
        service.check_k(body.k)
        service.check_rerank_k(body.rerank_k, text_query=body.text is not None)
        if body.text is not None:
            vector = (await service.embed_texts([body.text]))[0]
        elif body.image is not None:
            vector = (await service.embed_images([service.decode_base64_image(body.image)]))[0]
        else:
            vector = service.query_vector(body.embedding)
        hits = await service.search(vector, max(body.k, body.rerank_k or 0), body.modality)
        results = [hit_view(h, service.index) for h in hits]
        if body.rerank_k is not None:
            hits, rerank_scores = await service.rerank(body.text, hits, body.rerank_k)
            results = [hit_view(h, service.index) for h in hits]
            for result, score in zip(results, rerank_scores, strict=False):
                result["rerank_score"] = score
        return {"results": results[: body.k], "reranked": body.rerank_k is not None}

    @router.post("/embed", summary="L2-normalised embeddings of a batch of texts and/or images", operation_id="embed",
                 response_model=None, responses={200: {"model": EmbedOut}})
    async def embed(body: EmbedRequest) -> dict:
        service.require_ready()
        if not body.texts and not body.images:
            raise ApiError(400, "bad_request", "give texts and/or images")
        if len(body.texts) + len(body.images) > config.max_batch:
            raise ApiError(413, "batch_too_large", f"at most {config.max_batch} inputs per request")
        out: dict = {"dim": service.encoder.dim, "model": service.encoder.name}
        if body.texts:
            out["text_embeddings"] = (await service.embed_texts(body.texts)).tolist()
        if body.images:
            images = [service.decode_base64_image(im, f"images[{i}]") for i, im in enumerate(body.images)]
            out["image_embeddings"] = (await service.embed_images(images)).tolist()
        return out

    @router.post("/classify", summary="Zero-shot label probabilities for an image", operation_id="classify",
                 response_model=None, responses={200: {"model": ClassifyOut}})
    async def classify(body: ClassifyRequest) -> dict:
        service.require_ready()
        templates = list(body.templates or DEFAULT_TEMPLATES)
        try:
            class_prompts(body.labels, templates)  # the prompts zero_shot_classifier builds; checks the templates
        except ValueError as e:
            raise ApiError(400, "bad_template", f"templates: {e}") from None
        if len(body.labels) * len(templates) > config.max_k:
            raise ApiError(413, "too_many_labels", f"labels x templates must be at most {config.max_k}")
        image = (await service.embed_images([service.decode_base64_image(body.image)]))[0]
        classifier = await service.zero_shot_classifier(body.labels, templates)
        logits = service.encoder.logit_scale * classifier @ image
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        ranked = sorted(zip(body.labels, probs.tolist(), strict=True), key=lambda p: -p[1])
        return {"labels": [{"label": label, "probability": p} for label, p in ranked]}

    @router.post("/items", summary="Add an image with a caption and metadata; on disk before the answer",
                 operation_id="add_item", response_model=None,
                 responses={200: {"model": ItemOut, "description": "the new item", "links": ITEM_LINKS}})
    async def add_item(body: AddItemRequest) -> dict:
        service.require_ready()
        refuse_read_only(service)
        image = service.decode_base64_image(body.image)
        image_vec = (await service.embed_images([image]))[0]
        text_vec = (await service.embed_texts([body.caption]))[0] if body.caption else None
        item = Item(path=f"images/{uuid.uuid4().hex}.png", caption=body.caption, extra=body.metadata,
                    image_vec=image_vec, text_vec=text_vec)
        await run_in_threadpool(persist, service, item, image)
        return item_view(item, service.index)  # not read back: a concurrent delete may already have removed it

    @router.get("/items/{item_id}", summary="One item's metadata", operation_id="get_item",
                response_model=None, responses={200: {"model": ItemOut}})
    async def get_item(item_id: ItemIdPath) -> dict:
        return item_view(_item(service, item_id), service.index)

    @router.get("/items/{item_id}/image", summary="One item's image file", operation_id="get_item_image",
                response_class=FileResponse, responses={200: {"content": {"image/*": {}}, "description": "the file"}})
    async def get_item_image(item_id: ItemIdPath):
        path = service.index.resolve_path(_item(service, item_id))
        if path is None or not path.is_file():
            raise ApiError(404, "no_image", f"item {item_id} has no image file on this server")
        return FileResponse(path)

    @router.delete("/items/{item_id}", summary="Delete an item", operation_id="delete_item",
                   response_model=None, responses={200: {"model": DeletedOut}})
    async def delete_item(item_id: ItemIdPath) -> dict:
        service.require_ready()
        refuse_read_only(service)
        try:
            deleted = await run_in_threadpool(service.index.delete, item_id)
        except Exception as e:
            raise_storage_error(e, service.index.directory)
            raise
        if not deleted:
            raise ApiError(404, "not_found", f"no item with id {item_id}")
        return {"deleted": item_id}

    @router.get("/stats", summary="Index size and micro-batching counters", operation_id="stats")
    async def stats() -> dict:
        service.require_ready()
        info = await run_in_threadpool(service.index.info)  # a few stats: off the event loop all the same
        info.pop("directory")
        return {"index": info, "model": service.encoder.name, "precision": service.encoder.precision,
                "reranker": service.reranker is not None, "text_batches": vars(service.text_batcher.stats),
                "image_batches": vars(service.image_batcher.stats)}

    return router


def persist(service: Service, item: Item, image) -> int:
    """Write the image (fsynced), then commit the row; on a storage failure nothing half-written stays."""
    path = service.index.directory / item.path
    try:
        with atomic_write(path) as f:
            image.save(f, format="PNG")
        return service.index.add([item])[0]
    except Exception as e:
        if item.id is None:  # not committed: no row refers to the file
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        raise_storage_error(e, service.index.directory)
        raise


def refuse_read_only(service: Service) -> None:
    """Before any work: 507 when the disk was full at start-up, 403 for a folder opened read-only."""
    index = service.index
    if index.read_only:
        if index.full:
            raise ApiError(507, "storage_full", "the index's disk was full when this server started: it serves "
                           "searches read-only until restarted with space; nothing was changed")
        raise ApiError(403, "index_read_only", "this server serves its index read-only: searches work, adds and "
                       "deletes do not; nothing was changed")


def _item(service: Service, item_id: int) -> Item:
    service.require_ready()
    item = service.index.get(item_id)
    if item is None:
        raise ApiError(404, "not_found", f"no item with id {item_id}")
    return item


def build_health_router(service: Service) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="The process is up", operation_id="healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @router.get("/readyz", summary="The model and the index are loaded", operation_id="readyz",
                responses={503: ERROR_RESPONSES[503]})
    async def readyz():
        if not service.ready:  # the reason (it may name files) is in the log and, with the key, in /v1/stats
            return error_response(503, "not_ready", f"not ready: {service.not_ready_reason}")
        return {"status": "ready"}

    return router
