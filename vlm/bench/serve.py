"""`vlm bench serve`: text-query throughput and latency of the HTTP API, and exact faiss against numpy.

The indexes hold random unit vectors (what is measured is the service, not the model's quality), built
straight into the item table. Each size gets a real `vlm serve` subprocess, queried over HTTP by 1 and by 8
concurrent clients; the encoder's share (one text embedded at a time) and the bare search (exact faiss against
a brute-force numpy matrix product, same queries, same answers) are measured apart in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vlm.atomic_io import atomic_write
from vlm.bench.http import bench_http, percentiles
from vlm.index.backends import FaissBackend
from vlm.index.config import IndexConfig
from vlm.index.folder import ItemIndex
from vlm.index.store import Item

if TYPE_CHECKING:  # torch, fastapi and httpx load when the benchmark runs, not when `vlm` builds its parser
    from vlm.index.encoder import Encoder


def register_bench(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="HTTP text-query throughput/latency; exact faiss vs numpy")
    p.add_argument("--checkpoint", help="late-fusion checkpoint (default: a random clip-small)")
    p.add_argument("--sizes", default="10000,100000", help="index sizes, comma-separated")
    p.add_argument("--concurrency", default="1,8", help="concurrent clients, comma-separated")
    p.add_argument("--queries", type=int, default=200, help="HTTP queries per (size, concurrency)")
    p.add_argument("--out", default="runs/bench/serve.json")
    p.add_argument("--soak", type=float, metavar="MINUTES",
                   help="instead: searches, adds, deletes and /v1/stats polling from --clients clients for MINUTES "
                        "on the first size, with a /healthz probe every 50 ms; reports errors, memory, the probe's "
                        "p99 and a consistency check (exit 1 if any fails)")
    p.add_argument("--clients", type=int, default=8, help="--soak: clients (half search, a quarter add, an eighth "
                   "poll /v1/stats, the rest delete)")
    p.add_argument("--folder", type=Path, help="instead: serve this index folder read-only (needs --checkpoint) and "
                   "time /readyz, /v1/stats and searches, and read the server's memory beside the model's alone")
    p.set_defaults(func=cmd_bench_serve)


def random_unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_random_index(directory: Path, n: int, dim: int, model: str) -> np.ndarray:
    """An index of n random image vectors with captions "item i"; returns the vectors."""
    vectors = random_unit_vectors(n, dim, seed=n)
    index = ItemIndex(directory, IndexConfig(dim=dim, model=model))
    for start in range(0, n, 20_000):
        index.store.add([Item(caption=f"item {i}", image_vec=vectors[i]) for i in range(start, min(n, start + 20_000))])
    index.close()
    ItemIndex(directory).close()  # builds and saves the faiss index from the table
    return vectors


def bench_search(vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> dict:
    """One query at a time, as a server sees them: exact faiss vs numpy brute force; same top-k asserted."""
    backend = FaissBackend(Path(tempfile.mkdtemp()) / "bench.faiss", vectors.shape[1])
    backend.add(np.arange(len(vectors)), vectors)
    results = {}
    for name, search in (("faiss_flat_ip", lambda q: backend.search(q[None], k)[1][0]),
                         ("numpy_brute_force", lambda q: numpy_top_k(vectors, q, k))):
        search(queries[0])  # warm-up
        times, answers = [], []
        for q in queries:
            started = time.perf_counter()
            answers.append(search(q))
            times.append(time.perf_counter() - started)
        results[name] = {**percentiles(times), "queries_per_s": round(len(queries) / sum(times), 1)}
        results[name]["_answers"] = answers
    same = all(set(a) == set(b) for a, b in zip(results["faiss_flat_ip"].pop("_answers"),
                                                results["numpy_brute_force"].pop("_answers"), strict=True))
    return {**results, "same_top_k": same}


def numpy_top_k(vectors: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    scores = vectors @ query
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top])]


def bench_encoder(encoder: Encoder, texts: list[str]) -> dict:
    encoder.encode_texts(texts[:1])
    times = []
    for text in texts:
        started = time.perf_counter()
        encoder.encode_texts([text])
        times.append(time.perf_counter() - started)
    started = time.perf_counter()
    encoder.encode_texts(texts[:32])
    batch_s = time.perf_counter() - started
    return {"batch_1": percentiles(times), "batch_32_texts_per_s": round(32 / batch_s, 1)}


def run_bench(checkpoint: str | None, sizes: list[int], concurrency: list[int], n_queries: int, out: Path) -> dict:
    from vlm.index.encoder import load_encoder
    from vlm.serve.process import ServerProcess
    from vlm.serve.service import set_threads

    set_threads(1, 1)  # as `vlm serve` runs by default
    work = Path(tempfile.mkdtemp(prefix="vlm-bench-serve-"))
    if checkpoint is None:
        import vlm

        checkpoint = str(work / "clip-small.pt")
        vlm.create_model("clip-small").save(checkpoint)
    encoder = load_encoder(checkpoint)
    texts = [f"a {c} {s} number {i}" for i, (c, s) in enumerate(
        (c, s) for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "star", "triangle"))]
    texts = (texts * (n_queries // len(texts) + 1))[:n_queries]
    load = os.getloadavg()[0]
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} at start",
              "model": encoder.name, "dim": encoder.dim, "encoder": bench_encoder(encoder, texts[:100]), "sizes": {}}
    queries = encoder.encode_texts(texts[:100])
    for n in sizes:
        directory = work / f"index-{n}"
        vectors = make_random_index(directory, n, encoder.dim, encoder.name)
        entry = {"search_only": bench_search(vectors, queries), "http": []}
        with ServerProcess(checkpoint, directory, log_path=work / f"server-{n}.log") as server:
            for c in concurrency:
                entry["http"].append(bench_http(server.url, texts, c))
        report["sizes"][str(n)] = entry
        print(json.dumps({n: entry}))
    report["load_average_at_end"] = round(os.getloadavg()[0], 1)
    with atomic_write(out, "w") as f:
        json.dump(report, f, indent=2)
    return report


def format_table(report: dict) -> str:
    lines = ["| items | clients | queries/s | p50 ms | p99 ms |", "|---:|---:|---:|---:|---:|"]
    for n, entry in report["sizes"].items():
        for h in entry["http"]:
            lines.append(f"| {int(n):,} | {h['concurrency']} | {h['queries_per_s']} | {h['p50_ms']} | {h['p99_ms']} |")
    lines += ["", "| items | search | queries/s | p50 ms | p99 ms | same top-10 |", "|---:|---|---:|---:|---:|---|"]
    for n, entry in report["sizes"].items():
        s = entry["search_only"]
        for name in ("faiss_flat_ip", "numpy_brute_force"):
            lines.append(f"| {int(n):,} | {name} | {s[name]['queries_per_s']} | {s[name]['p50_ms']} | "
                         f"{s[name]['p99_ms']} | {s['same_top_k']} |")
    e = report["encoder"]
    lines += ["", f"text encoder ({report['model']}), one text: p50 {e['batch_1']['p50_ms']} ms, "
              f"p99 {e['batch_1']['p99_ms']} ms; batch of 32: {e['batch_32_texts_per_s']} texts/s"]
    return "\n".join(lines)


def run_soak_bench(checkpoint: str | None, n_items: int, minutes: float, clients: int, out: Path) -> dict:
    from vlm.bench.soak import run_soak
    from vlm.index.encoder import load_encoder

    work = Path(tempfile.mkdtemp(prefix="vlm-bench-soak-"))
    if checkpoint is None:
        import vlm

        checkpoint = str(work / "clip-small.pt")
        vlm.create_model("clip-small").save(checkpoint)
    encoder = load_encoder(checkpoint)
    make_random_index(work / "index", n_items, encoder.dim, encoder.name)
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at "
              "start", "model": encoder.name, "items_at_start": n_items,
              **run_soak(checkpoint, work / "index", minutes, clients, work / "server.log")}
    with atomic_write(out, "w") as f:
        json.dump(report, f, indent=2)
    return report


def cmd_bench_serve(args: argparse.Namespace) -> int:
    if args.folder is not None:
        from vlm.bench.serve_folder import bench_folder, format_folder, write_report
        from vlm.errors import UserError

        if not args.checkpoint:
            raise UserError("--folder needs --checkpoint: the late-fusion model the folder was built with")
        out = Path(args.out if args.out != "runs/bench/serve.json" else "runs/bench/serve-folder.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        report = bench_folder(args.checkpoint, args.folder, args.queries,
                              [int(c) for c in args.concurrency.split(",")], out)
        write_report(report, out)
        print(format_folder(report))
        print(f"wrote {out}")
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.soak is not None:
        from vlm.bench.soak import format_soak

        out = Path(args.out if args.out != "runs/bench/serve.json" else "runs/bench/serve-soak.json")
        report = run_soak_bench(args.checkpoint, sizes[0], args.soak, args.clients, out)
        print(format_soak(report))
        print(f"wrote {out}")
        return 0 if report["passed"] and report["healthz_ok"] else 1
    concurrency = [int(c) for c in args.concurrency.split(",")]
    report = run_bench(args.checkpoint, sizes, concurrency, args.queries, Path(args.out))
    print(format_table(report))
    print(f"wrote {args.out}")
    return 0
