"""`vlm bench index`: an index under a memory budget on synthetic clustered vectors (issue 25's acceptance).

    vlm bench index --items 1000000 --max-index-memory 2G [--index-factory S] [--work DIR] [--reuse]

Writes the vectors as embedding parts (vlm/bench/index_data.py), computes exact ground truth by streaming
over them, builds the budgeted index in a subprocess (its own peak RSS is the build's), then a fresh subprocess
opens the index memory-mapped read-only as a server does and measures recall@1/@10 for image and text queries,
p50/p99 of one query at k=10, and its RSS; the exact flat baseline's latency is taken in the same subprocess,
after. `--reuse` measures an already built work folder again without rebuilding.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from vlm.atomic_io import atomic_write
from vlm.bench.index_data import PartRows, Synthetic, chunks, write_parts
from vlm.errors import UserError
from vlm.index.backends import FaissBackend, FaissConfig
from vlm.index.config import IndexConfig, write_config
from vlm.index.manifest import SnapshotRecord
from vlm.index.parts import list_parts
from vlm.index.tuning import K, QuerySet, exact_topk, recalls

FLAT_BASELINE_MAX = 4 * 2**30  # an in-memory flat baseline up to 4 GB of float32; a streamed scan above


def register_bench(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("index", help="a faiss index under a memory budget on synthetic clustered vectors: "
                              "build RSS, bytes per vector, recall (image and text queries), latency vs exact")
    p.add_argument("--items", type=int, required=True, help="vectors to index (512-d unless --dim)")
    p.add_argument("--max-index-memory", default="2G", help="the budget (default: %(default)s)")
    p.add_argument("--index-factory", default="", help="a faiss factory string instead of the budget's choice")
    p.add_argument("--work", type=Path, help="work folder: parts, index, reports (default: runs/bench/index-N)")
    p.add_argument("--reuse", action="store_true", help="measure the index already built in --work again")
    p.add_argument("--queries", type=int, default=1000, help="held-out queries per set, image and text")
    p.add_argument("--latency-queries", type=int, default=300, help="single queries timed per set")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clusters", type=int, default=0, help="Gaussian clusters (default: items / 1000 in "
                   "[1000, 10000])")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="report file (default: WORK/report.json)")
    p.set_defaults(func=cmd_bench_index)


def cmd_bench_index(args: argparse.Namespace) -> int:
    work = args.work or Path(f"runs/bench/index-{args.items}")
    data = Synthetic(args.items, args.dim, args.clusters, args.seed)
    parts = work / "parts"
    if not args.reuse:
        write_parts(parts, data)
    held = sum(p.rows for p in list_parts(parts)) if parts.is_dir() else 0
    if held != args.items:
        raise UserError(f"{parts}: holds {held:,} rows, --items is {args.items:,}" +
                        ("; run without --reuse to write them" if args.reuse else ""))
    truth = ground_truth(work, data, args.queries)
    if not args.reuse:
        child(work, "build", args)
    if not (work / "build.json").is_file():
        raise UserError(f"{work}: no index built there yet; run without --reuse")
    child(work, "measure", args)
    report = {"items": args.items, "dim": args.dim, "clusters": data.k, "queries": len(truth["image"]),
              "cpu": platform.processor() or platform.machine(), "cores": _cores(),
              "build": json.loads((work / "build.json").read_text()),
              "measure": json.loads((work / "measure.json").read_text())}
    out = args.json or work / "report.json"
    with atomic_write(out, "w") as f:
        json.dump(report, f, indent=2)
    print_table(report)
    print(f"report: {out}")
    return 0


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def ground_truth(work: Path, data: Synthetic, count: int) -> dict[str, np.ndarray]:
    """Queries and their exact top-k, streamed over the parts once and kept in WORK/truth.npz."""
    path = work / "truth.npz"
    if path.is_file():
        cached = dict(np.load(path))
        if len(cached["image"]) == count:
            return cached
    queries = data.queries(count)
    cached = {**{f"{m}_queries": q for m, q in queries.items()},
              **{m: exact_topk(q, chunks(work / "parts"), K) for m, q in queries.items()}}
    with atomic_write(path) as f:
        np.savez(f, **cached)
    return cached


def child(work: Path, mode: str, args: argparse.Namespace) -> None:
    """Run `mode` in a fresh Python: its peak RSS is that step's alone."""
    settings = {"dim": args.dim, "max_index_memory": args.max_index_memory, "index_factory": args.index_factory,
                "latency_queries": args.latency_queries}
    subprocess.run([sys.executable, "-m", "vlm.bench.index", mode, str(work), json.dumps(settings)], check=True)


def build(work: Path, settings: dict) -> dict:
    """The budgeted index of the parts' image vectors, tuned on both query sets; its record in index.json."""
    config = FaissConfig(max_index_memory=settings["max_index_memory"], index_factory=settings["index_factory"])
    folder = work / "index"
    shutil.rmtree(folder, ignore_errors=True)
    write_config(folder, IndexConfig(dim=settings["dim"], model="synthetic", faiss=config))
    saved = np.load(work / "truth.npz")
    sets = {m: QuerySet(saved[f"{m}_queries"], truth=saved[m]) for m in ("image", "text")}
    n = sum(p.rows for p in list_parts(work / "parts"))
    backend = FaissBackend(folder / "image.faiss", settings["dim"], config)
    backend.vectors_of = PartRows(work / "parts")  # a PQ index re-ranks with the parts' vectors, as a folder does
    start = time.perf_counter()
    backend.rebuild_from(lambda: chunks(work / "parts"), n, lambda: sets)
    record = backend.save()
    with atomic_write(folder / "snapshot.json", "w") as f:
        json.dump(asdict(record), f)
    return {"structure": backend.kind, "total_s": round(time.perf_counter() - start, 1),
            "anon_rss_bytes_at_end": _status("RssAnon"),  # private memory; VmHWM also counts mapped parts' pages
            "peak_rss_bytes": _status("VmHWM"),  # this process's own peak: ru_maxrss also counts the parent's
            #                                         pages at fork (Linux keeps the pre-exec peak across exec)
            "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "index_bytes": record.bytes, "tuning": asdict(backend.tuning)}


def measure(work: Path, settings: dict) -> dict:
    """Open the index mapped read-only (as `vlm serve --read-only` does), then the exact baseline."""
    start_rss = _status("VmRSS")
    folder = work / "index"
    record = SnapshotRecord(**json.loads((folder / "snapshot.json").read_text()))
    config = FaissConfig(max_index_memory=settings["max_index_memory"], index_factory=settings["index_factory"])
    backend = FaissBackend(folder / "image.faiss", settings["dim"], config, record, writable=False)
    backend.vectors_of = PartRows(work / "parts")
    saved = np.load(work / "truth.npz")
    out: dict = {"mapped": backend.mapped, "recall_at_1": {}, "recall_at_10": {}}
    probes = []
    for m in ("image", "text"):
        queries = saved[f"{m}_queries"]
        found = np.concatenate([backend.search(queries[i:i + 50], K)[1] for i in range(0, len(queries), 50)])
        out["recall_at_1"][m], out["recall_at_10"][m] = (round(r, 4) for r in recalls(found, saved[m]))
        probes.append(queries[:settings["latency_queries"]])
    probes = np.concatenate(probes)
    out["index_ms"] = latency(lambda q: backend.search(q, K), probes)
    out["serving_rss_bytes"] = {"before_open": start_rss, "after_queries": _status("VmRSS"),
                                "peak": _status("VmHWM"),  # VmRSS/VmHWM count mapped file pages too: split them
                                "anon_after_queries": _status("RssAnon"), "file_after_queries": _status("RssFile")}
    out["exact_ms"], out["exact_kind"] = exact_latency(work, settings["dim"], probes, record.count)
    return out


def latency(search, probes: np.ndarray) -> dict[str, float]:
    search(probes[:1])
    times = []
    for q in probes:
        start = time.perf_counter()
        search(q[None])
        times.append((time.perf_counter() - start) * 1000)
    return {"p50": round(float(np.percentile(times, 50)), 3), "p99": round(float(np.percentile(times, 99)), 3)}


def exact_latency(work: Path, dim: int, probes: np.ndarray, n: int) -> tuple[dict[str, float], str]:
    """A flat IndexFlatIP in memory when it fits in FLAT_BASELINE_MAX, else a scan of the float16 parts."""
    import faiss

    if n * dim * 4 <= FLAT_BASELINE_MAX:
        flat = faiss.IndexFlatIP(dim)
        for _, vectors in chunks(work / "parts"):
            flat.add(vectors)
        return latency(lambda q: flat.search(q, K), probes), "IndexFlatIP in memory"
    few = probes[:: max(1, len(probes) // 20)]
    return latency(lambda q: exact_topk(q, chunks(work / "parts"), K), few), "scan of the float16 parts"


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def print_table(report: dict) -> None:
    b, m, t = report["build"], report["measure"], report["build"]["tuning"]
    gib = 2**30
    knob = f"nprobe={t['nprobe']}" if t["nprobe"] else f"efSearch={t['ef_search']}" if t["ef_search"] else "exact"
    knob += f", top {t['refine']} rescored exactly" if t.get("refine") else ""
    rows = [
        ("items x dim", f"{report['items']:,} x {report['dim']} ({report['clusters']} clusters)"),
        ("structure", f"{t['factory']} ({b['structure']}), {knob}, target recall@10 {t['target_recall']} "
                      f"{'reached' if t['reached'] else 'NOT reached (best tried)'}"),
        ("build peak RSS", f"{b['peak_rss_bytes'] / gib:.2f} GiB"),
        ("build time", f"{t['build_s']:.0f} s train+add, {b['total_s']:.0f} s with tuning and save"),
        ("index size", f"{b['index_bytes'] / gib:.3f} GiB, {t['bytes_per_vector']:.1f} B/vector"),
        ("recall@1 image|text", f"{m['recall_at_1']['image']:.3f} | {m['recall_at_1']['text']:.3f}"),
        ("recall@10 image|text", f"{m['recall_at_10']['image']:.3f} | {m['recall_at_10']['text']:.3f}"),
        ("p50|p99 ms, index", f"{m['index_ms']['p50']:.2f} | {m['index_ms']['p99']:.2f} (k=10, one query)"),
        ("p50|p99 ms, exact", f"{m['exact_ms']['p50']:.2f} | {m['exact_ms']['p99']:.2f} ({m['exact_kind']})"),
        ("serving RSS", f"{m['serving_rss_bytes']['peak'] / gib:.2f} GiB peak (mapped={m['mapped']}; "
                        f"{m['serving_rss_bytes']['before_open'] / gib:.2f} GiB before opening)"),
        ("serving RSS split", f"{m['serving_rss_bytes'].get('anon_after_queries', 0) / gib:.2f} GiB private, "
                              f"{m['serving_rss_bytes'].get('file_after_queries', 0) / gib:.2f} GiB mapped file "
                              "pages (reclaimable), after the queries"),
        ("cpu", f"{report['cpu']}, {report['cores']} cores"),
    ]
    for name, value in rows:
        print(f"{name:<22} {value}")


def main(argv: list[str]) -> None:
    mode, work, settings = argv[0], Path(argv[1]), json.loads(argv[2])
    result = {"build": build, "measure": measure}[mode](work, settings)
    with atomic_write(work / f"{mode}.json", "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
