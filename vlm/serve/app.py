"""The FastAPI application: JSON API, clip-retrieval compatibility, health checks and the web page.

Loading the model and reconciling the index happen on a background thread after start-up, so /healthz
answers at once and /readyz turns 200 when the service can answer searches.
"""

from __future__ import annotations

import json
import os
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from vlm.serve.clip_compat import clip_request_models, clip_router
from vlm.serve.embed import embed_router
from vlm.serve.errors import BodyLimitMiddleware, check_api_key, error_response, install_error_handlers
from vlm.serve.items import items_router
from vlm.serve.schemas import index_dim, request_models
from vlm.serve.search import search_router
from vlm.serve.service import ServeConfig, Service
from vlm.serve.status import health_router, stats_router

PAGE = Path(__file__).with_name("static") / "index.html"
CONFIG_ENV = "VLM_SERVE_CONFIG"  # `vlm serve --workers N`: the ServeConfig, as JSON, for each worker process
CORS_METHODS = ["GET", "POST", "DELETE"]
CORS_HEADERS = ["Authorization", "X-API-Key", "Content-Type"]


def create_app(config: ServeConfig) -> FastAPI:
    service = Service(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=service.load, name="vlm-load", daemon=True).start()
        yield
        service.close()

    app = FastAPI(title="vlm retrieval API", version="1", lifespan=lifespan,
                  description="Image-text search over an index built with `vlm index build`.")
    app.state.service = service
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    if config.cors_origins:  # none given: no CORS headers, so browsers keep other sites' pages out
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=CORS_METHODS,
                           allow_headers=CORS_HEADERS)
    app.add_middleware(TrustedHosts, allowed_hosts=config.allowed_hosts)  # the outermost: checked first

    def require_key(request: Request) -> None:
        check_api_key(request, config.api_key)

    # Bodies are made for this server: its limits and the index's dimension are part of the schema.
    dim = index_dim(config.index)
    models = request_models(config.max_k, config.max_rerank_k, config.max_batch, config.max_body_bytes, dim)
    app.state.clip_models = clip_request_models(config.max_k, config.max_body_bytes, dim)
    guarded = [Depends(require_key)]
    app.include_router(health_router)
    for router in (search_router(models), embed_router(models), items_router(models), stats_router,
                   clip_router(app.state.clip_models)):
        app.include_router(router, dependencies=guarded)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    return app


def app_from_environment() -> FastAPI:
    """uvicorn's factory in each worker of `vlm serve --workers N`: the app of the ServeConfig in $VLM_SERVE_CONFIG."""
    fields = json.loads(os.environ[CONFIG_ENV])
    for name in ("trusted_hosts", "cors_origins"):  # JSON has lists, the config tuples
        if isinstance(fields.get(name), list):
            fields[name] = tuple(fields[name])
    return create_app(ServeConfig(**fields))


class TrustedHosts:
    """Starlette's TrustedHostMiddleware decides; a refused Host gets this API's JSON error, not plain text.

    A page on another site whose name was rebound to this server's address (DNS rebinding) sends its own
    name as Host: refused, so such a page cannot read the API even on 127.0.0.1."""

    def __init__(self, app, allowed_hosts: tuple[str, ...]):
        self.app = app
        self.check = TrustedHostMiddleware(mark_trusted, allowed_hosts=host_patterns(allowed_hosts),
                                           www_redirect=False)
        self.refusal = error_response(400, "bad_host", "the Host header names a host this server does not serve "
                                      "(see vlm serve --trusted-hosts)")

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            await self.check(scope, receive, discard)  # its own plain-text refusal goes nowhere
            if not scope.pop(TRUSTED, False):
                return await self.refusal(scope, receive, send)
        await self.app(scope, receive, send)


TRUSTED = "vlm.trusted_host"


async def mark_trusted(scope, receive, send) -> None:
    scope[TRUSTED] = True


async def discard(message) -> None:
    pass


def host_patterns(hosts: tuple[str, ...]) -> list[str]:
    """Starlette compares the Host header's host, which keeps an IPv6 address's brackets: "::1" -> "[::1]"."""
    return [f"[{h}]" if ":" in h and not h.startswith("[") else h for h in hosts]
