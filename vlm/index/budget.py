"""A faiss index sized to a memory budget, built by streaming (never all vectors in memory at once).

`choose_factory(n, dim, budget)` picks the structure as autofaiss does (its `get_optimal_index_keys_v2` served as
the reference; autofaiss itself cannot be a dependency: it pins numpy<2 and pandas<3 and fails under faiss 1.15):
exact `Flat` while it fits and n <= 1M (a flat scan of 1M x 512 is ~50 ms), else `HNSW` (M 32 or 16), else
`IVF,Flat`, else `OPQ+IVF+PQ` with the largest code that fits. An explicit factory string wins.

`build_streaming` trains on a uniform sample (one pass over the chunks), then adds the vectors chunk by chunk.
IVF indexes keep the callers' ids themselves (`add_with_ids`, removed in place by `remove_ids`); flat and HNSW
ones sit in an `IndexIDMap2`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

Chunks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]  # a fresh pass of (ids int64, vectors float32)
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
IDMAP_BYTES = 8 + 48  # IndexIDMap2: an int64 id plus its entry in the reverse hash map
NLIST_MAX = 8192  # k-means of 8192 centroids on 40 x 8192 samples of 512-d takes minutes on 2 cores; 65536
#                   (autofaiss' pick at 10M) takes hours there; at 10M the 8192 lists of ~1,220 vectors reach
#                   recall@10 0.97 at nprobe 1 with re-ranking (docs/BENCHMARKS.md)
TRAIN_PER_CENTROID = 40  # faiss warns below 39 training points per centroid
PQ_TRAIN_MIN = 256 * 40  # 8-bit codes: 256 centroids per sub-quantizer
EXACT_MAX = 1_000_000
OPQ_ITERATIONS = 10  # the rotation's gain levels off after a few alternations
QUANTIZER_EF_SEARCH = 256  # an HNSW coarse quantizer (--index-factory IVFn_HNSWm): 1.0 of vectors in their list


def parse_size(text: str) -> int:
    """'4G', '512M', '2.5GB', '1000000' -> bytes (powers of 1024); a bad size is one line naming it."""
    match = SIZE.match(str(text))
    if not match:
        raise ValueError(f"memory size must look like 4G, 512M or 2.5GB, got {text!r}")
    return int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2).upper() or " "))


def nlist_for(n: int) -> int:
    """About 4 * sqrt(n) lists, a power of two, at most NLIST_MAX and at least 39 vectors a list."""
    nlist = min(2 ** round(math.log2(max(1.0, 4 * math.sqrt(n)))), NLIST_MAX, max(1, n // 39))
    return 2 ** int(math.log2(nlist))


def ivf_prefix(n: int) -> str:
    """An exact coarse quantizer: at NLIST_MAX lists it costs ~1 ms a query. An HNSW one (autofaiss' pick past
    4k lists) at faiss' efSearch 16 put 13% of 10M vectors in the wrong list, which capped recall@10 at 0.77."""
    return f"IVF{nlist_for(n)}"


def pq_codes(dim: int) -> list[int]:
    """PQ code sizes (bytes, 8 bits each) that divide dim, largest first, at most dim / 2 and 256."""
    return [m for m in range(min(dim // 2, 256), 3, -1) if dim % m == 0 and m & (m - 1) == 0]


def memory_of(kind: str, n: int, dim: int, code: int = 0) -> int:
    """Bytes an index of this kind holds in memory (the estimates the chooser compares with the budget)."""
    nlist = nlist_for(n)
    if kind == "flat":
        return n * (4 * dim + IDMAP_BYTES)
    if kind.startswith("hnsw"):
        m = int(kind[4:])
        return int(n * (4 * dim + 2 * m * 4 * 1.1 + 16 + IDMAP_BYTES))
    if kind == "ivf":
        return n * (4 * dim + 8) + nlist * dim * 4 * 2
    return n * (code + 8) + nlist * dim * 4 * 2 + dim * dim * 4 + 256 * dim * 4  # OPQ+IVF+PQ


def choose_factory(n: int, dim: int, budget: int, exact_max: int = EXACT_MAX) -> str:
    """The faiss factory string for n vectors of `dim` in `budget` bytes; ValueError when nothing fits."""
    if n <= exact_max and memory_of("flat", n, dim) <= budget:
        return "Flat"
    for m in (32, 16):
        if memory_of(f"hnsw{m}", n, dim) <= budget:
            return f"HNSW{m}"
    if memory_of("ivf", n, dim) <= budget:
        return f"{ivf_prefix(n)},Flat"
    for code in pq_codes(dim):
        if memory_of("pq", n, dim, code) <= budget:
            return f"OPQ{code}_{dim},{ivf_prefix(n)},PQ{code}x8"
    code = min(pq_codes(dim) or [4])
    raise ValueError(f"--max-index-memory {human(budget)}: no index of {n:,} vectors of dimension {dim} fits; the "
                     f"smallest (OPQ+IVF+PQ{code}) needs {human(memory_of('pq', n, dim, code))}")


def human(size: float) -> str:
    for unit in ("B", "K", "M", "G"):
        if size < 1024:
            return f"{size:.3g}{unit}"
        size /= 1024
    return f"{size:.3g}T"


@dataclass(frozen=True)
class Sample:
    ids: np.ndarray
    vectors: np.ndarray


def sample_rows(chunks: Iterable[tuple[np.ndarray, np.ndarray]], n: int, size: int, seed: int = 0) -> Sample:
    """A uniform sample of about `size` rows in one pass (each row kept with probability size / n): a folder's
    or a part's order (by class, by source) never biases the training set."""
    rng = np.random.default_rng(seed)
    p = min(1.0, 1.05 * size / max(n, 1))
    ids, vectors, held = [], [], 0
    for chunk_ids, chunk in chunks:
        keep = rng.random(len(chunk)) < p
        ids.append(np.asarray(chunk_ids)[keep])
        vectors.append(np.asarray(chunk[keep], dtype=np.float32))
        held += int(keep.sum())
        if held >= size:
            break
    if not vectors:
        return Sample(np.zeros(0, np.int64), np.zeros((0, 0), np.float32))
    return Sample(np.concatenate(ids)[:size], np.concatenate(vectors)[:size])


def train_size(factory: str, n: int) -> int:
    match = re.search(r"IVF(\d+)", factory)
    size = TRAIN_PER_CENTROID * int(match.group(1)) if match else 0
    if "PQ" in factory:
        size = max(size, PQ_TRAIN_MIN)
    return min(n, size)


def empty_index(factory: str, dim: int):
    """The untrained index of a factory string; flat and HNSW wrapped in an IndexIDMap2 (IVF keeps ids)."""
    import faiss

    try:
        index = (faiss.IndexFlatIP(dim) if factory == "Flat"
                 else faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT))
    except RuntimeError as e:
        raise ValueError(f"--index-factory {factory!r}: faiss cannot build it ({str(e).splitlines()[-1]})") from None
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None and not isinstance(index, faiss.IndexIDMap2):
        return faiss.IndexIDMap2(index)
    if isinstance(index, faiss.IndexPreTransform):
        opq = faiss.downcast_VectorTransform(index.chain.at(0))
        if isinstance(opq, faiss.OPQMatrix):
            opq.niter, opq.niter_pq_0 = OPQ_ITERATIONS, OPQ_ITERATIONS  # faiss: 50 and 40; hours less on 2 cores
            opq.max_train_points = 32_768  # faiss: 65,536
    if ivf is not None and isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW):
        faiss.downcast_index(ivf.quantizer).hnsw.efSearch = QUANTIZER_EF_SEARCH  # saved with the index
    if isinstance(faiss.downcast_index(ivf), faiss.IndexIVFPQ):
        ivfpq = faiss.downcast_index(ivf)
        ivfpq.do_polysemous_training = False  # the factory's default; slow, and unused here
        ivfpq.pq.cp.niter = OPQ_ITERATIONS  # k-means of each sub-quantizer (faiss: 25)
    return index


def build_streaming(factory: str, dim: int, chunks: Chunks, n: int, seed: int = 0):
    """Train on a sample (one pass), then add every chunk (a second pass): memory is the index, the sample and
    one chunk."""
    import faiss

    index = empty_index(factory, dim)
    if not index.is_trained:
        sample = sample_rows(chunks(), n, train_size(factory, n), seed)
        if len(sample.vectors) == 0:
            raise ValueError(f"index {factory!r} must be trained, and there are no vectors to train it on")
        index.train(sample.vectors)
        del sample
    for ids, vectors in chunks():
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(16, ivf.nlist)
    return index


def in_chunks(ids: np.ndarray, vectors: np.ndarray, rows: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(ids), rows):
        yield ids[start:start + rows], vectors[start:start + rows]
