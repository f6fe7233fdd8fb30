"""/v1/items: add an image with its caption (committed before the answer), read one back, delete one.

An added image is stored as the client sent it, byte for byte (EXIF, bit depth and compression kept), named by
the format its bytes are in; GET .../image serves the file as stored, with the media type its bytes say.
`?preview=1` asks for what a browser can draw: the file itself when browsers show its format, else a PNG
rendering at most PREVIEW_SIZE pixels a side (TIFF, say).
"""

from __future__ import annotations

import contextlib
import io
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from data_pipelines.image_bytes import ImageFormat, sniff_format
from vlm.atomic_io import atomic_write
from vlm.index.folder import Hit, ItemIndex
from vlm.index.store import Item
from vlm.serve.deps import ServiceDep, with_body
from vlm.serve.errors import ApiError
from vlm.serve.schemas import ERROR_RESPONSES, MAX_ID, DeletedOut, ItemOut, RequestModels
from vlm.serve.service import EncodedImage, Service, raise_storage_error

ItemIdPath = Annotated[int, PathParam(ge=1, le=MAX_ID, description="an id POST /v1/items returned")]
PREVIEW_SIZE = 1024
PreviewQuery = Annotated[bool, Query(description="true: an image a browser can draw (a PNG rendering, at most "
                                     f"{PREVIEW_SIZE} px a side, of a format browsers do not show, such as TIFF)")]
PREVIEW_WAIT_S = 5.0  # a preview waits this long for the decoding budget, then the answer is 503
# A stateful fuzzer (and a reader) follows these from POST /v1/items to the item it created.
ITEM_LINKS = {name: {"operationId": op, "parameters": {"item_id": "$response.body#/id"}}
              for name, op in (("GetItem", "get_item"), ("GetItemImage", "get_item_image"),
                               ("DeleteItem", "delete_item"))}


def item_view(item: Item, index: ItemIndex) -> dict:
    """An item as clients see it: its path relative to the index or its source, never a path on this server."""
    return {**item.public(), "path": index.public_path(item), "image_url": f"/v1/items/{item.id}/image"}


def hit_view(hit: Hit, index: ItemIndex) -> dict:
    return {**item_view(hit.item, index), "score": hit.score}


async def add_item(body: Any, service: ServiceDep) -> dict:
    service.require_ready()
    refuse_read_only(service)
    image = service.decode_base64_image(body.image)
    image_vec = (await service.embed_images([image]))[0]  # decodes it: what is stored below is an image
    text_vec = (await service.embed_texts([body.caption]))[0] if body.caption else None
    extension = sniff_format(image.data).extension
    item = Item(path=f"images/{uuid.uuid4().hex}.{extension}", caption=body.caption, extra=body.metadata,
                image_vec=image_vec, text_vec=text_vec)
    await run_in_threadpool(persist, service, item, image.data)
    return item_view(item, service.index)  # not read back: a concurrent delete may already have removed it


async def get_item(item_id: ItemIdPath, service: ServiceDep) -> dict:
    return item_view(find_item(service, item_id), service.index)


async def get_item_image(item_id: ItemIdPath, service: ServiceDep, preview: PreviewQuery = False):
    path = service.index.resolve_path(find_item(service, item_id))
    if path is None or not path.is_file():
        raise ApiError(404, "no_image", f"item {item_id} has no image file on this server")
    stored = await run_in_threadpool(stored_format, path)
    if preview and stored is not None and not stored.browser_shows:
        return Response(await run_in_threadpool(preview_png, service, path, item_id), media_type="image/png")
    return FileResponse(path, media_type=stored.media_type if stored is not None else None)


def stored_format(path: Path) -> ImageFormat | None:
    """The format of a stored image by its bytes (a source file's name may say otherwise); None: unrecognised."""
    try:
        return sniff_format(path)
    except (ValueError, OSError):
        return None


def preview_png(service: Service, path: Path, item_id: int) -> bytes:
    """A PNG of the image, decoded within the pixel budget as any input is, shrunk to PREVIEW_SIZE a side."""
    with service.decoded(EncodedImage(service, path.read_bytes(), f"item {item_id}"), PREVIEW_WAIT_S) as image:
        image.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    return buffer.getvalue()


async def delete_item(item_id: ItemIdPath, service: ServiceDep) -> dict:
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


def persist(service: Service, item: Item, data: bytes) -> int:
    """Write the image's original bytes (fsynced), then commit the row; on a storage failure nothing
    half-written stays."""
    path = service.index.directory / item.path
    try:
        with atomic_write(path) as f:
            f.write(data)
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


def find_item(service: Service, item_id: int) -> Item:
    service.require_ready()
    item = service.index.get(item_id)
    if item is None:
        raise ApiError(404, "not_found", f"no item with id {item_id}")
    return item


def items_router(models: RequestModels) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["v1"], responses=ERROR_RESPONSES)
    router.add_api_route("/items", with_body(add_item, models.add_item), methods=["POST"],
                         summary="Add an image with a caption and metadata; on disk before the answer",
                         operation_id="add_item", response_model=None,
                         responses={200: {"model": ItemOut, "description": "the new item", "links": ITEM_LINKS}})
    router.add_api_route("/items/{item_id}", get_item, methods=["GET"], summary="One item's metadata",
                         operation_id="get_item", response_model=None, responses={200: {"model": ItemOut}})
    router.add_api_route("/items/{item_id}/image", get_item_image, methods=["GET"], summary="One item's image file",
                         operation_id="get_item_image", response_class=FileResponse,
                         responses={200: {"content": {"image/*": {}}, "description": "the file as stored, or "
                                          "with preview=true an image a browser can draw"}})
    router.add_api_route("/items/{item_id}", delete_item, methods=["DELETE"], summary="Delete an item",
                         operation_id="delete_item", response_model=None, responses={200: {"model": DeletedOut}})
    return router
