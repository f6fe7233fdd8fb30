"""How good an approximate index is, measured against exact search, and the search knob that makes it good enough.

After a budgeted build, nprobe (IVF) or efSearch (HNSW) is set to the smallest value whose recall@10 reaches
`TARGET_RECALL` on every query set, or the best value tried when none does (`reached` says which). Query sets are
held out per modality: image and text vectors sit apart, so an index tuned on images alone can fail text queries.
Exact ground truth streams over the vectors (faiss knn per chunk, a running top-k heap), so it scales to 10M.
The record lands in index.json (`faiss.tuning.<modality>`), read back by vlm/index/config.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from vlm.atomic_io import atomic_write

TARGET_RECALL = 0.95
K = 10
LATENCY_QUERIES = 100  # timed one at a time, per query set


@dataclass(frozen=True)
class QuerySet:
    vectors: np.ndarray  # (Q, D) float32
    own_ids: np.ndarray | None = None  # each query's own item id, left out of its results (leave-one-out)
    truth: np.ndarray | None = None  # the exact top-k ids, when the caller has them already (a benchmark)


@dataclass(frozen=True)
class TuningRecord:
    factory: str
    vectors: int
    bytes_per_vector: float
    nprobe: int = 0  # IVF only
    ef_search: int = 0  # HNSW only
    target_recall: float = TARGET_RECALL
    reached: bool = True  # False: the best value tried, below the target
    queries: int = 0  # per query set
    recall_at_1: dict[str, float] = field(default_factory=dict)  # query set -> recall
    recall_at_10: dict[str, float] = field(default_factory=dict)
    p50_ms: float = 0.0  # one query at a time, k=10
    p99_ms: float = 0.0
    build_s: float = 0.0
    refine: int = 0  # candidates rescored exactly with the stored vectors (0: the codes' own ranking)


def exact_topk(queries: np.ndarray, chunks: Iterable[tuple[np.ndarray, np.ndarray]], k: int) -> np.ndarray:
    """Ids of the exact top-k by inner product, streamed over (ids, vectors) chunks: (Q, k), -1 past the end."""
    import faiss

    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for ids, vectors in chunks:
        scores, rows = faiss.knn(queries, np.ascontiguousarray(vectors, dtype=np.float32), min(k, len(vectors)),
                                 metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, np.where(rows >= 0, np.asarray(ids, dtype=np.int64)[rows], -1))
    heap.finalize()
    return heap.I


def rescore(queries: np.ndarray, ids: np.ndarray, vectors_of, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank candidate ids by their exact inner product with the stored vectors (`vectors_of(sorted ids)`)."""
    known = np.unique(ids[ids >= 0])
    if not len(known):
        return np.full((len(ids), k), -np.inf, np.float32), np.full((len(ids), k), -1, np.int64)
    vectors = np.asarray(vectors_of(known), dtype=np.float32)[np.searchsorted(known, np.maximum(ids, 0))]
    scores = np.einsum("qd,qcd->qc", queries, vectors)
    scores[ids < 0] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def drop_own(found: np.ndarray, own_ids: np.ndarray | None, k: int) -> np.ndarray:
    """The first k ids of each row other than the query's own."""
    if own_ids is None:
        return found[:, :k]
    return np.stack([row[row != own][:k] for row, own in zip(found, own_ids, strict=True)])


def ground_truth(sets: dict[str, QuerySet], chunks, k: int = K) -> dict[str, np.ndarray]:
    """One streamed pass per query set (`chunks()` gives a fresh pass)."""
    return {name: s.truth[:, :k] if s.truth is not None else drop_own(exact_topk(s.vectors, chunks(), k + 1),
                                                                       s.own_ids, k)
            for name, s in sets.items()}


def recalls(found: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(recall@1, recall@10): the exact top-1 ranked first, and the share of the exact top-10 in the top-10."""
    r1 = float(np.mean(found[:, 0] == truth[:, 0]))
    r10 = float(np.mean([len(np.intersect1d(f[f >= 0], t[t >= 0])) / max(1, (t >= 0).sum())
                         for f, t in zip(found[:, :K], truth[:, :K], strict=True)]))
    return r1, r10


def knob(index) -> tuple[str, list[int]]:
    """The search-time knob of an index and the values tried, cheapest first ("" for exact search)."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return "nprobe", [v for v in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if v <= ivf.nlist]
    if hnsw_of(index) is not None:
        return "ef_search", [16, 32, 64, 128, 256, 512, 1024]
    return "", [0]


def hnsw_of(index):
    import faiss

    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    return inner.hnsw if isinstance(inner, faiss.IndexHNSW) else None


def set_knob(index, value: int) -> None:
    import faiss

    name, _ = knob(index)
    if name == "nprobe":
        faiss.extract_index_ivf(index).nprobe = value
    elif name == "ef_search":
        hnsw_of(index).efSearch = value


def measure(searcher, sets: dict[str, QuerySet], truth: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """Recall of `searcher` (anything with faiss' `search(queries, k)`: an index, or a backend that re-ranks)."""
    out = {}
    for name, s in sets.items():
        _, found = searcher.search(np.ascontiguousarray(s.vectors, dtype=np.float32), K + 1)
        out[name] = recalls(drop_own(found, s.own_ids, K), truth[name])
    return out


def tune(index, sets: dict[str, QuerySet], truth: dict[str, np.ndarray], target: float = TARGET_RECALL,
         searcher=None) -> tuple[int, bool, dict[str, tuple[float, float]]]:
    """Set the knob to the smallest value reaching `target` recall@10 on every set, else the best tried;
    returns (value, reached, {set: (recall@1, recall@10)})."""
    _, values = knob(index)
    best = None
    for value in values:
        set_knob(index, value)
        got = measure(searcher or index, sets, truth)
        worst = min(r10 for _, r10 in got.values()) if got else 1.0
        if best is None or worst > best[0]:
            best = (worst, value, got)
        if worst >= target:
            return value, True, got
    set_knob(index, best[1])
    return best[1], False, best[2]


def latency_ms(index, queries: np.ndarray, k: int = K, repeat: int = 1) -> tuple[float, float]:
    """p50 and p99 of one query at a time (a server's case), in milliseconds."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    index.search(queries[:1], k)  # warm-up
    times = []
    for _ in range(repeat):
        for q in queries:
            start = time.perf_counter()
            index.search(q[None], k)
            times.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def evaluate(index, factory: str, sets: dict[str, QuerySet], chunks, index_bytes: int, build_s: float,
             target: float = TARGET_RECALL, searcher=None, refine: int = 0) -> TuningRecord:
    """Tune the knob on these query sets and measure what a user relies on: recall, latency, size."""
    name, _ = knob(index)
    truth = ground_truth(sets, chunks)
    value, reached, got = tune(index, sets, truth, target, searcher)
    probes = [s.vectors[:LATENCY_QUERIES] for s in sets.values()]
    p50, p99 = latency_ms(searcher or index, np.concatenate(probes)) if probes else (0.0, 0.0)
    return TuningRecord(factory=factory, vectors=int(index.ntotal),
                        bytes_per_vector=round(index_bytes / max(1, index.ntotal), 1),
                        nprobe=value if name == "nprobe" else 0, ef_search=value if name == "ef_search" else 0,
                        target_recall=target, reached=reached,
                        queries=min((len(s.vectors) for s in sets.values()), default=0),
                        recall_at_1={n: round(r[0], 4) for n, r in got.items()},
                        recall_at_10={n: round(r[1], 4) for n, r in got.items()},
                        p50_ms=round(p50, 3), p99_ms=round(p99, 3), build_s=round(build_s, 1), refine=refine)


def record_tuning(config_path: Path, modality: str, record: TuningRecord) -> None:
    """Write the record into index.json's `faiss.tuning.<modality>` (atomically; the rest of the file kept)."""
    data = json.loads(Path(config_path).read_bytes())
    data.setdefault("faiss", {}).setdefault("tuning", {})[modality] = asdict(record)
    with atomic_write(config_path, "w") as f:
        json.dump(data, f, indent=2)


def read_tuning(where: str, data: object) -> dict[str, TuningRecord]:
    """index.json's `faiss.tuning`, checked field by field: a bad record is one line naming the field."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: field 'faiss.tuning' must be an object")
    known = {f.name: f for f in fields(TuningRecord)}
    out = {}
    for modality, record in data.items():
        prefix = f"faiss.tuning.{modality}"
        if not isinstance(record, dict):
            raise ValueError(f"{where}: field '{prefix}' must be an object")
        for key, value in record.items():
            if key not in known:
                raise ValueError(f"{where}: unknown field '{prefix}.{key}' (known: {', '.join(known)})")
            if not _typed(known[key].type, value):
                raise ValueError(f"{where}: field '{prefix}.{key}' must be {known[key].type}, got {value!r}")
        out[modality] = TuningRecord(**record)
    return out


def _typed(kind: str, value: object) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return {"str": isinstance(value, str), "int": isinstance(value, int) and not isinstance(value, bool),
            "float": number, "bool": isinstance(value, bool),
            "dict[str, float]": isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                for k, v in value.items())}[kind]


def table_queries(store, count: int = 500, seed: int = 0) -> dict[str, QuerySet]:
    """Held-out queries from an item table: `count` random items' image vectors and as many captions' text
    vectors, each leaving its own item out of the results (leave-one-out)."""
    rng = np.random.default_rng(seed)
    sets = {}
    for modality in ("image", "text"):
        ids = store.ids(modality)
        if len(ids) < 2:
            continue
        chosen = np.sort(rng.choice(ids, size=min(count, len(ids)), replace=False))
        chunks = list(store.vectors(modality, chosen))
        sets[modality] = QuerySet(np.concatenate([c[1] for c in chunks]).astype(np.float32),
                                  np.concatenate([c[0] for c in chunks]))
    return sets
