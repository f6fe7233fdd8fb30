"""`vlm index build` and `vlm index info`: sources, resuming, atomic replacement, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_index_backends import needs_milvus
from test_serve_api import draw, make_collection

from data_pipelines.sample import bad_file_rule
from vlm.cli import main
from vlm.index import FaissConfig, ItemIndex
from vlm.index import embed as embed_module
from vlm.index.build import BuildOptions, build_index


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> dict:
    return make_collection(tmp_path_factory.mktemp("build"))


def test_pairs_source_gives_one_item_per_image_with_both_vectors(collection):
    index = ItemIndex(collection["index"])
    assert len(index) == 12 and index.info()["vectors"] == {"image": 12, "text": 12}
    item = index.get(3, vectors=True)
    assert item.caption == collection["captions"][2]  # ids follow the order of pairs.csv
    assert item.extra["image_id"] and np.linalg.norm(item.image_vec) == pytest.approx(1.0, abs=1e-5)
    index.close()


def test_plain_image_folder_is_indexed_recursively(collection, tmp_path):
    folder = tmp_path / "photos"
    (folder / "holiday").mkdir(parents=True)
    draw("red", "circle").save(folder / "a.png")
    draw("blue", "square").save(folder / "holiday" / "b.jpg")
    (folder / "broken.png").write_bytes(b"not a png")
    with bad_file_rule(0.5):  # 1 of 3 bad: over the default 1%, as for every command
        out = build_index(collection["checkpoint"], folder, tmp_path / "index", BuildOptions(progress=False))
    index = ItemIndex(out)
    items = index.get_many([1, 2])
    assert sorted(it.extra["image_id"] for it in items) == ["a.png", "holiday/b.jpg"]
    assert all(it.caption is None and it.path.endswith((".png", ".jpg")) for it in items)
    assert index.info()["vectors"] == {"image": 2, "text": 0}
    index.close()


def test_folder_without_top_level_images_is_read_as_an_imagefolder(collection, tmp_path):
    folder = tmp_path / "classes"
    (folder / "circle" / "deeper").mkdir(parents=True)
    (folder / "square").mkdir()
    draw("red", "circle").save(folder / "circle" / "a.png")
    draw("blue", "square").save(folder / "square" / "b.png")
    draw("green", "circle").save(folder / "circle" / "deeper" / "c.png")  # two levels down: not indexed
    out = build_index(collection["checkpoint"], folder, tmp_path / "index", BuildOptions(progress=False))
    index = ItemIndex(out)
    assert len(index) == 2
    extras = sorted((it.extra["image_id"], it.extra["label"], it.extra["classname"]) for it in index.get_many([1, 2]))
    assert extras == [("circle/a.png", 0, "circle"), ("square/b.png", 1, "square")]
    index.close()


def test_interrupted_build_resumes_without_redoing_batches(collection, tmp_path, monkeypatch):
    encoded = []
    real_add_batch = embed_module._add_batch

    def add_batch_then_crash(*args, **kwargs):
        if len(encoded) == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during the third batch
        encoded.append(len(args[1]))
        return real_add_batch(*args, **kwargs)

    monkeypatch.setattr(embed_module, "_add_batch", add_batch_then_crash)
    out = tmp_path / "index"
    options = BuildOptions(batch_size=4, part_size=4, progress=False, faiss=FaissConfig(exact_max=10))  # 8, then 12
    with pytest.raises(KeyboardInterrupt):
        build_index(collection["checkpoint"], collection["root"] / "pairs.csv", out, options)
    assert not out.exists() and (tmp_path / "index.partial").is_dir()

    calls = []
    monkeypatch.setattr(embed_module, "_add_batch", lambda *a, **k: calls.append(len(a[1])) or real_add_batch(*a, **k))
    build_index(collection["checkpoint"], collection["root"] / "pairs.csv", out, options)
    assert calls == [4]  # only the batch that was not committed
    index = ItemIndex(out)
    assert len(index) == 12 and len({it.extra["image_id"] for it in index.get_many(list(range(1, 13)))}) == 12
    assert index.info()["search_structure"] == {"image": "hnsw", "text": "hnsw"}  # chosen from all 12, not 8
    index.close()
    assert not (tmp_path / "index.partial").exists()


def test_existing_index_is_replaced_only_when_asked(collection, tmp_path, capsys):
    args = ["index", "build", "--checkpoint", str(collection["checkpoint"]), "--data",
            str(collection["root"] / "pairs.csv"), "--out", str(collection["index"])]
    assert main(args) == 2
    assert "already there" in capsys.readouterr().err
    out = tmp_path / "copy"
    assert main([*args[:-1], str(out)]) == 0
    assert main([*args[:-1], str(out), "--overwrite"]) == 0
    assert len(ItemIndex(out)) == 12


def test_early_fusion_checkpoint_is_refused_with_a_clear_message(collection, tmp_path, capsys):
    assert main(["index", "build", "--checkpoint", str(collection["fusion"]), "--data",
                 str(collection["root"] / "pairs.csv"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "late-fusion" in err and "--rerank-checkpoint" in err and len(err.strip().splitlines()) == 1


def test_index_info_prints_size_model_and_source(collection, capsys):
    assert main(["index", "info", str(collection["index"])]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["items"] == 12 and info["model"] == "clip-tiny" and info["dim"] == 32
    assert info["source"].endswith("pairs.csv") and info["search_structure"]["image"] == "flat"


@needs_milvus
def test_milvus_lite_build_serves_the_same_answers_as_faiss(collection, tmp_path):
    out = build_index(collection["checkpoint"], collection["root"] / "pairs.csv", tmp_path / "milvus",
                      BuildOptions(backend="milvus", progress=False))
    milvus, faiss = ItemIndex(out), ItemIndex(collection["index"])
    assert milvus.info()["backend"] == "milvus" and (out / "milvus.db").exists()
    vector = np.asarray(faiss.get(5, vectors=True).text_vec)
    assert [h.item.id for h in milvus.search(vector, 5)[0]] == [h.item.id for h in faiss.search(vector, 5)[0]]
    milvus.close()
    faiss.close()
def test_an_image_on_rows_far_apart_in_a_pairs_file_is_indexed_once_per_caption(collection, tmp_path):
    """Captions of one image that are not on adjacent rows (a CSV sorted by caption) are not grouped by a
    streamed read; each becomes an item, and the build never stops on the repeated image."""
    rows = ["image,caption", "images/0.png,a first caption", "images/1.png,another image",
            "images/0.png,a second caption of image 0"]
    (collection["root"] / "far.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "far"
    assert main(["index", "build", "--checkpoint", str(collection["checkpoint"]), "--data",
                 str(collection["root"] / "far.csv"), "--out", str(out)]) == 0
    index = ItemIndex(out)
    try:
        captions = sorted(item.caption for item in index.get_many([1, 2, 3]))
        assert captions == ["a first caption", "a second caption of image 0", "another image"]
        assert len(index) == 3
    finally:
        index.close()
