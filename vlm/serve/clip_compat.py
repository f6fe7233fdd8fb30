"""clip-retrieval's back-end protocol (clip_back.py of clip-retrieval 2.45), so its `ClipClient` works unchanged.

`ClipClient.query` posts a JSON body *without* a content type (`requests.post(url, data=json.dumps(...))`),
so the body is parsed here whatever the header says, as Flask's `get_json(force=True)` does. Its response is
read as a list of dicts with `id`, `similarity`, `caption`, `url`, and `image` (base64 JPEG) when the item has
an `image_path`. The safety, violence, aesthetic and mclip options need models we do not ship: they are
accepted and have no effect.
"""

import base64
import io
import json
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from vlm.index.folder import Hit
from vlm.index.store import Item
from vlm.serve.deps import ServiceDep
from vlm.serve.errors import ApiError
from vlm.serve.schemas import ERROR_RESPONSES, MAX_ID, ErrorBody, Finite, Text, base64_image
from vlm.serve.service import EncodedImage, Service

DEDUPLICATE_THRESHOLD = 0.94  # clip-retrieval drops results whose embeddings are this similar to a better one
ITEM_IMAGE_WAIT_S = 5.0  # a result's own image waits this long for the decoding budget, then the answer is 503


class ClipResult(BaseModel):
    id: int
    similarity: float
    caption: str | None
    url: str | None
    image_path: str | None
    image: str | None = Field(None, description="base64 JPEG, when the item's image file is on this server")


class ClipMetadata(BaseModel):
    caption: str | None = None
    url: str | None = None
    image_path: str | None = None
    image: str | None = None


class ClipMetadataResult(BaseModel):
    id: int
    metadata: ClipMetadata = Field(description="{} for an id this index does not have")


def clip_request_models(max_k: int, max_body_bytes: int, dim: int | None) -> tuple[type, type]:
    """clip-retrieval's request bodies (every field ClipClient sends), with this server's bounds."""
    embedding_type = list[Finite] if dim is None else Annotated[list[Finite], Field(min_length=dim, max_length=dim)]
    image_type = base64_image(max_body_bytes)
    count = Annotated[int, Field(ge=1, le=max_k)]

    class KnnRequest(BaseModel):
        """The first of text, image, image_url, embedding_input that is filled is the query."""

        model_config = ConfigDict(extra="allow")  # as clip-retrieval's Flask back-end: other fields are ignored
        text: Text | None = None
        image: image_type | None = None
        image_url: Annotated[str, Field(max_length=2048)] | None = Field(
            None, description="fetched only on a server started with --allow-image-urls")
        embedding_input: embedding_type | None = None
        modality: Literal["image", "text"] = "image"
        num_images: count | None = Field(None, description="results (default 40)")
        num_result_ids: count | None = Field(None, description="candidates searched (default num_images)")
        indice_name: Annotated[str, Field(max_length=1000)] | None = None
        deduplicate: bool | None = None
        use_safety_model: bool | None = Field(None, description="accepted, no effect")
        use_violence_detector: bool | None = Field(None, description="accepted, no effect")
        use_mclip: bool | None = Field(None, description="accepted, no effect")
        aesthetic_score: Annotated[int, Field(ge=0, le=9)] | None = Field(
            None, description="accepted, no effect (clip-retrieval's aesthetic ratings are 0..9)")
        aesthetic_weight: Finite | None = Field(None, description="accepted, no effect")

    class MetadataRequest(BaseModel):
        model_config = ConfigDict(extra="allow")
        ids: list[Annotated[int, Field(ge=-MAX_ID - 1, le=MAX_ID)]] = Field(default_factory=list, max_length=max_k)
        indice_name: Annotated[str, Field(max_length=1000)] | None = None

    return KnnRequest, MetadataRequest


def openapi_body(model: type[BaseModel]) -> dict:
    """Document a body the handler parses itself (ClipClient sends JSON without a Content-Type)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        raise ValueError(f"{model.__name__}: nested model {name} {sub} cannot be inlined")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def parse_body(model: type[BaseModel], body: dict) -> BaseModel:
    try:
        return model.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ApiError(422, "invalid_request", f"{where}: {first['msg']}" if where else first["msg"]) from None


async def read_json_body(request: Request) -> dict:
    """The body as a JSON object; any body json.loads refuses is a one-line 400, never a 500."""
    try:
        body = json.loads(await request.body() or b"null")
    except json.JSONDecodeError as e:
        raise ApiError(400, "bad_json", f"request body is not JSON ({e})") from None
    except UnicodeDecodeError:
        raise ApiError(400, "bad_json", "request body is not JSON (not UTF-8 text)") from None
    except RecursionError:
        raise ApiError(400, "bad_json", "request body is not JSON we accept (nested too deeply)") from None
    except ValueError:  # Python refuses integers of over 4300 digits (sys.get_int_max_str_digits)
        raise ApiError(400, "bad_json", "request body is not JSON we accept (an integer has too many digits)") from None
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
        with service.decoded(EncodedImage(service, path.read_bytes(), str(item.id)), ITEM_IMAGE_WAIT_S) as image:
            image.save(buffer, format="JPEG")
    except ApiError as e:
        if e.code == "busy":
            raise
        return None  # unreadable
    except OSError:  # deleted since the search
        return None
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def metadata(service: Service, item: Item) -> dict:
    meta = {"caption": item.caption, "url": item.extra.get("url"), "image_path": service.index.public_path(item)}
    image = image_base64(service, item)
    if image is not None:
        meta["image"] = image
    return meta


def deduplicate(service: Service, hits: list[Hit], modality: str) -> list[Hit]:
    stored = {it.id: getattr(it, f"{modality}_vec") for it in service.index.get_many(
        [h.item.id for h in hits], vectors=True)}
    hits = [h for h in hits if stored.get(h.item.id) is not None]  # deleted since the search
    if len(hits) < 2:
        return hits
    vectors = np.stack([stored[h.item.id] for h in hits])
    similar = vectors @ vectors.T
    keep = [i for i in range(len(hits)) if not (similar[i, :i] > DEDUPLICATE_THRESHOLD).any()]
    return [hits[i] for i in keep]


async def indices_list(service: ServiceDep) -> list[str]:
    return [service.config.name]


def check_index(service: Service, name: str | None) -> None:
    if name is not None and name != service.config.name:
        raise ApiError(404, "unknown_index", f"no index named {name!r}; this server has {[service.config.name]}")


async def knn_service(request: Request, service: ServiceDep) -> list[dict]:
    service.require_ready()
    body = parse_body(request.app.state.clip_models[0], await read_json_body(request))
    check_index(service, body.indice_name)
    num_images = body.num_images or 40
    num_result_ids = body.num_result_ids or num_images
    service.check_k(num_images, "num_images")
    service.check_k(num_result_ids, "num_result_ids")
    vector = await query_vector(service, body)
    hits = await service.search(vector, max(num_result_ids, num_images), body.modality)
    if body.deduplicate:
        hits = await run_in_threadpool(deduplicate, service, hits, body.modality)

    def results() -> list[dict]:
        return [{**metadata(service, h.item), "id": h.item.id, "similarity": h.score} for h in hits[:num_images]]

    return await run_in_threadpool(results)


async def metadata_service(request: Request, service: ServiceDep) -> list[dict]:
    service.require_ready()
    body = parse_body(request.app.state.clip_models[1], await read_json_body(request))
    check_index(service, body.indice_name)
    ids = body.ids

    def lookup() -> list[dict]:
        items = {it.id: it for it in service.index.get_many(ids)}
        return [{"id": i, "metadata": metadata(service, items[i]) if i in items else {}} for i in ids]

    return await run_in_threadpool(lookup)


def clip_router(models: tuple[type[BaseModel], type[BaseModel]]) -> APIRouter:
    """`models`: this server's (KnnRequest, MetadataRequest), documented here and parsed by the handlers
    (from `app.state.clip_models`), since ClipClient sends JSON without a Content-Type."""
    knn, meta = models
    router = APIRouter(tags=["clip-retrieval"], responses=ERROR_RESPONSES)
    router.add_api_route("/indices-list", indices_list, methods=["GET"],
                         summary="clip-retrieval: names of the indexes served", operation_id="indices_list")
    router.add_api_route("/knn-service", knn_service, methods=["POST"],
                         summary="clip-retrieval: nearest neighbours of a text, image or embedding",
                         operation_id="knn_service", response_model=None, openapi_extra=openapi_body(knn),
                         responses={200: {"model": list[ClipResult]}, 403: {
                             "model": ErrorBody, "description": "image_url fetching is off on this server"}})
    router.add_api_route("/metadata", metadata_service, methods=["POST"], summary="clip-retrieval: metadata of ids",
                         operation_id="clip_metadata", response_model=None, openapi_extra=openapi_body(meta),
                         responses={200: {"model": list[ClipMetadataResult]}})
    return router


async def query_vector(service: Service, body) -> np.ndarray:
    """clip-retrieval's precedence: text, then image, then image_url, then embedding_input."""
    if body.text:
        return (await service.embed_texts([body.text]))[0]
    if body.image:
        return (await service.embed_images([service.decode_base64_image(body.image)]))[0]
    if body.image_url:
        image = await run_in_threadpool(service.fetch_image_url, body.image_url)
        return (await service.embed_images([image]))[0]
    if body.embedding_input is not None:
        return service.query_vector(body.embedding_input)
    raise ApiError(400, "bad_query", "must fill one of text, image, image_url and embedding_input")
