"""The JSON API under /v1, plus /healthz and /readyz."""

from __future__ import annotations

import uuid
from typing import Literal

import numpy as np
from fastapi import APIRouter
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from vlm.atomic_io import atomic_write
from vlm.eval.zeroshot import class_prompts
from vlm.serve.errors import ApiError, error_response
from vlm.serve.index import Hit
from vlm.serve.service import Service
from vlm.serve.store import Item

DEFAULT_TEMPLATES = ("a photo of a {}.", "{}")


class SearchRequest(BaseModel):
    text: str | None = Field(None, description="search by a caption")
    image: str | None = Field(None, description="search by an image, base64 (a data: URL is accepted)")
    embedding: list[float] | None = Field(None, description="search by a vector of the model's dimension")
    k: int = Field(10, description="number of results (at most the server's max_k)")
    modality: Literal["image", "text"] = Field("image", description="search image vectors or caption vectors")
    rerank_k: int | None = Field(None, description="re-score the top rerank_k with the early-fusion model")


class EmbedRequest(BaseModel):
    texts: list[str] = Field(default_factory=list)
    images: list[str] = Field(default_factory=list, description="base64 images")


class ClassifyRequest(BaseModel):
    image: str = Field(description="base64 image")
    labels: list[str] = Field(min_length=1)
    templates: list[str] | None = Field(None, description="prompt templates with '{}' for the label")


class AddItemRequest(BaseModel):
    image: str = Field(description="base64 image")
    caption: str | None = None
    metadata: dict = Field(default_factory=dict)


def item_view(item: Item) -> dict:
    return {**item.public(), "image_url": f"/v1/items/{item.id}/image"}


def hit_view(hit: Hit) -> dict:
    return {**item_view(hit.item), "score": hit.score}


def build_router(service: Service) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["v1"])
    config = service.config

    @router.post("/search", summary="Ranked items for a text, an image or an embedding")
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
        results = [hit_view(h) for h in hits]
        if body.rerank_k is not None:
            hits, rerank_scores = await service.rerank(body.text, hits, body.rerank_k)
            results = [hit_view(h) for h in hits]
            for result, score in zip(results, rerank_scores, strict=False):
                result["rerank_score"] = score
        return {"results": results[: body.k], "reranked": body.rerank_k is not None}

    @router.post("/embed", summary="L2-normalised embeddings of a batch of texts and/or images")
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

    @router.post("/classify", summary="Zero-shot label probabilities for an image")
    async def classify(body: ClassifyRequest) -> dict:
        service.require_ready()
        templates = list(body.templates or DEFAULT_TEMPLATES)
        try:
            class_prompts(body.labels, templates)  # the prompts zero_shot_classifier builds; checks the templates
        except ValueError as e:
            raise ApiError(400, "bad_template", str(e)) from None
        if len(body.labels) * len(templates) > config.max_k:
            raise ApiError(413, "too_many_labels", f"labels x templates must be at most {config.max_k}")
        image = (await service.embed_images([service.decode_base64_image(body.image)]))[0]
        classifier = await service.zero_shot_classifier(body.labels, templates)
        logits = service.encoder.logit_scale * classifier @ image
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        ranked = sorted(zip(body.labels, probs.tolist(), strict=True), key=lambda p: -p[1])
        return {"labels": [{"label": label, "probability": p} for label, p in ranked]}

    @router.post("/items", summary="Add an image with a caption and metadata; on disk before the answer")
    async def add_item(body: AddItemRequest) -> dict:
        service.require_ready()
        image = service.decode_base64_image(body.image)
        image_vec = (await service.embed_images([image]))[0]
        text_vec = (await service.embed_texts([body.caption]))[0] if body.caption else None
        relative = f"images/{uuid.uuid4().hex}.png"

        def persist() -> int:
            with atomic_write(service.index.directory / relative) as f:  # fsynced before the row commits
                image.save(f, format="PNG")
            item = Item(path=relative, caption=body.caption, extra=body.metadata,
                        image_vec=image_vec, text_vec=text_vec)
            return service.index.add([item])[0]

        item_id = await run_in_threadpool(persist)
        return item_view(service.index.get(item_id))

    @router.get("/items/{item_id}", summary="One item's metadata")
    async def get_item(item_id: int) -> dict:
        return item_view(_item(service, item_id))

    @router.get("/items/{item_id}/image", summary="One item's image file", response_class=FileResponse)
    async def get_item_image(item_id: int):
        path = service.index.resolve_path(_item(service, item_id))
        if path is None or not path.is_file():
            raise ApiError(404, "no_image", f"item {item_id} has no image file on this server")
        return FileResponse(path)

    @router.delete("/items/{item_id}", summary="Delete an item")
    async def delete_item(item_id: int) -> dict:
        service.require_ready()
        if not await run_in_threadpool(service.index.delete, item_id):
            raise ApiError(404, "not_found", f"no item with id {item_id}")
        return {"deleted": item_id}

    @router.get("/stats", summary="Index size and micro-batching counters")
    async def stats() -> dict:
        service.require_ready()
        return {"index": service.index.info(), "text_batches": vars(service.text_batcher.stats),
                "image_batches": vars(service.image_batcher.stats)}

    return router


def _item(service: Service, item_id: int) -> Item:
    service.require_ready()
    item = service.index.get(item_id)
    if item is None:
        raise ApiError(404, "not_found", f"no item with id {item_id}")
    return item


def build_health_router(service: Service) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="The process is up")
    async def healthz() -> dict:
        return {"status": "ok"}

    @router.get("/readyz", summary="The model and the index are loaded")
    async def readyz():
        if not service.ready:
            return error_response(503, "not_ready", service.not_ready_reason)
        return {"status": "ready", "items": len(service.index), "model": service.encoder.name,
                "index": service.config.name, "reranker": service.reranker is not None}

    return router
