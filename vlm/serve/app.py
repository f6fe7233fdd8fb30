"""The FastAPI application: JSON API, clip-retrieval compatibility, health checks and the web page.

Loading the model and reconciling the index happen on a background thread after start-up, so /healthz
answers at once and /readyz turns 200 when the service can answer searches.
"""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse

from vlm.serve.clip_compat import build_clip_router
from vlm.serve.errors import BodyLimitMiddleware, check_api_key, install_error_handlers
from vlm.serve.routes import build_health_router, build_router
from vlm.serve.service import ServeConfig, Service

PAGE = Path(__file__).with_name("static") / "index.html"


def create_app(config: ServeConfig) -> FastAPI:
    service = Service(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=service.load, name="vlm-load", daemon=True).start()
        yield
        service.close()

    app = FastAPI(title="vlm retrieval API", version="1", lifespan=lifespan,
                  description="Image-text search over an index built with `vlm index build`.")
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)

    def require_key(request: Request) -> None:
        check_api_key(request, config.api_key)

    guarded = [Depends(require_key)]
    app.include_router(build_health_router(service))
    app.include_router(build_router(service), dependencies=guarded)
    app.include_router(build_clip_router(service), dependencies=guarded)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    return app
