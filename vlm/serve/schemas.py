"""Request and response models of the JSON API: every bound the handlers enforce is declared here.

The bounds that depend on the server (k, rerank_k, batch size, the embedding dimension) come from its
`ServeConfig`, so `/openapi.json` says exactly what this server accepts and a fuzzer's generated requests
reach the handlers' logic instead of bouncing off undeclared checks. A value outside them is a 422 naming its
field before it reaches SQLite, faiss, Milvus, PIL or the model; the handlers keep their own checks of what a
schema cannot say (exactly one query, a zero vector, a template without '{}', an image that does not decode).
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from vlm.index.config import read_config
from vlm.index.errors import IndexFolderError

MAX_ID = 2**63 - 1  # SQLite's INTEGER is signed 64-bit; a larger id is refused before the query
FLOAT32_MAX = 3.4028234663852886e38
MAX_TEXT_CHARS = 10_000  # the tokenizer keeps the first context_length tokens anyway
MAX_LABEL_CHARS = 1_000
MAX_METADATA_BYTES = 64 * 1024
MAX_METADATA_DEPTH = 16
# A 2x2 red PNG: the example images in the schema, so generated requests carry an image that decodes.
EXAMPLE_PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMDAAAANHQEDasKb6QAAAABJRU5E"
               "rkJggg==")


def _utf8(text: str) -> str:
    """JSON can carry lone surrogates ("\\ud800") that no UTF-8 encoder (SQLite, the response) accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode text (it holds a lone surrogate)") from None
    return text


def _metadata(value: dict) -> dict:
    """Stored as JSON and sent back as JSON: finite numbers, valid text, bounded size and depth."""
    def depth(v: Any) -> int:
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else ()
        return 1 + max((depth(c) for c in children), default=0)

    if depth(value) > MAX_METADATA_DEPTH:
        raise ValueError(f"is nested deeper than {MAX_METADATA_DEPTH} levels")
    try:
        encoded = json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except ValueError:
        raise ValueError("holds a number JSON cannot carry (NaN or Infinity)") from None
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode text (it holds a lone surrogate)") from None
    if len(encoded) > MAX_METADATA_BYTES:
        raise ValueError(f"is over {MAX_METADATA_BYTES} bytes as JSON")
    return value


Text = Annotated[str, AfterValidator(_utf8), Field(max_length=MAX_TEXT_CHARS)]
Label = Annotated[str, AfterValidator(_utf8), Field(min_length=1, max_length=MAX_LABEL_CHARS)]
Finite = Annotated[float, Field(allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]  # vectors are float32
Metadata = Annotated[dict[str, Any], AfterValidator(_metadata)]


def base64_image(max_chars: int, description: str = "an image (PNG, JPEG, ...) as base64; a data: URL is accepted"):
    return Annotated[str, Field(min_length=1, max_length=max_chars, description=description,
                                json_schema_extra={"format": "byte", "examples": [EXAMPLE_PNG]})]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable, e.g. bad_k, not_found, image_too_large")
    message: str = Field(description="for people; names the field at fault")


class ErrorBody(BaseModel):
    error: ErrorDetail


ERRORS = {"400": "bad value (the message names the field)", "401": "missing or wrong API key",
          "404": "no such item, index or path", "413": "body, image, batch or label set over the server's limit",
          "422": "the body or a parameter does not match this schema (the message names the field)",
          "503": "not ready (loading), busy decoding images (retry after Retry-After), or the index folder "
                 "cannot be written (read-only, full)",
          "507": "no space left to store the item"}
ERROR_RESPONSES: dict[int | str, dict] = {int(s): {"model": ErrorBody, "description": d} for s, d in ERRORS.items()}


class ItemOut(BaseModel):
    id: int
    path: str | None
    caption: str | None
    extra: dict[str, Any]
    image_url: str


class HitOut(ItemOut):
    score: float = Field(description="cosine similarity with the query")
    rerank_score: float | None = Field(None, description="early-fusion ITM log-odds, on the reranked head only")


class SearchOut(BaseModel):
    results: list[HitOut]
    reranked: bool


class EmbedOut(BaseModel):
    dim: int
    model: str
    text_embeddings: list[list[float]] | None = None
    image_embeddings: list[list[float]] | None = None


class LabelProbability(BaseModel):
    label: str
    probability: float


class ClassifyOut(BaseModel):
    labels: list[LabelProbability]


class DeletedOut(BaseModel):
    deleted: int


@dataclass(frozen=True)
class RequestModels:
    search: type[BaseModel]
    embed: type[BaseModel]
    classify: type[BaseModel]
    add_item: type[BaseModel]


def request_models(max_k: int, max_rerank_k: int, max_batch: int, max_body_bytes: int,
                   dim: int | None) -> RequestModels:
    """The /v1 request bodies with this server's limits in their schema."""
    image_type = base64_image(max_body_bytes)
    embedding_type = list[Finite] if dim is None else Annotated[list[Finite], Field(min_length=dim, max_length=dim)]
    # Exactly one query given and not null: the handler's 400 bad_query, said in the schema.
    one_of = {"oneOf": [{"required": [name], "properties": {name: {"not": {"type": "null"}}}}
                        for name in ("text", "image", "embedding")]}

    class SearchRequest(Strict):
        """Exactly one of text, image, embedding."""

        model_config = ConfigDict(extra="forbid", json_schema_extra=one_of)
        text: Text | None = Field(None, description="search by a caption")
        image: image_type | None = Field(None, description="search by an image, base64 (a data: URL is accepted)")
        embedding: embedding_type | None = Field(None, description="search by a vector of the model's dimension")
        k: int = Field(min(10, max_k), ge=1, le=max_k, description="number of results")
        modality: Literal["image", "text"] = Field("image", description="search image vectors or caption vectors")
        rerank_k: int | None = Field(None, ge=1, le=max_rerank_k, description=(
            "re-score the top rerank_k with the early-fusion model (text queries on a server with a reranker)"))

    class EmbedRequest(Strict):
        """At least one input; at most max_batch in all."""

        texts: list[Text] = Field(default_factory=list, max_length=max_batch)
        images: list[image_type] = Field(default_factory=list, max_length=max_batch, description="base64 images")

    class ClassifyRequest(Strict):
        image: image_type
        labels: list[Label] = Field(min_length=1, max_length=max_k)
        templates: list[Label] | None = Field(None, min_length=1, max_length=max_k, description=(
            "prompt templates with '{}' (or '{c}') where the label goes; default 'a photo of a {}.' and '{}'"))

    class AddItemRequest(Strict):
        image: image_type
        caption: Text | None = None
        metadata: Metadata = Field(default_factory=dict, description="any JSON object, stored with the item")

    return RequestModels(SearchRequest, EmbedRequest, ClassifyRequest, AddItemRequest)



def index_dim(directory: str) -> int | None:
    """The index's vector dimension for the schema; None when index.json cannot be read (load reports why)."""
    try:
        return read_config(Path(directory)).dim
    except (IndexFolderError, OSError, ValueError, TypeError):
        return None
