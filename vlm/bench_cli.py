"""`vlm bench ...`: throughput benchmarks, one sub-command per stage of the data flow.

Each stage keeps its benchmark next to its code and exposes `register_bench(subparsers)`, which adds one
sub-command (`data`, `train`, `serve`) to `vlm bench`.
"""

from __future__ import annotations

import argparse
import importlib

# Benchmark modules, one per stage, each with register_bench(sub).
BENCH_MODULES = [
    "data_pipelines.bench",  # vlm bench data
    "vlm.serve.bench",  # vlm bench serve
    "vlm.eval.bench",  # vlm bench eval
    "vlm.models.bench",  # vlm bench encode
    "vlm.models.bench_score",  # vlm bench score
    "vlm.train.bench",  # vlm bench train
]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="throughput benchmarks (data, serve, eval, encode, score, train)")
    sub = p.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    for name in BENCH_MODULES:
        importlib.import_module(name).register_bench(sub)
