"""Timing an HTTP service from its clients' side: latency percentiles and concurrent text searches."""

from __future__ import annotations

import threading
import time

import numpy as np


def percentiles(latencies_s: list[float]) -> dict:
    ms = np.array(latencies_s) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def bench_http(url: str, texts: list[str], concurrency: int) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    shares = [texts[i::concurrency] for i in range(concurrency)]

    def client(share: list[str]) -> None:
        nonlocal errors
        with httpx.Client(base_url=url, timeout=60) as http:
            for text in share:
                started = time.perf_counter()
                ok = http.post("/v1/search", json={"text": text, "k": 10}).status_code == 200
                with lock:
                    latencies.append(time.perf_counter() - started)
                    errors += not ok

    with httpx.Client(base_url=url) as http:  # warm-up
        http.post("/v1/search", json={"text": texts[0], "k": 10})
    threads = [threading.Thread(target=client, args=(share,)) for share in shares]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"concurrency": concurrency, "queries": len(latencies), "errors": errors,
            "queries_per_s": round(len(latencies) / wall, 1), **percentiles(latencies)}
