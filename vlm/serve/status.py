"""/healthz and /readyz (no key: they say only up, ready or not) and /v1/stats (with the key: the details)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from vlm.models.cpu import cpu_class
from vlm.serve.deps import ServiceDep
from vlm.serve.errors import error_response
from vlm.serve.schemas import ERROR_RESPONSES


async def healthz() -> dict:
    return {"status": "ok"}


async def readyz(service: ServiceDep):
    if not service.ready:  # the reason (it may name files) is in the log
        return error_response(503, "not_ready", f"not ready: {service.not_ready_reason}")
    return {"status": "ready"}


async def stats(service: ServiceDep) -> dict:
    service.require_ready()
    info = await run_in_threadpool(service.index.info)  # a few stats: off the event loop all the same
    info.pop("directory")
    return {"index": info, "model": service.encoder.name, "precision": service.encoder.precision,
            "cpu_class": cpu_class(), "reranker": service.reranker is not None,
            "rerank_precision": service.reranker.precision if service.reranker else None,
            "text_batches": vars(service.text_batcher.stats),
            "image_batches": vars(service.image_batcher.stats)}


health_router = APIRouter(tags=["health"])
health_router.add_api_route("/healthz", healthz, methods=["GET"], summary="The process is up", operation_id="healthz")
health_router.add_api_route("/readyz", readyz, methods=["GET"], summary="The model and the index are loaded",
                            operation_id="readyz", responses={503: ERROR_RESPONSES[503]})

stats_router = APIRouter(prefix="/v1", tags=["v1"], responses=ERROR_RESPONSES)
stats_router.add_api_route("/stats", stats, methods=["GET"], summary="Index size and micro-batching counters",
                           operation_id="stats")
