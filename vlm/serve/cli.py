"""`vlm serve`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from vlm.index.cli import PRECISIONS, given


def register(subparsers: argparse._SubParsersAction) -> None:
    s = subparsers.add_parser("serve", help="run the retrieval HTTP API (FastAPI + uvicorn, OpenAPI at /docs)")
    s.add_argument("--checkpoint", required=True, help="late-fusion checkpoint that built the index")
    s.add_argument("--index", required=True, help="index folder from `vlm index build`")
    s.add_argument("--rerank-checkpoint", help="early-fusion checkpoint that re-scores the top rerank_k")
    s.add_argument("--precision", choices=PRECISIONS, help="encode queries at this precision (default: the one the "
                   "index was built with; a different one is refused, since queries and items must match)")
    s.add_argument("--rerank-precision", choices=PRECISIONS, default="fp32", help="the re-ranker's precision")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", default=os.environ.get("VLM_API_KEY"),
                   help="require this key (Bearer or X-API-Key); default: $VLM_API_KEY, none if unset")
    s.add_argument("--index-name", default="", help="name in /indices-list (default: the folder name)")
    s.add_argument("--max-body-bytes", type=int)
    s.add_argument("--max-image-pixels", "--max-pixels", dest="max_image_pixels", type=int, metavar="N",
                   help="refuse a query or added image over N pixels (413), before decoding it (default 4096 x 4096)")
    s.add_argument("--max-k", type=int)
    s.add_argument("--max-batch", type=int)
    s.add_argument("--torch-threads", type=int,
                   help="threads per forward pass (default 1; raise for big batches on a dedicated machine)")
    s.add_argument("--search-threads", type=int, help="faiss OpenMP threads (default 1)")
    s.add_argument("--allow-image-urls", action="store_true", help="let clients ask the server to fetch image_url")
    s.add_argument("--allow-private-urls", action="store_true", help="let image_url reach loopback, private and "
                   "link-local addresses too (default: only globally routable ones)")
    s.add_argument("--max-decoding-pixels", type=int,
                   help="pixels decoded at once over all requests (default 2 x 4096 x 4096); past it, 503 busy")
    s.add_argument("--trusted-hosts", type=comma_list, help="Host headers to answer, comma-separated ('*': any; "
                   "default: --host, localhost, 127.0.0.1, ::1)")
    s.add_argument("--cors-origins", type=comma_list, default=(), help="browser origins allowed to call the API, "
                   "comma-separated ('*': any; default: none, no CORS headers)")
    s.add_argument("--read-only", action="store_true", help="serve searches only, beside the folder's writer (or "
                   "from a folder nobody may write), following its commits; adds and deletes answer 403")
    s.add_argument("--workers", type=int, default=1, help="answer in N server processes from one folder (needs "
                   "--read-only: a folder has one writer); each maps the same faiss snapshots, so the vectors are "
                   "held once in the page cache, but each loads its own model")
    s.add_argument("--log-level", default="info")
    s.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    if args.workers > 1 and not args.read_only:
        raise ValueError(f"--workers {args.workers} needs --read-only: a folder has one writer, so several "
                         "workers can only serve it read-only (beside one `vlm serve` that writes, if any)")
    import uvicorn

    from vlm.index.config import CONFIG_NAME
    from vlm.index.errors import IndexLockedError
    from vlm.index.lock import lock_holder
    from vlm.models.checkpoint import resolve_checkpoint
    from vlm.serve.app import CONFIG_ENV, create_app
    from vlm.serve.service import ServeConfig, query_precision

    for path in (args.checkpoint, args.rerank_checkpoint):
        if path and not resolve_checkpoint(path).is_file():
            raise FileNotFoundError(f"{path}: no such checkpoint file")
    if not (Path(args.index) / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{args.index}: not an index folder (build one with `vlm index build`)")
    query_precision(args.precision, args.index)  # refuse a contradicting --precision before the server starts
    holder = None if args.read_only else lock_holder(args.index)
    if holder is not None:  # the same refusal the index gives at open, before minutes of model loading
        raise IndexLockedError(f"{args.index}: the index is in use by process {holder} (a vlm serve or index build); "
                               "stop it first, or serve this folder with --read-only")
    config = ServeConfig(checkpoint=args.checkpoint, index=args.index, rerank_checkpoint=args.rerank_checkpoint,
                         api_key=args.api_key or None, index_name=args.index_name,
                         allow_image_urls=args.allow_image_urls, allow_private_urls=args.allow_private_urls,
                         host=args.host, trusted_hosts=args.trusted_hosts, cors_origins=args.cors_origins,
                         precision=args.precision, read_only=args.read_only,
                         rerank_precision=args.rerank_precision,
                         **given(args, "max_body_bytes", "max_image_pixels", "max_k", "max_batch", "torch_threads",
                                 "search_threads", "max_decoding_pixels"))
    if args.workers == 1:
        uvicorn.run(create_app(config), host=args.host, port=args.port, log_level=args.log_level)
        return 0
    # uvicorn starts workers from an import string: each builds its app from the config in the environment
    os.environ[CONFIG_ENV] = json.dumps(dataclasses.asdict(config))
    uvicorn.run("vlm.serve.app:app_from_environment", factory=True, workers=args.workers, host=args.host,
                port=args.port, log_level=args.log_level)
    return 0


def comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())
