"""`vlm index build|info` and `vlm serve`."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from data_pipelines.options import add_source_arguments, source_options

PRECISIONS = ("fp32", "int8")  # vlm.models.precision.PRECISIONS, without importing torch for `vlm --help`


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("index", help="build or inspect a retrieval index folder")
    sub = p.add_subparsers(dest="index_command", required=True)
    b = sub.add_parser("build", help="embed a collection (pairs source or image folder) into an index")
    b.add_argument("--checkpoint", required=True, help="late-fusion (dual_encoder) checkpoint")
    b.add_argument("--data", required=True, help="CSV/TSV/JSONL pairs, shards, COCO/Karpathy JSON, shapes world "
                   "folder or a folder of images")
    b.add_argument("--out", required=True, help="index folder to write")
    b.add_argument("--split", help="Karpathy or shapes-world split")
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--backend", choices=["faiss", "milvus"], default="faiss")
    b.add_argument("--milvus-uri", default="", help="Milvus server URI (default: a milvus-lite file in the index)")
    b.add_argument("--exact-max", type=int, help="faiss: exact search up to this many items, approximate above "
                   "(default: 1,000,000)")
    b.add_argument("--approximate", choices=["hnsw", "ivf"], help="faiss: the structure above --exact-max "
                   "(default: hnsw)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing index at --out")
    b.add_argument("--precision", choices=PRECISIONS, default="fp32", help="run the image tower in int8 (faster "
                   "on CPU, within cosine 0.99 of fp32; texts stay fp32) or fp32; recorded in the index, queries "
                   "follow it")
    add_source_arguments(b)
    b.set_defaults(func=cmd_build)
    i = sub.add_parser("info", help="print an index folder's size, model and search structure")
    i.add_argument("directory")
    i.set_defaults(func=cmd_info)

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
    s.add_argument("--max-image-pixels", type=int)
    s.add_argument("--max-k", type=int)
    s.add_argument("--max-batch", type=int)
    s.add_argument("--torch-threads", type=int,
                   help="threads per forward pass (default 1; raise for big batches on a dedicated machine)")
    s.add_argument("--search-threads", type=int, help="faiss OpenMP threads (default 1)")
    s.add_argument("--allow-image-urls", action="store_true", help="let clients ask the server to fetch image_url")
    s.add_argument("--log-level", default="info")
    s.set_defaults(func=cmd_serve)


def given(args: argparse.Namespace, *names: str) -> dict:
    """The options among `names` given on the command line; the config dataclass keeps its own defaults."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def cmd_build(args: argparse.Namespace) -> int:
    from vlm.serve.backends import FaissConfig
    from vlm.serve.build import BuildOptions, build_index

    options = BuildOptions(split=args.split, batch_size=args.batch_size, backend=args.backend,
                           faiss=FaissConfig(**given(args, "exact_max", "approximate")),
                           milvus_uri=args.milvus_uri, overwrite=args.overwrite, source=source_options(args),
                           precision=args.precision)
    build_index(args.checkpoint, args.data, args.out, options)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from vlm.serve.build import index_info

    print(json.dumps(index_info(args.directory), indent=2))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from vlm.models.checkpoint import resolve_checkpoint
    from vlm.serve.app import create_app
    from vlm.serve.index import CONFIG_NAME
    from vlm.serve.service import ServeConfig, query_precision

    for path in (args.checkpoint, args.rerank_checkpoint):
        if path and not resolve_checkpoint(path).is_file():
            raise FileNotFoundError(f"{path}: no such checkpoint file")
    if not (Path(args.index) / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{args.index}: not an index folder (build one with `vlm index build`)")
    query_precision(args.precision, args.index)  # refuse a contradicting --precision before the server starts
    config = ServeConfig(checkpoint=args.checkpoint, index=args.index, rerank_checkpoint=args.rerank_checkpoint,
                         api_key=args.api_key or None, index_name=args.index_name,
                         allow_image_urls=args.allow_image_urls, precision=args.precision,
                         rerank_precision=args.rerank_precision,
                         **given(args, "max_body_bytes", "max_image_pixels", "max_k", "max_batch", "torch_threads",
                                 "search_threads"))
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level=args.log_level)
    return 0
