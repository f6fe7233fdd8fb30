"""Every documented user command over users' hard files (issue 30: "a test that runs every documented command
over the fixtures").

One collection of hard inputs (tests/hard_inputs.py: every Pillow mode, every format, EXIF orientations,
16-bit and float greys, strips, a Latin-1 file name) as a pairs CSV and as a class-folder tree, tiny random
models, and the README's commands run over them in-process through `vlm.cli.main`. Each must exit 0; an input
that is truly invalid must fail with one line naming it, never a traceback.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hard_inputs import (
    write_16bit_grey,
    write_bom_csv,
    write_crlf_csv,
    write_exif_orientations,
    write_float_grey,
    write_format_files,
    write_huge_field_csv,
    write_latin1_name,
    write_mode_files,
    write_semicolon_csv,
    write_strips,
    write_unbalanced_quote_tsv,
)

from vlm.cli import main


def hard_images(folder: Path) -> list[Path]:
    """Every hard image of tests/hard_inputs.py but the Latin-1 name (a UTF-8 CSV cannot list it)."""
    files = [*write_mode_files(folder / "modes").values(), *write_format_files(folder / "formats").values(),
             *write_exif_orientations(folder / "exif").values(), *write_strips(folder / "strips").values()]
    return [*files, write_16bit_grey(folder / "grey16.png"), write_float_grey(folder / "float.tif")]


def class_tree(root: Path, images: list[Path]) -> Path:
    """`root/<class>/<image>`: three classes of the hard images, the Latin-1 name among them."""
    classes = ("modes", "formats", "exif")
    for i, image in enumerate(images):
        target = root / classes[i % 3] / f"{i:02d}_{image.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, target)
    write_latin1_name(root / "formats")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    from vlm import create_model

    root = tmp_path_factory.mktemp("documented")
    images = hard_images(root / "images")
    pairs = root / "pairs.csv"
    with open(pairs, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        writer.writerows((image.relative_to(root), f"a {image.stem} picture, number {i}")
                         for i, image in enumerate(images))
    create_model("clip-tiny").save(root / "clip.pt")
    create_model("fusion-tiny").save(root / "fusion.pt")
    return {"root": root, "pairs": pairs, "classes": class_tree(root / "classes", images),
            "clip": root / "clip.pt", "fusion": root / "fusion.pt"}


def run_ok(argv: list[str], capsys) -> str:
    """`vlm ARGV` in-process: exit 0 and no traceback; its stdout."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in err + out
    return out


def run_refused(argv: list[str], capsys) -> str:
    """`vlm ARGV` for a truly invalid input: exit 2 with one error line, no traceback; that line."""
    code = main([str(a) for a in argv])
    _, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_data_inspect_pairs_and_class_tree(world, capsys):
    out = run_ok(["data", "inspect", world["pairs"], "--check-images", 100, "--json"], capsys)
    report = json.loads(out)
    assert report["problems"]["skipped"] == {}, report["problems"]  # every hard image decodes
    run_ok(["data", "inspect", world["classes"], "--check-images", 100], capsys)


HARD_PAIRS_FILES = [(write_bom_csv, [], False), (write_crlf_csv, [], False), (write_semicolon_csv, [], False),
                    (write_huge_field_csv, [], True),
                    (write_unbalanced_quote_tsv, ["--image-column", "filepath", "--caption-column", "title"], True)]


@pytest.mark.parametrize(("writer", "args", "flagged"), HARD_PAIRS_FILES,
                         ids=[w.__name__.removeprefix("write_") for w, _, _ in HARD_PAIRS_FILES])
def test_data_inspect_hard_pairs_files(writer, args, flagged, tmp_path, capsys):
    """Each of users' CSV/TSV shapes reads; a huge field or an unclosed quote is named among the problems."""
    out = run_ok(["data", "inspect", writer(tmp_path), *args], capsys)
    assert ("problems: none found" not in out) == flagged, out


def test_openclip_tsv_without_its_columns_is_one_line_naming_the_file(tmp_path, capsys):
    assert "quote.tsv" in run_refused(["data", "inspect", write_unbalanced_quote_tsv(tmp_path)], capsys)


def test_data_shard_then_inspect_eval_and_index_the_shards(world, capsys, tmp_path):
    run_ok(["data", "shard", world["pairs"], "--out", tmp_path / "shards", "--shard-size", 10], capsys)
    assert len(list((tmp_path / "shards").glob("*.tar"))) >= 3
    run_ok(["data", "inspect", tmp_path / "shards"], capsys)
    refused = run_refused(["eval", "retrieval", "--checkpoint", world["clip"], "--data", tmp_path / "shards"], capsys)
    assert "WebDataset shards" in refused  # streaming evaluation needs an indexed source: said in one line
    run_ok(["index", "build", "--checkpoint", world["clip"], "--data", tmp_path / "shards",
            "--out", tmp_path / "shard-index"], capsys)


def test_train_two_steps_then_info(world, capsys, tmp_path):
    recipe = {"model": "clip-tiny", "objective": "clip", "steps": 2, "batch_size": 8, "warmup_steps": 1,
              "save_every": 2, "eval_every": 1000, "log_every": 1,
              "data": {"train": str(world["pairs"]), "num_workers": 0, "val_samples": 8}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    run_ok(["train", "--config", tmp_path / "recipe.yaml", "--out", tmp_path / "run"], capsys)
    out = run_ok(["info", tmp_path / "run"], capsys)
    assert "training step: 2" in out


def test_eval_zeroshot_retrieval_and_linear_probe(world, capsys, tmp_path):
    run_ok(["eval", "zeroshot", "--checkpoint", world["clip"], "--data", world["classes"]], capsys)
    run_ok(["eval", "retrieval", "--checkpoint", world["clip"], "--data", world["pairs"],
            "--json", tmp_path / "r.json"], capsys)
    run_ok(["eval", "retrieval", "--checkpoint", world["fusion"], "--data", world["pairs"]], capsys)
    run_ok(["eval", "retrieval", "--checkpoint", world["fusion"], "--rerank-from", world["clip"], "--k", 4,
            "--data", world["pairs"]], capsys)
    run_ok(["eval", "linear-probe", "--checkpoint", world["clip"], "--data", world["classes"], "--shots", "1,2"],
           capsys)


def test_classify_the_class_tree(world, capsys, tmp_path):
    run_ok(["classify", world["classes"], "--checkpoint", world["clip"], "--labels", "a photo,a drawing",
            "--out", tmp_path / "labels.csv", "--no-progress"], capsys)
    rows = (tmp_path / "labels.csv").read_bytes().splitlines()
    assert len(rows) == 1 + sum(1 for p in world["classes"].rglob("*") if p.is_file())
    assert any("caf\xe9".encode("latin-1") in row for row in rows)  # the Latin-1 name, as its bytes


def test_classify_files_prints_a_latin1_name_as_its_bytes(world):
    """Rows on stdout (a subprocess: the Latin-1 name is written as its bytes, which capsys cannot decode)."""
    files = [next((world["classes"] / "formats").glob("caf*")), world["root"] / "images" / "strips" / "1x200.png"]
    result = subprocess.run([sys.executable, "-m", "vlm.cli", "classify", *map(str, files), "--checkpoint",
                             str(world["clip"]), "--labels", "a photo,a drawing"], capture_output=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr
    assert b"caf\xe9 cr\xe8me.png" in result.stdout and b"1x200.png" in result.stdout


@pytest.fixture(scope="module")
def index(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("index") / "idx"
    assert main(["index", "build", "--checkpoint", str(world["clip"]), "--data", str(world["pairs"]),
                 "--out", str(out)]) == 0
    return out


def test_index_build_info_check(world, index, capsys, tmp_path):
    info = json.loads(run_ok(["index", "info", index], capsys))
    assert info["skipped"] == 0
    run_ok(["index", "check", index], capsys)
    run_ok(["index", "build", "--checkpoint", world["clip"], "--data", world["classes"],
            "--out", tmp_path / "folder-index"], capsys)


def test_refusals_are_one_line(world, capsys, tmp_path):
    (tmp_path / "photo.jpg").write_bytes((world["root"] / "images" / "formats" / "picture.jpg").read_bytes())
    assert "photo.jpg" in run_refused(["info", tmp_path / "photo.jpg"], capsys)
    assert "nothing.csv" in run_refused(["data", "inspect", tmp_path / "nothing.csv"], capsys)
    assert "idx" in run_refused(["index", "info", tmp_path / "idx"], capsys)


def test_serve_search_add_and_get_back_byte_identical(world, index, tmp_path):
    from fastapi.testclient import TestClient

    from vlm.serve.app import create_app
    from vlm.serve.service import ServeConfig

    served = tmp_path / "served"
    shutil.copytree(index, served)
    config = ServeConfig(checkpoint=str(world["clip"]), index=str(served), rerank_checkpoint=str(world["fusion"]),
                         trusted_hosts=("testserver",))
    with TestClient(create_app(config)) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").text
            time.sleep(0.05)
        found = client.post("/v1/search", json={"text": "a picture", "k": 3})
        assert found.status_code == 200 and len(found.json()["results"]) == 3, found.text
        for name in ("exif/orientation_6.jpg", "grey16.png", "float.tif", "modes/CMYK.tif", "formats/animated.gif"):
            data = (world["root"] / "images" / name).read_bytes()
            added = client.post("/v1/items", json={"image": base64.b64encode(data).decode(), "caption": name})
            assert added.status_code == 200, (name, added.text)
            back = client.get(added.json()["image_url"])
            assert back.status_code == 200 and back.content == data, name
            by_image = client.post("/v1/search", json={"image": base64.b64encode(data).decode(), "k": 1})
            assert by_image.status_code == 200 and by_image.json()["results"], (name, by_image.text)
