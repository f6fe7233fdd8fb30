"""`vlm bench serve --folder DIR`: what serving an index folder you built costs, as an operator sees it.

Starts `vlm serve --read-only` on the folder (its faiss snapshots memory-mapped), then times /readyz and
/v1/stats (each must stay O(1) whatever the folder holds), text searches over HTTP, and reads the server's
memory from /proc: VmRSS and VmHWM, split into private (RssAnon) and mapped-file (RssFile) pages. The model's
own share is measured apart, in a fresh process that loads the same checkpoint and nothing else.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from vlm.bench.http import bench_http, percentiles

FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
MODEL_RSS = ("import sys; from vlm.index.encoder import load_encoder; e = load_encoder(sys.argv[1]); "
             "e.encode_texts(['a red circle']); print(open('/proc/self/status').read())")


def proc_memory(pid: int | str = "self") -> dict[str, int]:
    """Bytes of the FIELDS of /proc/PID/status."""
    return parse_status(Path(f"/proc/{pid}/status").read_text())


def parse_status(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in FIELDS:
            out[name] = int(value.split()[0]) * 1024
    return out


def time_get(url: str, path: str, calls: int) -> dict:
    import httpx

    times = []
    with httpx.Client(base_url=url, timeout=30) as http:
        http.get(path).raise_for_status()  # warm-up
        for _ in range(calls):
            started = time.perf_counter()
            http.get(path).raise_for_status()
            times.append(time.perf_counter() - started)
    return percentiles(times)


def model_alone(checkpoint: str) -> dict[str, int]:
    """The checkpoint's encoder loaded in a fresh Python, one text encoded: the model's share of a server."""
    out = subprocess.run([sys.executable, "-c", MODEL_RSS, checkpoint], check=True, capture_output=True, text=True)
    return parse_status(out.stdout)


def bench_folder(checkpoint: str, folder: Path, queries: int, concurrency: list[int], out: Path) -> dict:
    from vlm.serve.process import ServerProcess

    texts = [f"a {c} {s} number {i}" for i, (c, s) in enumerate(
        (c, s) for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "star", "triangle"))]
    texts = (texts * (queries // len(texts) + 1))[:queries]
    started = time.perf_counter()
    with ServerProcess(checkpoint, folder, "--read-only", log_path=out.with_suffix(".log")) as server:
        report = {"folder": str(folder), "checkpoint": checkpoint, "ready_s": round(time.perf_counter() - started, 1),
                  "memory_after_start": proc_memory(server.process.pid),
                  "readyz": time_get(server.url, "/readyz", 200), "stats": time_get(server.url, "/v1/stats", 200),
                  "http_search": [bench_http(server.url, texts, c) for c in concurrency]}
        report["memory_after_queries"] = proc_memory(server.process.pid)
        import httpx

        report["index"] = httpx.get(f"{server.url}/v1/stats", timeout=30).json()["index"]
    report["model_alone"] = model_alone(checkpoint)
    return report


def format_folder(report: dict) -> str:
    gib = 2**30
    m, model = report["memory_after_queries"], report["model_alone"]
    lines = [f"folder                 {report['folder']} ({report['index']['items']:,} items, "
             f"{report['index']['search_structure']}, mapped {report['index'].get('mapped')})",
             f"ready after            {report['ready_s']} s",
             f"/readyz p50|p99        {report['readyz']['p50_ms']} | {report['readyz']['p99_ms']} ms",
             f"/v1/stats p50|p99      {report['stats']['p50_ms']} | {report['stats']['p99_ms']} ms"]
    for h in report["http_search"]:
        lines.append(f"search, {h['concurrency']} client(s)    {h['queries_per_s']} q/s, p50 {h['p50_ms']} ms, "
                     f"p99 {h['p99_ms']} ms, {h['errors']} errors")
    lines += [f"server RSS             {m['VmRSS'] / gib:.2f} GiB (peak {m['VmHWM'] / gib:.2f}): "
              f"{m['RssAnon'] / gib:.2f} private, {m['RssFile'] / gib:.2f} mapped file pages",
              f"model alone            {model['VmRSS'] / gib:.2f} GiB (peak {model['VmHWM'] / gib:.2f})",
              f"server - model         {(m['VmHWM'] - model['VmHWM']) / gib:.2f} GiB at peak"]
    return "\n".join(lines)


def write_report(report: dict, out: Path) -> None:
    from vlm.atomic_io import atomic_write

    with atomic_write(out, "w") as f:
        json.dump(report, f, indent=2)
