"""`vlm bench serve --soak MINUTES`: searches, adds, deletes and stats polling from several clients at once, for a
bounded time, with a liveness probe beside them.

A real `vlm serve` on 127.0.0.1 (never another interface) over an index of random vectors. Searchers send text
queries, adders post noise images, deleters delete items the adders were told were added, pollers read
/v1/stats as a dashboard does, and one probe calls /healthz every 50 ms as an orchestrator would (its p99 must
stay under 50 ms: a probe that times out gets a healthy server restarted). At the end it
reports queries/s and p50/p99 per kind, the errors (anything but a 200: must be 0), the server's resident
memory after the first tenth of the run under full load and at the end (flat: within 10%), and checks
consistency: every acknowledged add is there and found by a search with its own image, every acknowledged
delete is gone (404, and in no result).
"""

from __future__ import annotations

import base64
import io
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from vlm.serve.process import ServerProcess

RSS_TOLERANCE = 0.10
HEALTHZ_P99_MS = 50.0
KINDS = ("search", "add", "delete", "stats", "healthz")


def noise_png(seed: int, size: int = 32) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def rss_bytes(pid: int) -> int | None:
    """Resident set size from /proc (Linux); None elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class SoakState:
    """What the clients share: latencies per kind, errors, and the adds and deletes the server acknowledged."""

    deadline: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: dict[str, list[float]] = field(default_factory=lambda: {kind: [] for kind in KINDS})
    errors: list[str] = field(default_factory=list)
    added: dict[int, int] = field(default_factory=dict)  # id -> seed of its image, acknowledged and not deleted
    deleted: dict[int, int] = field(default_factory=dict)  # id -> seed, acknowledged deletes
    next_seed: int = 0

    def record(self, kind: str, started: float, response: httpx.Response | Exception, ok_status: int = 200) -> bool:
        elapsed = time.perf_counter() - started
        with self.lock:
            self.latencies[kind].append(elapsed)
            if isinstance(response, Exception) or response.status_code != ok_status:
                detail = response if isinstance(response, Exception) else f"{response.status_code} {response.text}"
                self.errors.append(f"{kind}: {detail}"[:300])
                return False
        return True

    def take_seed(self) -> int:
        with self.lock:
            self.next_seed += 1
            return self.next_seed


def searcher(url: str, state: SoakState, rng: random.Random) -> None:
    with httpx.Client(base_url=url, timeout=60) as http:
        while time.monotonic() < state.deadline:
            body = {"text": f"a {rng.choice(['red', 'blue', 'green'])} thing number {rng.randrange(10**6)}", "k": 10}
            started = time.perf_counter()
            try:
                response = http.post("/v1/search", json=body)
            except httpx.HTTPError as e:
                response = e
            state.record("search", started, response)


def adder(url: str, state: SoakState) -> None:
    with httpx.Client(base_url=url, timeout=60) as http:
        while time.monotonic() < state.deadline:
            seed = state.take_seed()
            started = time.perf_counter()
            try:
                response = http.post("/v1/items", json={"image": noise_png(seed), "caption": f"soak {seed}"})
            except httpx.HTTPError as e:
                response = e
            if state.record("add", started, response):
                with state.lock:
                    state.added[response.json()["id"]] = seed


def deleter(url: str, state: SoakState, rng: random.Random) -> None:
    """Deletes about one added item in three (a random one), so the index keeps growing a little."""
    with httpx.Client(base_url=url, timeout=60) as http:
        while time.monotonic() < state.deadline:
            with state.lock:
                wanted = len(state.added) > 2 * len(state.deleted) + 3  # about one add in three is deleted
                item_id = rng.choice(list(state.added)) if wanted else None
                seed = state.added.pop(item_id) if item_id is not None else None
            if item_id is None:
                time.sleep(0.05)  # wait for the adders
                continue
            started = time.perf_counter()
            try:
                response = http.delete(f"/v1/items/{item_id}")
            except httpx.HTTPError as e:
                response = e
            if state.record("delete", started, response):  # an unacknowledged delete is not checked either way
                with state.lock:
                    state.deleted[item_id] = seed


def poller(url: str, state: SoakState, path: str, kind: str, pause_s: float = 0.0) -> None:
    """GET `path` over and over (a dashboard on /v1/stats, a liveness probe on /healthz every `pause_s`)."""
    with httpx.Client(base_url=url, timeout=60) as http:
        while time.monotonic() < state.deadline:
            started = time.perf_counter()
            try:
                response = http.get(path)
            except httpx.HTTPError as e:
                response = e
            state.record(kind, started, response)
            time.sleep(pause_s)


def check_consistency(url: str, state: SoakState, sample: int = 200) -> dict:
    """Every acknowledged add is there and found by its own image; every acknowledged delete is gone."""
    problems: list[str] = []
    rng = random.Random(0)
    added = rng.sample(sorted(state.added.items()), min(sample, len(state.added)))
    deleted = rng.sample(sorted(state.deleted.items()), min(sample, len(state.deleted)))
    with httpx.Client(base_url=url, timeout=60) as http:
        for item_id, seed in added:
            if http.get(f"/v1/items/{item_id}").status_code != 200:
                problems.append(f"added item {item_id} is missing")
            found = http.post("/v1/search", json={"image": noise_png(seed), "k": 20}).json()["results"]
            if item_id not in [r["id"] for r in found]:
                problems.append(f"added item {item_id} is not found by its own image")
        for item_id, seed in deleted:
            if http.get(f"/v1/items/{item_id}").status_code != 404:
                problems.append(f"deleted item {item_id} is still there")
            found = http.post("/v1/search", json={"image": noise_png(seed), "k": 20}).json()["results"]
            if item_id in [r["id"] for r in found]:
                problems.append(f"deleted item {item_id} is still found by a search")
    return {"adds_checked": len(added), "deletes_checked": len(deleted), "passed": not problems,
            "problems": problems[:20]}


def warm_up(url: str) -> None:
    with httpx.Client(base_url=url, timeout=60) as http:
        for i in range(20):
            http.post("/v1/search", json={"text": f"warm-up {i}", "k": 10})
            http.post("/v1/embed", json={"images": [noise_png(10**9 + i)]})


def run_soak(checkpoint: str, index: Path, minutes: float, clients: int, log_path: Path) -> dict:
    n_search = max(1, clients // 2)
    n_add = max(1, clients // 4)
    n_stats = max(1, clients // 8)
    n_delete = max(1, clients - n_search - n_add - n_stats)
    with ServerProcess(checkpoint, index, log_path=log_path) as server:  # binds 127.0.0.1 only
        warm_up(server.url)
        state = SoakState(deadline=time.monotonic() + minutes * 60)
        threads = ([threading.Thread(target=searcher, args=(server.url, state, random.Random(i)))
                    for i in range(n_search)] + [threading.Thread(target=adder, args=(server.url, state))
                                                 for _ in range(n_add)]
                   + [threading.Thread(target=deleter, args=(server.url, state, random.Random(100 + i)))
                      for i in range(n_delete)]
                   + [threading.Thread(target=poller, args=(server.url, state, "/v1/stats", "stats"))
                      for _ in range(n_stats)]
                   + [threading.Thread(target=poller, args=(server.url, state, "/healthz", "healthz", 0.05))])
        started = time.perf_counter()
        for t in threads:
            t.start()
        # "Start" is the first tenth of the soak under full load: a serial warm-up never fills the batching
        # queues and thread pools that concurrent clients do (measured: +9.9% against it over 2 minutes).
        time.sleep(min(max(5.0, 0.1 * minutes * 60), minutes * 60 / 2))
        rss_start = rss_bytes(server.process.pid)
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        rss_end = rss_bytes(server.process.pid)
        consistency = check_consistency(server.url, state)
    return soak_report(state, wall, (n_search, n_add, n_delete, n_stats, 1), rss_start, rss_end, consistency)


def soak_report(state: SoakState, wall: float, clients: tuple[int, ...], rss_start: int | None,
                rss_end: int | None, consistency: dict) -> dict:
    kinds = {}
    for kind, latencies in state.latencies.items():
        ms = np.array(latencies or [0.0]) * 1000
        kinds[kind] = {"requests": len(latencies), "per_s": round(len(latencies) / wall, 1),
                       "p50_ms": round(float(np.percentile(ms, 50)), 2),
                       "p99_ms": round(float(np.percentile(ms, 99)), 2)}
    growth = (rss_end - rss_start) / rss_start if rss_start and rss_end else None
    healthz_p99 = kinds["healthz"]["p99_ms"]
    return {"seconds": round(wall, 1), "clients": dict(zip(KINDS, clients, strict=True)),
            "healthz_p99_ms": healthz_p99, "healthz_ok": healthz_p99 < HEALTHZ_P99_MS,
            "requests": kinds, "errors": len(state.errors), "first_errors": state.errors[:10],
            "rss_start_mb": round(rss_start / 2**20, 1) if rss_start else None,
            "rss_end_mb": round(rss_end / 2**20, 1) if rss_end else None,
            "rss_growth": round(growth, 3) if growth is not None else None,
            "rss_flat": growth is not None and abs(growth) <= RSS_TOLERANCE,
            "consistency": consistency,
            "passed": not state.errors and consistency["passed"] and (growth is None or abs(growth) <= RSS_TOLERANCE)}


def format_soak(report: dict) -> str:
    lines = ["| requests | clients | count | per s | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|---:|"]
    for kind, r in report["requests"].items():
        lines.append(f"| {kind} | {report['clients'][kind]} | {r['requests']} | {r['per_s']} | {r['p50_ms']} | "
                     f"{r['p99_ms']} |")
    c = report["consistency"]
    growth = "unknown" if report["rss_growth"] is None else f"{report['rss_growth']:+.1%}"
    lines += ["", f"{report['seconds']} s; errors: {report['errors']}; /healthz p99 {report['healthz_p99_ms']} ms "
              f"(under {HEALTHZ_P99_MS:.0f}: {report['healthz_ok']}); server RSS {report['rss_start_mb']} MB in the "
              f"first tenth -> {report['rss_end_mb']} MB at the end ({growth}, flat within {RSS_TOLERANCE:.0%}: "
              f"{report['rss_flat']}); consistency ({c['adds_checked']} adds, {c['deletes_checked']} deletes "
              f"checked): {'passed' if c['passed'] else 'FAILED'}"]
    lines += [f"  {p}" for p in c["problems"]] + [f"  {e}" for e in report["first_errors"]]
    return "\n".join(lines)

