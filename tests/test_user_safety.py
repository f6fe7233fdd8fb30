"""Issue 30, users' files read right: no silent overwrite (findings 4, 8), weights-checked index resumes (5),
original bytes kept wherever an image is stored (3, 14), non-UTF-8 file names (12), honest linear-probe splits (6).
Each test failed before its fix."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_serve_api import make_collection
from test_serve_security import serve

import vlm
from data_pipelines import generate_shapes_world, open_source
from vlm.cli import main
from vlm.index import ItemIndex
from vlm.index import embed as embed_module
from vlm.index.build import BuildOptions, build_index
from vlm.models.checkpoint import read_checkpoint

LATIN1 = os.fsdecode(b"caf\xe9.png")  # a name in Latin-1 bytes, as Python reads it from a UTF-8 file system


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def photo(seed: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def jpeg_with_exif(seed: int = 0) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    exif[0x010F] = "vlm test camera"  # make
    return encoded(photo(seed), "JPEG", quality=90, exif=exif.tobytes())


def write_pairs(root: Path, files: dict[str, bytes]) -> Path:
    """The files under root/images and a pairs.csv captioning each."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    with open(root / "pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for i, (name, data) in enumerate(files.items()):
            (root / "images" / name).write_bytes(data)
            writer.writerow([f"images/{name}", f"picture number {i}"])
    return root / "pairs.csv"


def one_line_error(err: str, folder: Path) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(folder) in lines[0], err
    return lines[0]


# --- finding 4: `vlm train` into a folder holding a run


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes_world(root, train=16, val=8, test=4, heldout=0, image_size=32, seed=1)
    return root


def train_recipe(tmp_path: Path, shapes: Path, steps: int) -> Path:
    data = {"model": "clip-tiny", "objective": "clip", "steps": steps, "batch_size": 8, "warmup_steps": 1,
            "log_every": 1, "save_every": steps, "eval_every": 1000,
            "data": {"train": str(shapes), "num_workers": 0, "val_samples": 8}}
    path = tmp_path / f"recipe{steps}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def logged_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def test_train_refuses_a_folder_holding_a_run_and_overwrite_starts_clean(shapes, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", str(train_recipe(tmp_path, shapes, 3)), "--out", str(run)]) == 0
    capsys.readouterr()
    again = ["train", "--config", str(train_recipe(tmp_path, shapes, 2)), "--out", str(run)]
    assert main(again) == 2
    line = one_line_error(capsys.readouterr().err, run)
    assert "--resume" in line and "--overwrite" in line
    assert read_checkpoint(run / "checkpoint.pt")["step"] == 3 and logged_steps(run) == [1, 2, 3]  # untouched
    assert main([*again, "--overwrite"]) == 0
    assert read_checkpoint(run / "checkpoint.pt")["step"] == 2 and logged_steps(run) == [1, 2]  # nothing old
    capsys.readouterr()
    assert main([*again, "--overwrite", "--resume", "auto"]) == 2
    one_line_error(capsys.readouterr().err, run)


# --- findings 8 and 14: `vlm data shard`


def shard_members(folder: Path) -> list[str]:
    return [name for tar in sorted(folder.glob("*.tar")) for name in tarfile.open(tar).getnames()]


def test_shard_refuses_a_non_empty_folder_and_overwrite_replaces_the_old_shards(tmp_path, capsys):
    big = write_pairs(tmp_path / "big", {f"{i}.png": encoded(photo(i), "PNG") for i in range(5)})
    small = write_pairs(tmp_path / "small", {f"{i}.png": encoded(photo(10 + i), "PNG") for i in range(2)})
    out = tmp_path / "shards"
    assert main(["data", "shard", str(big), "--out", str(out), "--shard-size", "2"]) == 0
    capsys.readouterr()
    assert main(["data", "shard", str(small), "--out", str(out)]) == 2
    one_line_error(capsys.readouterr().err, out)
    assert len(list(open_source(out))) == 5  # the refused run changed nothing
    assert main(["data", "shard", str(small), "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000.tar", "00000_stats.json"]
    assert [s.caption for s in open_source(out)] == ["picture number 0", "picture number 1"]


def test_shard_keeps_bmp_tiff_gif_bytes_named_by_their_format_not_their_name(tmp_path):
    files = {"a.bmp": encoded(photo(1), "BMP"), "b.tif": encoded(photo(2), "TIFF"), "c.gif": encoded(photo(3), "GIF"),
             "d.jpg": encoded(photo(4), "PNG"), "e.png": jpeg_with_exif()}  # d and e: their names lie
    pairs = write_pairs(tmp_path, files)
    out = tmp_path / "shards"
    assert main(["data", "shard", str(pairs), "--out", str(out)]) == 0
    names = shard_members(out)
    images = [n for n in names if not n.endswith((".txt", ".json"))]
    assert [n.split(".", 1)[1] for n in images] == ["bmp", "tiff", "gif", "png", "jpg"]
    with tarfile.open(out / "00000.tar") as tar:
        assert [tar.extractfile(n).read() for n in images] == list(files.values())  # byte for byte
    back = list(open_source(out))
    assert len(back) == 5 and all(s.image is not None for s in back)


def test_a_failing_shard_run_leaves_no_partial_shard(tmp_path, capsys):
    files = {f"{i}.png": encoded(photo(i), "PNG") for i in range(4)}
    files["broken.png"] = b"\x89PNG not really"
    pairs = write_pairs(tmp_path / "bad", files)  # 1 bad in 5: over the 1% rule, found after 4 were written
    out = tmp_path / "shards"
    assert main(["data", "shard", str(pairs), "--out", str(out), "--shard-size", "1"]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    assert not (tmp_path / "shards.partial").exists()
    good = write_pairs(tmp_path / "good", {"x.png": encoded(photo(9), "PNG")})
    assert main(["data", "shard", str(good), "--out", str(out)]) == 0
    assert main(["data", "shard", str(pairs), "--out", str(out), "--overwrite"]) == 2
    assert [s.caption for s in open_source(out)] == ["picture number 0"]  # a failed overwrite keeps the old


# --- finding 5 and the index's output glitches


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> dict:
    return make_collection(tmp_path_factory.mktemp("safety"))


def test_resumed_index_build_refuses_other_weights_of_the_same_model(collection, tmp_path, monkeypatch):
    other = tmp_path / "other-clip-tiny.pt"
    torch.manual_seed(1)  # the collection's model was drawn at seed 0
    vlm.create_model("clip-tiny").save(other)  # same name, same shapes, other weights
    real_add_batch = embed_module._add_batch
    done = []

    def crash_after_one(*args, **kwargs):
        if done:
            raise KeyboardInterrupt
        done.append(1)
        return real_add_batch(*args, **kwargs)

    monkeypatch.setattr(embed_module, "_add_batch", crash_after_one)
    out, pairs, options = tmp_path / "index", collection["root"] / "pairs.csv", BuildOptions(batch_size=4,
                                                                                            progress=False)
    with pytest.raises(KeyboardInterrupt):
        build_index(collection["checkpoint"], pairs, out, options)
    monkeypatch.setattr(embed_module, "_add_batch", real_add_batch)
    with pytest.raises(ValueError, match="weights") as refused:
        build_index(other, pairs, out, options)
    message = str(refused.value)
    assert str(collection["checkpoint"].resolve()) in message and str(other) in message
    build_index(collection["checkpoint"], pairs, out, options)  # the same weights resume
    index = ItemIndex(out)
    assert len(index) == 12 and index.store.get_meta("weights")
    index.close()


def test_index_info_skipped_is_a_number_and_build_errors_start_their_own_line(collection, tmp_path, capsys,
                                                                               monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        photo(i).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "index"
    assert main(["index", "build", "--checkpoint", str(collection["checkpoint"]), "--data", str(folder),
                 "--out", str(out), "--max-bad-fraction", "0.3"]) == 0
    capsys.readouterr()
    assert main(["index", "info", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 1

    def fail(*args, **kwargs):
        raise ValueError("the disk is on fire")

    monkeypatch.setattr(embed_module, "_add_batch", fail)
    assert main(["index", "build", "--checkpoint", str(collection["checkpoint"]), "--data", str(folder),
                 "--out", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert "index build" in err  # the bar was drawn
    assert "\nvlm index build: error: the disk is on fire" in err


# --- finding 3: original bytes kept


def test_index_from_shards_copies_the_original_bytes_with_their_format(collection, tmp_path):
    files = {"a.jpg": jpeg_with_exif(), "b.png": encoded(photo(2), "TIFF"), "c.png": encoded(photo(3), "PNG")}
    pairs = write_pairs(tmp_path, files)
    assert main(["data", "shard", str(pairs), "--out", str(tmp_path / "shards")]) == 0
    out = build_index(collection["checkpoint"], tmp_path / "shards", tmp_path / "index",
                      BuildOptions(progress=False, copy_images=True))  # images are referenced unless copied
    index = ItemIndex(out)
    items = index.get_many([1, 2, 3])
    assert [Path(it.path).suffix for it in items] == [".jpg", ".tiff", ".png"]
    assert [(out / it.path).read_bytes() for it in items] == list(files.values())
    index.close()


@pytest.fixture(scope="module")
def client(collection):
    client = serve(collection)
    yield client
    client.__exit__(None, None, None)


def add(client, data: bytes) -> dict:
    response = client.post("/v1/items", json={"image": base64.b64encode(data).decode(), "caption": "a photo"})
    assert response.status_code == 200, response.text
    return response.json()


def test_an_uploaded_jpeg_is_served_back_byte_identical(client, collection):
    data = jpeg_with_exif(7)
    item = add(client, data)
    assert item["path"].endswith(".jpg")
    response = client.get(item["image_url"])
    assert response.status_code == 200 and response.content == data
    assert response.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.content)).getexif()[0x010F] == "vlm test camera"  # EXIF kept
    assert client.get(item["image_url"], params={"preview": "true"}).content == data  # browsers show JPEG


def test_uploads_keep_16_bit_and_tiff_and_a_tiff_has_a_png_preview(client):
    grey16 = encoded(Image.fromarray(np.arange(0, 60000, 25, dtype=np.uint16).reshape(48, 50)), "PNG")
    tiff = encoded(photo(8, (64, 48)), "TIFF")
    for data, media_type in ((grey16, "image/png"), (tiff, "image/tiff")):
        response = client.get(add(client, data)["image_url"])
        assert response.content == data and response.headers["content-type"] == media_type
    preview = client.get(add(client, tiff)["image_url"], params={"preview": "true"})
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(preview.content)).size == (64, 48)


def test_the_web_page_asks_for_previews_downscales_uploads_and_draws_photos_smoothly():
    page = (Path(vlm.__file__).parent / "serve" / "static" / "index.html").read_text()
    assert "?preview=true" in page and "createImageBitmap" in page and "canvas" in page
    css = page.split("<style>")[1].split("</style>")[0]
    assert all("pixelated" not in line for line in css.splitlines() if line.strip().startswith(".card img {"))


# --- finding 12: file names in Latin-1 bytes


@pytest.fixture
def latin1_folder(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    photo(1).save(folder / "plain.png")
    photo(2).save(folder / LATIN1)
    return folder


def test_classify_writes_a_latin1_name_as_its_bytes(collection, latin1_folder, tmp_path, capsysbinary):
    out = tmp_path / "labels.csv"
    args = ["classify", "--checkpoint", str(collection["checkpoint"]), str(latin1_folder), "--labels", "red,blue",
            "--no-progress", "--workers", "0"]
    assert main([*args, "--out", str(out)]) == 0
    rows = out.read_bytes().splitlines()
    assert len(rows) == 3 and any(row.startswith(os.fsencode(latin1_folder / LATIN1) + b",") for row in rows)
    assert main(args) == 0  # printed: the same bytes
    assert os.fsencode(latin1_folder / LATIN1) + b"\t" in capsysbinary.readouterr().out


def test_index_build_keeps_a_latin1_named_image_and_the_rest(collection, latin1_folder, tmp_path):
    out = build_index(collection["checkpoint"], latin1_folder, tmp_path / "index", BuildOptions(progress=False))
    assert not (tmp_path / "index.partial").exists()
    index = ItemIndex(out)
    items = {it.extra["image_id"]: it for it in index.get_many([1, 2])}
    assert set(items) == {"plain.png", "caf\\xe9.png"}  # the stated replacement: the byte written as \xe9
    copied = out / items["caf\\xe9.png"].path
    assert copied.read_bytes() == (latin1_folder / LATIN1).read_bytes()
    index.close()


# --- finding 6: `vlm eval linear-probe`


def class_tree(root: Path, per_class: int, seed: int = 0) -> Path:
    for colour in ("red", "green", "blue"):
        (root / colour).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (32, 32), colour).save(root / colour / f"{seed}-{i}.png")
    return root


def probe(checkpoint: Path, data: Path, tmp_path: Path, *extra: str) -> dict:
    assert main(["eval", "linear-probe", "--checkpoint", str(checkpoint), "--data", str(data), "--shots", "0",
                 "--json", str(tmp_path / "probe.json"), *extra]) == 0
    return json.loads((tmp_path / "probe.json").read_text())


def test_linear_probe_splits_a_plain_class_tree_disjointly_and_says_so(collection, tmp_path, capsys):
    tree = class_tree(tmp_path / "tree", per_class=10)
    result = probe(collection["checkpoint"], tree, tmp_path)
    split = result["split"]
    assert (split["train"], split["val"], split["test"]) == (18, 6, 6) and "seeded" in split["method"]
    assert result["results"][0]["train_images"] == 18  # not all 30, which it also tested on
    from vlm.eval.linear_probe import split_by_class
    labels = np.repeat(np.arange(3), 10)
    parts = split_by_class(labels, (0.6, 0.2, 0.2), seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(30))  # disjoint and complete
    assert [p.tolist() for p in parts] == [p.tolist() for p in split_by_class(labels, (0.6, 0.2, 0.2), seed=0)]
    assert main(["eval", "linear-probe", "--checkpoint", str(collection["checkpoint"]), "--data", str(tree),
                 "--split", "val"]) == 2
    one_line_error(capsys.readouterr().err, tree)


def test_linear_probe_reads_split_folders_and_honours_split(collection, tmp_path, capsys):
    root = tmp_path / "data"
    class_tree(root / "train", 4, seed=1)
    class_tree(root / "val", 2, seed=2)
    class_tree(root / "test", 3, seed=3)
    split = probe(collection["checkpoint"], root, tmp_path)["split"]
    assert (split["train"], split["val"], split["test"]) == (12, 6, 9)
    result = probe(collection["checkpoint"], root, tmp_path, "--split", "val")
    assert result["test_split"] == "val" and (result["split"]["test"], result["split"]["val"]) == (6, 3)
    assert result["split"]["train"] == 9  # C chosen on a part held out of train, never on the scored split
    few = class_tree(tmp_path / "few", per_class=2)
    assert main(["eval", "linear-probe", "--checkpoint", str(collection["checkpoint"]), "--data", str(few)]) == 2
    assert "'blue' has 2 image(s)" in one_line_error(capsys.readouterr().err, few)


# --- the web page in Chromium: a TIFF result is drawn (through its preview), a 12 MP photo is sent downscaled


def test_the_page_shows_a_tiff_result_and_uploads_a_big_photo_downscaled(collection, tmp_path):
    from test_serve_web import ALL_IMAGES_SHOWN, CHROMIUM, CHROMIUM_ARGS

    from vlm.serve.process import ServerProcess

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    index = tmp_path / "index"
    shutil.copytree(collection["index"], index)
    rng = np.random.default_rng(0)
    big = tmp_path / "big.jpg"
    Image.fromarray(rng.integers(0, 255, (3000, 4000, 3), dtype=np.uint8)).save(big, quality=95)
    assert big.stat().st_size > 8 * 2**20 * 3 / 4  # as base64, over the server's body limit
    with ServerProcess(collection["checkpoint"], index, log_path=tmp_path / "server.log") as server, \
            sync_api.sync_playwright() as playwright:
        import httpx
        body = {"image": base64.b64encode(encoded(photo(5), "TIFF")).decode(), "caption": "a tiff picture"}
        assert httpx.post(f"{server.url}/v1/items", json=body, timeout=30).status_code == 200
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page()
        page.goto(server.url)
        page.fill("#query", "a tiff picture")
        page.select_option("#k", "20")
        page.click("#search-button")
        page.wait_for_function(ALL_IMAGES_SHOWN, timeout=20_000)  # 13 cards, the TIFF's drawn too
        assert "a tiff picture" in page.locator(".result .caption").all_text_contents()
        page.evaluate("() => { document.getElementById('results').innerHTML = ''; }")
        page.set_input_files("#image-file", str(big))
        page.wait_for_function(ALL_IMAGES_SHOWN, timeout=30_000)
        assert page.locator("#message").text_content() == ""  # no 413
        browser.close()
