"""What the HTTP layer calls: load the models and the index, decode inputs within limits, embed, search.

The models run on one worker thread (`ThreadPoolExecutor(1)`) fed by micro-batchers, so concurrent requests
share forward passes instead of fighting over the CPU. Searches run on their own executor (4 threads); with the
faiss backend they still run one at a time, serialised on the backend's lock. Image decoding and preprocessing and
adding or deleting items run in Starlette's pool, never on the event loop; the pixels being decoded at once,
over all requests, are bounded by `max_decoding_pixels` (503 `busy` past it).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import dataclasses
import io
import logging
import sqlite3
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from starlette.concurrency import run_in_threadpool

from data_pipelines.images import BadImage, allow_pixels, decode_image
from vlm.eval.zeroshot import zero_shot_classifier
from vlm.index.config import read_config
from vlm.index.encoder import Encoder, Reranker, load_encoder, load_reranker
from vlm.index.errors import IndexReadOnlyError
from vlm.index.folder import Hit, ItemIndex
from vlm.index.storage import classify
from vlm.models.precision import resolve_precision
from vlm.serve import fetch
from vlm.serve.batching import MicroBatcher
from vlm.serve.errors import ApiError

log = logging.getLogger("vlm.serve")


@dataclass(frozen=True)
class ServeConfig:
    checkpoint: str
    index: str
    rerank_checkpoint: str | None = None
    api_key: str | None = None
    index_name: str = ""  # the name clients use (clip-retrieval's indice_name); default: the folder name
    max_body_bytes: int = 8 * 2**20
    max_image_pixels: int = 4096 * 4096  # checked from the header, before decoding: no decompression bombs
    max_k: int = 1000
    max_batch: int = 64  # inputs per /v1/embed request
    max_rerank_k: int = 200
    allow_image_urls: bool = False  # off: the server never makes requests on a client's behalf
    allow_private_urls: bool = False  # off: image_url may only reach globally routable addresses (no SSRF)
    max_decoding_pixels: int = 2 * 4096 * 4096  # decoded at once over all requests; past it, 503 busy
    host: str = "127.0.0.1"  # the address served (`vlm serve --host`), a trusted Host by default
    trusted_hosts: tuple[str, ...] | None = None  # Host headers served; None: `host` and loopback; "*": any
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API; none: no CORS headers
    micro_batch: int = 32
    micro_batch_wait_ms: float = 2.0
    # Threads inside one forward pass / one faiss search. Requests bring the parallelism; on a busy 2-core
    # machine 2 intra-op threads made one text encode 46 ms instead of 2.5 ms (docs/BENCHMARKS.md).
    torch_threads: int = 1
    search_threads: int = 1
    precision: str | None = None  # the query encoder's; None: the precision the index was built with
    read_only: bool = False  # serve searches beside the folder's writer, following its commits; never write
    rerank_precision: str = "fp32"

    @property
    def name(self) -> str:
        return self.index_name or Path(self.index).resolve().name

    @property
    def allowed_hosts(self) -> tuple[str, ...]:
        """Host headers answered: a page on another site that rebinds its name to this address gets a 400."""
        if self.trusted_hosts is not None:
            return self.trusted_hosts
        return (self.host, "localhost", "127.0.0.1", "::1")


class PixelBudget:
    """The pixels being decoded at once, over all requests: sixteen images each within max_image_pixels
    would otherwise take gigabytes together. A reservation waits at most `wait` seconds, then is refused."""

    def __init__(self, capacity: int):
        self.capacity, self.used = max(1, capacity), 0
        self.changed = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, pixels: int, wait: float = 0.0) -> Iterator[None]:
        pixels = min(max(1, pixels), self.capacity)  # an image over the whole budget waits until it is free
        with self.changed:
            if not self.changed.wait_for(lambda: self.used + pixels <= self.capacity, timeout=wait):
                raise ApiError(503, "busy", "the server is decoding as many images as it can at once; retry "
                               "shortly", headers={"Retry-After": "1"})
            self.used += pixels
        try:
            yield
        finally:
            with self.changed:
                self.used -= pixels
                self.changed.notify_all()


@dataclass(frozen=True)
class EncodedImage:
    """A client's image, still encoded: `Service.embed_images` decodes it off the event loop, within the
    pixel budget. `fetched`: it came from image_url, so every failure is the one image_url_failed."""

    service: Service = dataclasses.field(repr=False)
    data: bytes = dataclasses.field(repr=False)
    field: str = "image"
    fetched: bool = False


class Service:
    def __init__(self, config: ServeConfig):
        self.config = config
        self.encoder: Encoder | None = None
        self.reranker: Reranker | None = None
        self.index: ItemIndex | None = None
        self.load_error: str | None = None
        # OpenMP thread counts are per thread, so each worker thread sets its own on start.
        threads = (config.torch_threads, config.search_threads)
        self.executor = concurrent.futures.ThreadPoolExecutor(1, "vlm-model", set_threads, threads)
        self.search_executor = concurrent.futures.ThreadPoolExecutor(4, "vlm-search", set_threads, threads)
        self.pixel_budget = PixelBudget(config.max_decoding_pixels)

    @property
    def ready(self) -> bool:
        return self.encoder is not None and self.index is not None

    @property
    def not_ready_reason(self) -> str:
        """Said to clients: the detail (which names files on this server) is in the log."""
        return "failed to load (see the server log)" if self.load_error else "model and index are loading"

    def load(self) -> None:
        """Load the models and open (and reconcile) the index; run off the event loop at start-up."""
        c = self.config
        try:
            encoder = load_encoder(c.checkpoint, query_precision(c.precision, c.index))
            encoder.warm_up()  # /readyz says loading until a compiled int8 tower has compiled
            rerank_precision = resolve_precision(c.rerank_precision, "score")
            self.reranker = load_reranker(c.rerank_checkpoint, rerank_precision) if c.rerank_checkpoint else None
            index = ItemIndex(c.index, read_only=c.read_only)
            if index.config.dim != encoder.dim:
                raise ValueError(f"{c.index}: index vectors have dimension {index.config.dim}, "
                                 f"{c.checkpoint} embeds in {encoder.dim}")
            self.text_batcher = MicroBatcher(encoder.encode_texts, self.executor, c.micro_batch, c.micro_batch_wait_ms)
            self.image_batcher = MicroBatcher(lambda pixels: encoder.encode_pixels(torch.stack(pixels)),
                                              self.executor, c.micro_batch, c.micro_batch_wait_ms)
            self.index, self.encoder = index, encoder
            log.info("ready: %s items in %s, model %s at %s", len(index), c.index, encoder.name, encoder.precision)
        except Exception as e:
            self.load_error = str(e)
            log.error("could not load the service: %s", e)

    def close(self) -> None:
        """Shut down without a traceback whatever the disk says: the table already holds every change."""
        if self.index is not None:
            try:
                self.index.close()
            except Exception as e:
                log.error("%s: closing the index: %s", self.config.index, e)
        self.executor.shutdown(wait=False)
        self.search_executor.shutdown(wait=False)

    def require_ready(self) -> None:
        if not self.ready:
            raise ApiError(503, "not_ready", self.not_ready_reason)

    # --- inputs
    def image_size(self, data: bytes, field: str = "image") -> tuple[int, int]:
        """(width, height) from the header alone, refused when over the per-image limits: nothing decoded."""
        limit = self.config.max_image_pixels
        allow_pixels(limit)  # Pillow refuses over twice its own limit inside open(): not over a higher one of ours
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is checked below
                with Image.open(io.BytesIO(data)) as im:
                    width, height = im.size
        except Image.DecompressionBombError:
            raise ApiError(413, "image_too_large", f"{field}: over {limit} pixels (a decompression bomb?)") from None
        except (OSError, SyntaxError, ValueError) as e:  # PIL's exceptions name objects: logged, not answered
            log.info("%s: not a readable image: %s", field, e)
            raise ApiError(400, "not_an_image", f"{field}: not a readable image") from None
        if width * height > limit:
            raise ApiError(413, "image_too_large", f"{field}: {width}x{height} is over {limit} pixels")
        # The transform resizes the short side to the model's size: a 1 x 10^6 strip would become 10^8 pixels.
        size = self.encoder.transform.image_size if self.encoder is not None else 224
        if size * size * max(width, height) > limit * min(width, height):
            raise ApiError(413, "image_too_large", f"{field}: {width}x{height} is too elongated: resized "
                           f"to {size} px on its short side it would be over {limit} pixels")
        return width, height

    def decode_image(self, data: bytes, field: str = "image") -> Image.Image:
        """Decode without reserving pixels: callers go through `decoded`, which holds them in the budget."""
        try:
            return decode_image(data, self.config.max_image_pixels, name=field)
        except BadImage as e:
            log.info("%s: not decoded: %s", field, e)
            if e.reason == "too many pixels":
                raise ApiError(413, "image_too_large", f"{field}: over {self.config.max_image_pixels} pixels") from None
            raise ApiError(400, "not_an_image", f"{field}: not a readable image ({e.reason})") from None

    @contextlib.contextmanager
    def decoded(self, image: EncodedImage, wait: float = 0.0) -> Iterator[Image.Image]:
        """The decoded image; its pixels stay reserved in the budget until the block ends. Past the budget
        (after `wait` seconds): 503 busy with Retry-After."""
        try:
            width, height = self.image_size(image.data, image.field)
        except ApiError as e:
            raise self.input_error(image, e) from None
        with self.pixel_budget.reserve(width * height, wait):
            try:
                decoded = self.decode_image(image.data, image.field)
            except ApiError as e:
                raise self.input_error(image, e) from None
            yield decoded

    @staticmethod
    def input_error(image: EncodedImage, error: ApiError) -> ApiError:
        """A fetched image's failures all read the same: which one it was could map the server's network."""
        if not image.fetched:
            return error
        log.warning("image_url: fetched, but %s", error.message)
        return image_url_failed()

    def decode_base64_image(self, text: str, field: str = "image") -> EncodedImage:
        """The image's bytes: decoded later, off the event loop and within the pixel budget (embed_images)."""
        if text.startswith("data:") and "," in text:  # a data URL from a browser's FileReader
            text = text.split(",", 1)[1]
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "bad_base64", f"{field}: not valid base64") from None
        return EncodedImage(self, data, field)

    def fetch_image_url(self, url: str) -> EncodedImage:
        """image_url's bytes (vlm.serve.fetch refuses non-public addresses unless --allow-private-urls); run off
        the event loop. Every failure is the same 400 to the client; the cause goes to the log."""
        if not self.config.allow_image_urls:
            raise ApiError(403, "image_url_disabled", "image_url fetching is off on this server "
                           "(start it with --allow-image-urls); send the image as base64 instead")
        if not url.startswith(("http://", "https://")):
            raise ApiError(400, "bad_image_url", "image_url must be http:// or https://")
        try:
            data = fetch.fetch(url, self.config.max_body_bytes, self.config.allow_private_urls)
        except fetch.FetchError as e:
            log.warning("image_url not fetched: %s", e)
            raise image_url_failed() from None
        return EncodedImage(self, data, "image_url", fetched=True)

    def preprocess(self, images: list[Image.Image | EncodedImage]) -> list[torch.Tensor]:
        """The model's pixel tensors, one image at a time: each encoded image is decoded and resized while its
        pixels are held in the budget, and let go before the next."""
        pixels = []
        for image in images:
            if isinstance(image, EncodedImage):
                with self.decoded(image) as decoded:
                    pixels.append(self.encoder.preprocess([decoded])[0])
            else:
                pixels.append(self.encoder.preprocess([image])[0])
        return pixels

    # --- models
    async def embed_texts(self, texts: list[str]) -> np.ndarray:
        self.require_ready()
        return await self.text_batcher.submit(list(texts))

    async def embed_images(self, images: list[Image.Image | EncodedImage]) -> np.ndarray:
        self.require_ready()
        pixels = await run_in_threadpool(self.preprocess, images)  # decoding never blocks the event loop
        return await self.image_batcher.submit(pixels)

    async def zero_shot_classifier(self, labels: list[str], templates: list[str]) -> np.ndarray:
        """(labels, dim): per label, the renormalised mean of its prompts' embeddings (vlm.eval's), on the model
        thread."""
        self.require_ready()
        model = self.encoder.model

        def build() -> np.ndarray:
            return zero_shot_classifier(model, labels, templates).float().numpy()

        return await asyncio.get_running_loop().run_in_executor(self.executor, build)

    def check_k(self, k: int, name: str = "k") -> None:
        if not 1 <= k <= self.config.max_k:
            raise ApiError(400, "bad_k", f"{name} must be between 1 and {self.config.max_k}, got {k}")

    def check_rerank_k(self, rerank_k: int | None, text_query: bool) -> None:
        """Refuse a bad rerank_k before anything runs: the search fetches max(k, rerank_k) candidates."""
        if rerank_k is None:
            return
        if not text_query:
            raise ApiError(400, "bad_query", "rerank_k re-scores (text, image) pairs: it needs a text query")
        if self.reranker is None:
            raise ApiError(400, "no_reranker", "rerank_k needs a server started with --rerank-checkpoint")
        if not 1 <= rerank_k <= self.config.max_rerank_k:
            raise ApiError(400, "bad_rerank_k", f"rerank_k must be between 1 and {self.config.max_rerank_k}")

    def query_vector(self, embedding: list[float]) -> np.ndarray:
        try:
            vector = np.asarray(embedding, dtype=np.float64)  # float64: the norm of float32-sized values fits
        except (TypeError, ValueError):
            vector = np.zeros(0)
        if vector.ndim != 1 or vector.shape[0] != self.index.config.dim:
            raise ApiError(400, "bad_embedding", f"embedding must be a list of {self.index.config.dim} numbers, "
                           f"got shape {list(vector.shape)}")
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0:
            raise ApiError(400, "bad_embedding", "embedding must be finite and non-zero")
        return (vector / norm).astype(np.float32)

    async def search(self, vector: np.ndarray, k: int, modality: str = "image") -> list[Hit]:
        self.require_ready()
        loop = asyncio.get_running_loop()
        return (await loop.run_in_executor(self.search_executor, self.index.search, vector, k, modality))[0]

    async def rerank(self, text: str, hits: list[Hit], rerank_k: int) -> tuple[list[Hit], list[float]]:
        """Re-score the first `rerank_k` hits with the early-fusion model; the rest keep their order after them.

        `rerank_k` must have passed `check_rerank_k`."""
        head = [h for h in hits[:rerank_k] if (p := self.index.resolve_path(h.item)) is not None and p.is_file()]

        def score() -> np.ndarray:
            return self.reranker.score(text, [decode_image(self.index.resolve_path(h.item)) for h in head])

        scores = await asyncio.get_running_loop().run_in_executor(self.executor, score)
        order = np.argsort(-scores, kind="stable")
        reranked = [head[i] for i in order]
        rest = [h for h in hits if all(h is not r for r in reranked)]
        return reranked + rest, [float(scores[i]) for i in order]


def image_url_failed() -> ApiError:
    return ApiError(400, "image_url_failed", "could not fetch image_url as an image")


def query_precision(asked: str | None, index_dir: str | Path) -> str:
    """The precision to encode queries at: the index's unless asked, and never another than the index's (an
    int8 image query against fp32 vectors is close, not equal; rebuild the index to change its precision).
    `auto` is the index's: it was resolved for the machine that built it, and queries must follow it."""
    built = read_config(Path(index_dir)).precision
    if asked not in (None, "auto", built):
        raise ValueError(f"{index_dir}: the index was built at {built}, --precision {asked} would encode image "
                         f"queries differently; omit --precision or rebuild the index with --precision {asked}")
    return built


def raise_storage_error(e: BaseException, directory: Path) -> None:
    """A write the index refused becomes a clear status (the folder is named in the log, never to the client);
    other errors pass. Reached only before the commit: a 2xx means committed, a 507 or 403 means not."""
    if isinstance(e, IndexReadOnlyError):
        raise ApiError(403, "index_read_only", "this server serves its index read-only (see /v1/stats): "
                       "searches work, adds and deletes do not; nothing was changed") from e
    kind = classify(e)
    if kind is None and not isinstance(e, OSError | sqlite3.Error):
        return
    log.error("%s: a write failed: %s", directory, e)
    if kind == "read_only":
        raise ApiError(403, "index_read_only", "the index folder cannot be written: searches work, adds and "
                       "deletes do not; nothing was changed") from e
    if kind == "full":
        raise ApiError(507, "storage_full", "no space left to store the change; nothing was changed") from e
    raise ApiError(503, "storage_error", "could not write the index folder; nothing was changed") from e


def set_threads(torch_threads: int, search_threads: int) -> None:
    import faiss
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(search_threads)
    threadpool_limits(search_threads, user_api="blas")  # numpy's BLAS (the clip-retrieval dedup matmul)
