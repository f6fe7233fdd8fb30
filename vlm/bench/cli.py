"""`vlm bench ...`: throughput benchmarks, one sub-command per stage of the data flow.

Each module of vlm/bench/ named in `BENCH_MODULES` exposes `register_bench(subparsers)`, which adds one
sub-command (`data`, `serve`, `eval`, `encode`, `score`, `train`) to `vlm bench`.
"""

from __future__ import annotations

import argparse
import importlib

# Benchmark modules, one per thing measured, each with register_bench(sub).
BENCH_MODULES = [
    "vlm.bench.data",  # vlm bench data
    "vlm.bench.serve",  # vlm bench serve
    "vlm.bench.eval",  # vlm bench eval
    "vlm.bench.encode",  # vlm bench encode
    "vlm.bench.score",  # vlm bench score
    "vlm.bench.train",  # vlm bench train
    "vlm.bench.index",  # vlm bench index
]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="throughput benchmarks (data, serve, eval, encode, score, train, index)")
    sub = p.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    for name in BENCH_MODULES:
        importlib.import_module(name).register_bench(sub)
