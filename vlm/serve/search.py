"""POST /v1/search: ranked items for a text, an image or an embedding, optionally re-ranked by early fusion."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from vlm.serve.deps import ServiceDep, with_body
from vlm.serve.errors import ApiError
from vlm.serve.items import hit_view
from vlm.serve.schemas import ERROR_RESPONSES, RequestModels, SearchOut


async def search(body: Any, service: ServiceDep) -> dict:
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


def search_router(models: RequestModels) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["v1"], responses=ERROR_RESPONSES)
    router.add_api_route("/search", with_body(search, models.search), methods=["POST"],
                         summary="Ranked items for a text, an image or an embedding", operation_id="search",
                         response_model=None, responses={200: {"model": SearchOut}})
    return router
