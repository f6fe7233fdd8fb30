"""What the route modules share: the service, found through the request (a FastAPI dependency), and typing a
module-level handler's body with this server's request model.

Request bodies are made per server (vlm.serve.schemas.request_models): their limits and the index's embedding
dimension are part of the OpenAPI document. So each route module keeps its handlers at module level and builds
its router from the server's models in a few lines.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from vlm.serve.service import Service


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


def with_body(handler: Callable, model: type) -> Callable:
    """`handler` with its `body` parameter typed as `model`, so FastAPI validates and documents that model."""

    @functools.wraps(handler)
    async def endpoint(*args, **kwargs):
        return await handler(*args, **kwargs)

    signature = inspect.signature(handler, eval_str=True)
    parameters = [p.replace(annotation=model) if p.name == "body" else p for p in signature.parameters.values()]
    endpoint.__signature__ = signature.replace(parameters=parameters)
    return endpoint
