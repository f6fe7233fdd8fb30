"""Embedding parts (issue 25): `vlm index build` and `vlm index embed` split over torchrun ranks, resume per part
after a SIGKILL without decoding a finished part again, write clip-retrieval's .npy + parquet layout, and read a
pairs file in constant memory."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_serve_api import draw, write_collection

from data_pipelines.pairs import open_pairs
from data_pipelines.sample import SkipStats
from vlm.cli import main
from vlm.index import ItemIndex
from vlm.index.build import BuildOptions, build_index
from vlm.index.parts import iter_vectors, list_parts
from vlm.index.stream import stream_collection

ROOT = Path(__file__).resolve().parents[1]
# Run inside each build subprocess: logs every decoded image, and kills the process with SIGKILL at its first
# decode once KILL_AT parts are finished.
DECODE_HOOK = """
import os, signal
import data_pipelines.images as images
real = images.decode_image
def counted(source, *args, **kwargs):
    with open(os.environ["DECODE_LOG"], "a") as f:
        f.write(f"{source}\\n")
    kill_at, done = os.environ.get("KILL_AT"), os.path.join(os.environ["PARTS"], "done")
    if kill_at and os.path.isdir(done) and len(os.listdir(done)) >= int(kill_at):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(source, *args, **kwargs)
images.decode_image = counted
"""


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("parts")
    written = write_collection(root)
    reference = build_index(root / "clip.pt", root / "pairs.csv", root / "reference",
                            BuildOptions(batch_size=2, part_size=2, progress=False))
    return {**written, "reference": reference}


def by_key(index_dir: Path) -> dict[str, np.ndarray]:
    index = ItemIndex(index_dir, read_only=True)
    items = index.get_many(list(range(1, len(index) + 1)), vectors=True)
    index.close()
    return {it.extra["image_id"]: np.concatenate([it.image_vec, it.text_vec]) for it in items}


def top10(index_dir: Path, queries: np.ndarray) -> list[list[str]]:
    index = ItemIndex(index_dir, read_only=True)
    hits = [[h.item.extra["image_id"] for h in row] for row in index.search(queries, 10, "image")]
    index.close()
    return hits


def vlm_command(args: list[str], env: dict, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    command = [*(launcher or [sys.executable]), "-m", "vlm.cli", *args]
    return subprocess.run(command, env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # four build processes: about 50 s on the shared 2-core machine
def test_build_killed_three_times_ends_as_an_uninterrupted_one_without_decoding_a_finished_part(collection,
                                                                                                 tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(DECODE_HOOK))
    out, log = tmp_path / "index", tmp_path / "decoded.log"
    env = {"PYTHONPATH": f"{hook}{os.pathsep}{ROOT}", "DECODE_LOG": str(log), "PARTS": str(tmp_path / "index.partial"
                                                                                             / "parts")}
    args = ["index", "build", "--checkpoint", str(collection["checkpoint"]), "--data", str(collection["pairs"]),
            "--out", str(out), "--batch-size", "2", "--part-size", "2"]
    for kill_at in (1, 2, 3):  # killed after 1, 2 and 3 of the 6 parts are finished
        result = vlm_command(args, {**env, "KILL_AT": str(kill_at)})
        assert result.returncode == -9, result.stderr
        assert len(list_parts(tmp_path / "index.partial" / "parts")) == kill_at
    result = vlm_command(args, env)
    assert result.returncode == 0, result.stderr
    decoded = log.read_text().splitlines()
    # 12 images, plus the first image of each part a kill interrupted, decoded again when its part was redone
    assert len(decoded) == 12 + 3 and len(set(decoded)) == 12
    assert sorted(decoded.count(p) for p in set(decoded)) == [1] * 9 + [2] * 3
    built, reference = by_key(out), by_key(collection["reference"])
    assert built.keys() == reference.keys()
    assert all(np.array_equal(built[k], reference[k]) for k in reference)
    queries = np.stack([v[len(v) // 2:] for v in list(reference.values())[:4]])  # text vectors as queries
    assert top10(out, queries) == top10(collection["reference"], queries)


@pytest.mark.slow  # torchrun starts two ranks: about 20 s
def test_two_torchrun_ranks_embed_what_one_rank_does(collection, tmp_path):
    out = tmp_path / "index"
    launcher = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2"]
    result = vlm_command(["index", "build", "--checkpoint", str(collection["checkpoint"]), "--data",
                          str(collection["pairs"]), "--out", str(out), "--batch-size", "2", "--part-size", "2"],
                         {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    tags = [p.tag for p in list_parts(out / "parts")]
    assert tags == ["000_000000", "000_000001", "000_000002", "001_000000", "001_000001", "001_000002"]
    built, reference = by_key(out), by_key(collection["reference"])
    assert built.keys() == reference.keys()
    assert max(float(np.abs(built[k] - reference[k]).max()) for k in reference) < 1e-3


def test_resume_with_another_part_size_or_world_size_is_refused_in_one_line(collection, tmp_path, capsys):
    args = ["index", "embed", "--checkpoint", str(collection["checkpoint"]), "--data", str(collection["pairs"]),
            "--out", str(tmp_path / "parts"), "--part-size", "4"]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args[:-1], "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "parts.json" in err[0] and "'part_size' is 4" in err[0]
    header = json.loads((tmp_path / "parts" / "parts.json").read_text())
    (tmp_path / "parts" / "parts.json").write_text(json.dumps({**header, "world_size": 2}))  # as torchrun wrote
    assert main(args) == 2
    assert "'world_size' is 2, this run's is 1" in capsys.readouterr().err


def test_parts_are_npy_and_parquet_as_the_format_says(collection, tmp_path):
    parts = tmp_path / "parts"
    assert main(["index", "embed", "--checkpoint", str(collection["checkpoint"]), "--data", str(collection["pairs"]),
                 "--out", str(parts), "--part-size", "5"]) == 0
    header = json.loads((parts / "parts.json").read_text())
    assert header["dim"] == 32 and header["dtype"] == "float16" and header["world_size"] == 1
    assert header["part_size"] == 5 and header["weights"] and header["source"].endswith("pairs.csv")
    for tag, rows in (("000_000000", 5), ("000_000001", 5), ("000_000002", 2)):
        image = np.load(parts / "img_emb" / f"img_emb_{tag}.npy")
        text = np.load(parts / "text_emb" / f"text_emb_{tag}.npy")
        meta = pq.read_table(parts / "metadata" / f"metadata_{tag}.parquet")
        assert image.shape == text.shape == (rows, 32) and image.dtype == np.float16
        assert np.allclose(np.linalg.norm(image.astype(np.float32), axis=1), 1, atol=1e-2)
        assert meta.column_names == ["key", "image_path", "shard", "caption", "has_text", "extra"]
        done = json.loads((parts / "done" / f"{tag}.json").read_text())
        assert done["rows"] == rows and set(done["sha256"]) == set(done["bytes"])
    first = pq.read_table(parts / "metadata" / "metadata_000_000000.parquet").to_pylist()[0]
    assert first["image_path"] == "images/0.png" and first["caption"] == "a red circle" and first["has_text"]
    reference = by_key(collection["reference"])["images/0.png"][:32]
    assert np.allclose(next(iter_vectors(parts, "image", 3))[0], reference, atol=1e-3)
    assert sum(len(b) for b in iter_vectors(parts, "text", 3)) == 12


def test_a_pairs_file_is_streamed_not_held(tmp_path):
    draw("red", "circle").save(tmp_path / "a.png")
    with open(tmp_path / "big.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("image", "caption", "id"))
        writer.writerows(("a.png", f"caption number {i}", f"img{i}") for i in range(5_000))
    tracemalloc.start()
    try:
        entries = stream_collection(tmp_path / "big.csv", None, {"id_column": "id"}, SkipStats())
        count = sum(1 for _ in entries)  # no image is decoded: entries decode on demand
        streamed = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        held = open_pairs(tmp_path / "big.csv", id_column="id")
        loaded = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == len(held) == 5_000
    # measured: 75 KB streamed at 5,000 rows and 83 KB at 20,000, against 3.2 MB and 12.7 MB held
    assert streamed < 256 * 2**10 and loaded > 10 * streamed


def test_an_imagefolder_tree_is_streamed_with_its_loaders_keys_and_labels(tmp_path):
    from data_pipelines.imagefolder import open_imagefolder

    root = tmp_path / "tree"
    for colour, shape in (("red", "circle"), ("blue", "square"), ("green", "circle")):
        (root / f"{colour}_{shape}").mkdir(parents=True)
        for i in range(400):
            (root / f"{colour}_{shape}" / f"{i:04d}.png").write_bytes(b"")  # listed, never decoded here
    (root / "empty").mkdir()  # not a class: skipped by both readers
    draw("red", "circle").save(root / "red_circle" / "0000.png")
    tracemalloc.start()
    try:
        count = sum(1 for _ in stream_collection(root, None, {}, SkipStats()))
        streamed = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        held = open_imagefolder(root)
        loaded = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == len(held) == 1_200 and loaded > 3 * streamed, (streamed, loaded)
    entries = list(stream_collection(root, None, {}, SkipStats()))
    assert [e.key for e in entries] == [r.image_id for r in held.records]
    red = next(e for e in entries if e.key == "red_circle/0000.png").load()
    assert red.label == 2 and red.meta["classname"] == "red circle" and red.image.size == (32, 32)  # sorted
    stats = SkipStats()
    broken = next(iter(stream_collection(root, None, {}, stats))).load()  # an empty file: skipped, counted
    assert broken.image is None and stats.skipped == {"corrupt image": 1}
