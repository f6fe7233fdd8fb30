"""POST /v1/embed and /v1/classify: the model's embeddings and zero-shot labels, with no index involved."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter

from vlm.eval.zeroshot import class_prompts
from vlm.serve.deps import ServiceDep, with_body
from vlm.serve.errors import ApiError
from vlm.serve.schemas import ERROR_RESPONSES, ClassifyOut, EmbedOut, RequestModels

DEFAULT_TEMPLATES = ("a photo of a {}.", "{}")


async def embed(body: Any, service: ServiceDep) -> dict:
    service.require_ready()
    if not body.texts and not body.images:
        raise ApiError(400, "bad_request", "give texts and/or images")
    max_batch = service.config.max_batch
    if len(body.texts) + len(body.images) > max_batch:
        raise ApiError(413, "batch_too_large", f"at most {max_batch} inputs per request")
    out: dict = {"dim": service.encoder.dim, "model": service.encoder.name}
    if body.texts:
        out["text_embeddings"] = (await service.embed_texts(body.texts)).tolist()
    if body.images:
        images = [service.decode_base64_image(im, f"images[{i}]") for i, im in enumerate(body.images)]
        out["image_embeddings"] = (await service.embed_images(images)).tolist()
    return out


async def classify(body: Any, service: ServiceDep) -> dict:
    service.require_ready()
    templates = list(body.templates or DEFAULT_TEMPLATES)
    try:
        class_prompts(body.labels, templates)  # the prompts zero_shot_classifier builds; checks the templates
    except ValueError as e:
        raise ApiError(400, "bad_template", f"templates: {e}") from None
    if len(body.labels) * len(templates) > service.config.max_k:
        raise ApiError(413, "too_many_labels", f"labels x templates must be at most {service.config.max_k}")
    image = (await service.embed_images([service.decode_base64_image(body.image)]))[0]
    classifier = await service.zero_shot_classifier(body.labels, templates)
    logits = service.encoder.logit_scale * classifier @ image
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    ranked = sorted(zip(body.labels, probs.tolist(), strict=True), key=lambda p: -p[1])
    return {"labels": [{"label": label, "probability": p} for label, p in ranked]}


def embed_router(models: RequestModels) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["v1"], responses=ERROR_RESPONSES)
    router.add_api_route("/embed", with_body(embed, models.embed), methods=["POST"],
                         summary="L2-normalised embeddings of a batch of texts and/or images", operation_id="embed",
                         response_model=None, responses={200: {"model": EmbedOut}})
    router.add_api_route("/classify", with_body(classify, models.classify), methods=["POST"],
                         summary="Zero-shot label probabilities for an image", operation_id="classify",
                         response_model=None, responses={200: {"model": ClassifyOut}})
    return router
