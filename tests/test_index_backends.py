"""One index API test suite, run against faiss and against milvus-lite."""

from __future__ import annotations

import importlib.util
import sqlite3

import numpy as np
import pytest

from vlm.index import (
    FaissBackend,
    FaissConfig,
    IndexConfig,
    IndexFolderError,
    Item,
    ItemIndex,
    ItemStore,
    MilvusBackend,
)

DIM = 16
HAS_MILVUS_LITE = importlib.util.find_spec("milvus_lite") is not None and importlib.util.find_spec("pymilvus")
needs_milvus = pytest.mark.skipif(not HAS_MILVUS_LITE, reason="milvus-lite is not installed (pip install milvus-lite)")
BACKENDS = ["faiss", pytest.param("milvus", marks=needs_milvus)]


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_items(n: int, seed: int = 0) -> list[Item]:
    images, texts = unit_vectors(n, seed), unit_vectors(n, seed + 100)
    return [Item(path=f"img{i}.png", caption=f"caption {i}", extra={"n": i}, image_vec=images[i], text_vec=texts[i])
            for i in range(n)]


@pytest.fixture(params=BACKENDS)
def backend_name(request) -> str:
    return request.param


@pytest.fixture
def index(tmp_path, backend_name):
    index = ItemIndex(tmp_path / "idx", IndexConfig(dim=DIM, backend=backend_name))
    yield index
    index.close()


def test_each_added_image_is_its_own_nearest_neighbour(index):
    items = make_items(40)
    ids = index.add(items)
    hits = index.search(np.stack([it.image_vec for it in items]), k=3)
    assert [row[0].item.id for row in hits] == ids
    assert all(row[0].score == pytest.approx(1.0, abs=1e-4) for row in hits)
    assert hits[0][0].item.caption == "caption 0" and hits[0][0].item.extra == {"n": 0}
    assert all(row[0].score >= row[1].score >= row[2].score for row in hits)


def test_text_vectors_are_searchable_as_their_own_modality(index):
    items = make_items(10)
    ids = index.add(items)
    hits = index.search(items[7].text_vec, k=1, modality="text")
    assert hits[0][0].item.id == ids[7]


def test_get_by_id_returns_metadata_and_vectors(index):
    items = make_items(5)
    ids = index.add(items)
    item = index.get(ids[2], vectors=True)
    assert (item.path, item.caption, item.extra) == ("img2.png", "caption 2", {"n": 2})
    np.testing.assert_allclose(item.image_vec, items[2].image_vec)
    np.testing.assert_allclose(index.backends["image"].get(np.array([ids[2]]))[0], items[2].image_vec, atol=1e-6)
    assert index.get(10_000) is None


def test_deleted_item_is_gone_from_get_and_search(index):
    items = make_items(10)
    ids = index.add(items)
    assert index.delete(ids[3])
    assert not index.delete(ids[3])
    assert index.get(ids[3]) is None
    top = [h.item.id for h in index.search(items[3].image_vec, k=10)[0]]
    assert ids[3] not in top and len(top) == 9
    with pytest.raises(KeyError):
        index.backends["image"].get(np.array([ids[3]]))


def test_k_larger_than_the_index_returns_what_there_is(index):
    index.add(make_items(3))
    assert len(index.search(unit_vectors(1)[0], k=50)[0]) == 3


def test_items_survive_close_and_reopen(tmp_path, backend_name):
    directory = tmp_path / "idx"
    index = ItemIndex(directory, IndexConfig(dim=DIM, backend=backend_name))
    items = make_items(20)
    ids = index.add(items)
    index.delete(ids[0])
    index.close()
    reopened = ItemIndex(directory)
    assert len(reopened) == 19 and reopened.config.backend == backend_name
    assert reopened.search(items[5].image_vec, k=1)[0][0].item.id == ids[5]
    assert sorted(reopened.backends["image"].ids()) == ids[1:]
    reopened.close()


def test_backend_that_missed_changes_is_caught_up_from_the_table(tmp_path, backend_name):
    """What a kill -9 leaves: items committed to SQLite that the vector backend never saw."""
    directory = tmp_path / "idx"
    index = ItemIndex(directory, IndexConfig(dim=DIM, backend=backend_name))
    first = index.add(make_items(5))
    index.save()
    late = make_items(5, seed=7)
    index.store.add(late)  # committed rows only: as if the process died before the backend was updated
    index.store.delete(first[0])
    index.close()
    reopened = ItemIndex(directory)
    assert sorted(reopened.backends["image"].ids()) == sorted(first[1:] + [i.id for i in late])
    assert reopened.search(late[2].image_vec, k=1)[0][0].item.id == late[2].id
    reopened.close()


def test_wrong_dimension_is_a_clear_error(index):
    with pytest.raises(ValueError, match="dimension"):
        index.search(np.ones(DIM + 1, np.float32), k=1)
    with pytest.raises(ValueError, match="dimension 16"):
        index.add([Item(image_vec=np.ones(3, np.float32))])


def test_folder_without_index_is_a_clear_error(tmp_path):
    with pytest.raises(IndexFolderError, match="not a vlm index"):
        ItemIndex(tmp_path)


@pytest.mark.parametrize("approximate", ["hnsw", "ivf"])
def test_faiss_switches_to_approximate_search_above_the_threshold(tmp_path, approximate):
    config = IndexConfig(dim=DIM, faiss=FaissConfig(exact_max=100, approximate=approximate, ivf_nlist=4, nprobe=4))
    directory = tmp_path / "idx"
    built = ItemIndex(directory, config)
    built.store.add(make_items(300))  # as `vlm index build` leaves it
    built.close()
    index = ItemIndex(directory)
    assert index.info()["search_structure"]["image"] == approximate
    queries = np.stack([index.get(i, vectors=True).image_vec for i in (1, 50, 250)])
    assert [row[0].item.id for row in index.search(queries, k=1)] == [1, 50, 250]
    index.delete(50)
    assert 50 not in [h.item.id for h in index.search(queries[1], k=5)[0]]
    index.close()
    assert 50 not in ItemIndex(directory).backends["image"].ids()


def test_exact_faiss_matches_brute_force_numpy(tmp_path):
    vectors = unit_vectors(500)
    backend = FaissBackend(tmp_path / "v.faiss", DIM)
    backend.add(np.arange(500) * 7, vectors)
    queries = unit_vectors(20, seed=3)
    scores, ids = backend.search(queries, k=10)
    expected = np.argsort(-(queries @ vectors.T), axis=1)[:, :10] * 7
    np.testing.assert_array_equal(ids, expected)
    record = backend.save()
    assert len(FaissBackend(tmp_path / "v.faiss", DIM, expected=record)) == 500


@needs_milvus
def test_milvus_backend_persists_in_its_lite_file(tmp_path):
    uri = str(tmp_path / "m.db")
    backend = MilvusBackend(uri, "c", DIM)
    backend.add(np.array([5, 9]), unit_vectors(2))
    backend.close()
    again = MilvusBackend(uri, "c", DIM)
    assert list(again.ids()) == [5, 9]
    assert again.search(unit_vectors(2)[1:], k=1)[1][0, 0] == 9
    again.close()


def test_store_counts_items_and_vectors_per_modality(tmp_path):
    store = ItemStore(tmp_path / "items.sqlite")
    items = make_items(5)
    items[1].text_vec = items[3].text_vec = None
    items[4].image_vec = None
    store.add(items)
    assert (store.count(), store.count("image"), store.count("text")) == (5, 4, 3)
    assert store.count("image") == len(store.ids("image"))
    store.close()


def test_store_reads_vectors_within_stock_sqlite_parameter_limit(tmp_path):
    store = ItemStore(tmp_path / "items.sqlite")
    store._db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 32_766)  # SQLite's default build
    n = 40_000
    vectors = np.ones((n, DIM), dtype=np.float32)
    ids = store.add([Item(image_vec=v) for v in vectors])
    chunks = list(store.vectors("image", np.array(ids)))
    assert sum(len(c[0]) for c in chunks) == n and np.array_equal(np.concatenate([c[0] for c in chunks]), ids)
    store.close()
