"""An index sized to a memory budget (issue 25): the chooser, the streamed build, recall recorded in index.json,
and deletes that never rebuild the index."""

from __future__ import annotations

import json

import numpy as np
import pytest

import vlm.index
from vlm.index.backends import FaissBackend, FaissConfig
from vlm.index.budget import build_streaming, choose_factory, empty_index, in_chunks, parse_size, sample_rows
from vlm.index.config import IndexConfig, read_config
from vlm.index.errors import IndexFolderError
from vlm.index.folder import ItemIndex
from vlm.index.store import Item
from vlm.index.tuning import exact_topk, recalls

DIM = 32


def clustered(n: int, dim: int = DIM, clusters: int = 50, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("n, dim, budget, exact_max, want", [
    (5_000, 32, "10M", 1_000_000, "Flat"),  # flat fits
    (5_000, 32, "10M", 1_000, "HNSW32"),  # too many for exact search, HNSW fits
    (5_000, 32, "2M", 1_000, "HNSW16"),
    (5_000, 32, "900K", 1_000, "IVF128,Flat"),
    (5_000, 32, "200K", 1_000, "OPQ16_32,IVF128,PQ16x8"),  # tight: PQ, the largest code that fits
    (5_000, 32, "150K", 1_000, "OPQ8_32,IVF128,PQ8x8"),
    (10_000_000, 512, "2G", 1_000_000, "OPQ128_512,IVF8192,PQ128x8"),  # the acceptance run: 136 B a vector
])
def test_the_chooser_picks_the_largest_structure_that_fits(n, dim, budget, exact_max, want):
    assert choose_factory(n, dim, parse_size(budget), exact_max) == want


def test_a_budget_nothing_fits_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^--max-index-memory 50K: no index of 5,000 vectors of dimension 32 "
                                         r"fits; the smallest \(OPQ\+IVF\+PQ4\) needs [\d.]+K$"):
        choose_factory(5_000, 32, parse_size("50K"))
    with pytest.raises(ValueError, match="memory size must look like 4G"):
        FaissConfig(max_index_memory="lots")


def test_a_streamed_build_equals_one_built_in_memory():
    x, ids = clustered(4_000), np.arange(4_000, dtype=np.int64) * 3 + 1
    factory = "IVF32,PQ8x6"
    streamed = build_streaming(factory, DIM, lambda: in_chunks(ids, x, rows=777), len(x))
    whole = empty_index(factory, DIM)
    whole.train(sample_rows([(ids, x)], len(x), 4_000).vectors)
    whole.add_with_ids(x, ids)
    whole.nprobe = streamed.nprobe = 8
    q = clustered(50, seed=1)
    assert np.array_equal(streamed.search(q, 10)[1], whole.search(q, 10)[1])
    assert set(streamed.search(x[:5], 1)[1].ravel()) <= set(ids)  # the callers' ids, not row numbers


def items(n: int) -> list[Item]:
    image, text = clustered(n), clustered(n, seed=2) * 0.6 + 0.4  # text vectors sit apart, as captions do
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return [Item(path=f"{i}.jpg", caption=f"c{i}", image_vec=image[i], text_vec=text[i]) for i in range(n)]


def test_a_budgeted_folder_records_recall_and_serves_search(tmp_path):
    folder = tmp_path / "index"
    index = ItemIndex(folder, IndexConfig(dim=DIM, faiss=FaissConfig(max_index_memory="800K", exact_max=1_000)))
    added = index.add(items(4_000), index_vectors=False)  # as a build: the table first, faiss at the next open
    index.close()
    index = vlm.index.open(folder)
    assert index.info()["search_structure"] == {"image": "ivf", "text": "ivf"}
    tuning = read_config(folder).faiss.tuning
    for modality in ("image", "text"):
        record = tuning[modality]
        assert record.factory == "IVF64,Flat" and record.vectors == 4_000 and record.nprobe >= 1
        assert set(record.recall_at_10) == {"image", "text"} and record.queries == 500
        assert record.reached == (min(record.recall_at_10.values()) >= 0.95)
        assert 4 * DIM < record.bytes_per_vector < 4 * DIM + 16 and record.p99_ms >= record.p50_ms > 0
    item = index.get(added[7], vectors=True)
    assert index.search(item.image_vec, k=5)[0][0].item.id == added[7]
    index.close()
    reader = vlm.index.open(folder, read_only=True)  # memory-mapped
    assert reader.backends["image"].mapped and reader.search(item.image_vec, k=5)[0][0].item.id == added[7]
    reader.close()


def test_a_bad_tuning_record_is_one_line_naming_the_field(tmp_path):
    ItemIndex(tmp_path, IndexConfig(dim=DIM)).close()
    data = json.loads((tmp_path / "index.json").read_text())
    data["faiss"]["tuning"] = {"image": {"factory": "Flat", "vectors": 3, "bytes_per_vector": 1.0,
                                         "recall_at_10": {"image": "high"}}}
    (tmp_path / "index.json").write_text(json.dumps(data))
    with pytest.raises(IndexFolderError, match=r"field 'faiss.tuning.image.recall_at_10' must be dict\[str, float\]"):
        read_config(tmp_path)
    data["faiss"] = {"max_index_memory": "4 gigs"}
    (tmp_path / "index.json").write_text(json.dumps(data))
    with pytest.raises(IndexFolderError, match="field 'faiss.max_index_memory' memory size must look like 4G"):
        read_config(tmp_path)


@pytest.mark.parametrize("factory", ["IVF64,PQ8x8", "HNSW16"])
def test_a_delete_never_rebuilds_and_deleted_ids_never_come_back(tmp_path, factory):
    x, ids = clustered(5_000), np.arange(5_000, dtype=np.int64) + 10
    backend = FaissBackend(tmp_path / "image.faiss", DIM, FaissConfig(index_factory=factory))
    backend.rebuild(ids, x)
    before = backend.index
    gone = ids[:300]
    backend.delete(gone)
    record = backend.save()
    assert backend.index is before  # the same index object: removed in place (IVF) or tombstoned (HNSW)

    def returned(b: FaissBackend) -> set[int]:
        return set(b.search(x[:300], 10)[1].ravel().tolist())

    assert not returned(backend) & set(gone.tolist()) and not set(backend.ids()) & set(gone.tolist())
    for writable in (True, False):  # reopened, and memory-mapped read-only
        again = FaissBackend(tmp_path / "image.faiss", DIM, FaissConfig(index_factory=factory), record, writable)
        assert again.rejected is None and again.mapped == (not writable)
        assert not returned(again) & set(gone.tolist()) and len(again.ids()) == 4_700
        assert returned(again) & set(ids[300:].tolist())


def test_hnsw_tombstones_are_compacted_once_past_a_fifth(tmp_path):
    x, ids = clustered(2_000), np.arange(2_000, dtype=np.int64)
    backend = FaissBackend(tmp_path / "image.faiss", DIM, FaissConfig(index_factory="HNSW16"))
    backend.rebuild(ids, x)
    backend.delete(ids[:300])
    assert backend.save().count == 2_000  # 15%: kept as tombstones
    backend.delete(ids[300:500])
    assert backend.save().count == 1_500 and backend.kind == "hnsw"  # 25%: rebuilt without them
    assert not set(backend.search(x[:500], 10)[1].ravel().tolist()) & set(range(500))


def test_bench_index_measures_a_mapped_index_and_reuses_the_build(tmp_path, capsys):
    import argparse

    from vlm.bench.index import register_bench

    parser = argparse.ArgumentParser()
    register_bench(parser.add_subparsers())
    common = ["index", "--items", "3000", "--dim", "32", "--clusters", "30", "--index-factory", "IVF32,Flat",
              "--queries", "100", "--latency-queries", "20", "--work", str(tmp_path)]
    args = parser.parse_args(common)
    assert args.func(args) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    tuning = read_config(tmp_path / "index").faiss.tuning["image"]  # recorded in the index's own index.json
    assert tuning.factory == "IVF32,Flat" and set(tuning.recall_at_10) == {"image", "text"}
    assert report["measure"]["mapped"] and report["build"]["peak_rss_bytes"] > 0
    assert min(report["measure"]["recall_at_10"].values()) >= 0.9 or not tuning.reached
    built = (tmp_path / "index" / "image.faiss").stat().st_mtime_ns
    args = parser.parse_args([*common, "--reuse"])
    assert args.func(args) == 0 and (tmp_path / "index" / "image.faiss").stat().st_mtime_ns == built
    assert "recall@10 image|text" in capsys.readouterr().out


@pytest.mark.slow  # ~40 s under load: a CLI build and a server start
def test_a_folder_built_with_a_budget_by_the_cli_serves_http_search(tmp_path):
    import httpx
    from PIL import Image
    from test_serve_api import make_collection, png_base64

    from vlm.cli import main
    from vlm.serve.process import ServerProcess

    collection = make_collection(tmp_path)
    out = tmp_path / "budgeted"
    assert main(["index", "build", "--checkpoint", str(collection["checkpoint"]), "--data",
                 str(tmp_path / "pairs.csv"), "--out", str(out), "--exact-max", "4", "--max-index-memory", "1M"]) == 0
    config = read_config(out)
    assert config.faiss.max_index_memory == "1M" and config.faiss.tuning["image"].factory == "HNSW32"
    with ServerProcess(collection["checkpoint"], out, log_path=tmp_path / "server.log") as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        image = Image.open(tmp_path / "images" / "5.png")
        results = http.post("/v1/search", json={"image": png_base64(image), "k": 3}).json()["results"]
        assert results[0]["caption"] == collection["captions"][5]
        assert http.get("/v1/stats").json()["index"]["items"] == 12


def test_a_pq_index_reranks_its_candidates_with_the_stored_vectors(tmp_path):
    x, ids = clustered(5_000), np.arange(5_000, dtype=np.int64)
    backend = FaissBackend(tmp_path / "image.faiss", DIM, FaissConfig(index_factory="IVF64,PQ4x8", nprobe=64))
    backend.rebuild(ids, x)
    q = clustered(200, seed=3)
    truth = exact_topk(q, [(ids, x)], 10)
    codes_only = recalls(backend.search(q, 10)[1], truth)[1]
    backend.vectors_of = lambda wanted: x[wanted]  # the table's (or parts') exact vectors
    scores, found = backend.search(q, 10)
    assert recalls(found, truth)[1] >= 0.95 > codes_only + 0.2
    assert np.allclose(scores[:, 0], np.einsum("qd,qd->q", q, x[found[:, 0]]), atol=1e-5)  # exact scores


def test_an_hnsw_coarse_quantizer_searches_deep_enough_to_put_vectors_in_their_list():
    """At faiss' default efSearch 16, an HNSW quantizer over 8192 lists put 13% of 10M vectors in the wrong list."""
    import faiss

    from vlm.index.budget import QUANTIZER_EF_SEARCH

    index = empty_index("IVF64_HNSW32,Flat", 16)
    quantizer = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
    assert quantizer.hnsw.efSearch == QUANTIZER_EF_SEARCH >= 128
    assert "HNSW" not in choose_factory(10_000_000, 512, parse_size("2G"))  # the budget's own pick is exact
