"""Issue 30, the rest: one bad-file rule for every command that reads images (`--max-bad-fraction`, skipped
items listed in a report file), one reading of a folder for every command, and no class from an empty folder.

Each test failed before its change: index-from-folder accepted 5 bad of 31 and classify exited 0 with
"classified 0 images"; inspect read 29 images and 2 subfolders as an ImageFolder of 2 items while index
build indexed 31; an empty class folder became a zero-shot class.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

import vlm
from data_pipelines.imagefolder import open_imagefolder
from data_pipelines.inspection import inspect_source
from vlm.cli import main


def _images(folder: Path, n: int, prefix: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (24, 24), (40 * i % 256, 90, 160)).save(folder / f"{prefix}{i}.png")


def _broken(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"broken{i}.jpg").write_bytes(b"not a jpeg")


def _one_error_line(capsys, command: str) -> str:
    """The error is one line of its own; a progress bar's redraws (index build) are on lines before it."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line and not line.startswith("index build:")]
    assert len(lines) == 1 and lines[0].startswith(f"{command}: error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "clip.pt"
    vlm.create_model("clip-tiny").save(path)
    return path


def _report(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


# Index-from-folder accepted 5 bad of 31; pairs stopped at 1%. Now the same rule, settable, with a report.
def test_index_from_a_folder_stops_at_the_rule_and_lists_what_it_skipped(tmp_path, checkpoint, capsys):
    _images(tmp_path / "photos", 26)
    _broken(tmp_path / "photos", 5)
    args = ["index", "build", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "photos")]
    assert main([*args, "--out", str(tmp_path / "idx")]) == 2
    err = _one_error_line(capsys, "vlm index build")
    assert "5 of 31 samples are bad" in err and "max_bad_fraction=0.01" in err
    assert f"skipped items listed in {tmp_path / 'idx.skipped.tsv'}" in err
    assert len(_report(tmp_path / "idx.skipped.tsv")) == 5 and not (tmp_path / "idx").exists()

    assert main([*args, "--out", str(tmp_path / "idx2"), "--max-bad-fraction", "0.2"]) == 0
    rows = _report(tmp_path / "idx2" / "skipped.tsv")
    assert sorted(Path(r["item"]).name for r in rows) == [f"broken{i}.jpg" for i in range(5)]
    assert {r["reason"] for r in rows} == {"corrupt image"}
    assert f"listed in {tmp_path / 'idx2' / 'skipped.tsv'}" in capsys.readouterr().err


def test_classify_applies_the_rule_and_every_image_bad_is_one_error_line(tmp_path, checkpoint, capsys):
    _images(tmp_path / "few", 3)
    _broken(tmp_path / "few", 1)
    out = tmp_path / "preds.csv"
    run = ["classify", "--checkpoint", str(checkpoint), "--labels", "red,blue", "--out", str(out), "--no-progress"]
    assert main([*run, str(tmp_path / "few")]) == 2
    err = _one_error_line(capsys, "vlm classify")
    assert "1 of 4 samples are bad" in err and f"listed in {tmp_path / 'preds.skipped.tsv'}" in err

    _broken(tmp_path / "bad", 3)
    assert main([*run, str(tmp_path / "bad"), "--max-bad-fraction", "1"]) == 2
    err = _one_error_line(capsys, "vlm classify")
    assert "none of the 3 images could be read (corrupt image: 3)" in err and str(tmp_path / "bad") in err
    assert len(_report(tmp_path / "preds.skipped.tsv")) == 3


def test_the_flag_is_on_every_command_that_reads_images(capsys):
    commands = [["data", "inspect"], ["data", "shard"], ["train"], ["eval", "zeroshot"], ["eval", "retrieval"],
                ["eval", "vqa"], ["eval", "compositional"], ["eval", "linear-probe"], ["classify"],
                ["index", "build"]]
    for command in commands:
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        assert "--max-bad-fraction" in capsys.readouterr().out, command


# Two readings of one folder: inspect said an ImageFolder of 2 items, index build indexed 31.
def test_a_folder_with_images_and_subfolders_is_read_the_same_by_inspect_and_index(tmp_path, checkpoint, capsys):
    _images(tmp_path / "photos", 29)
    _images(tmp_path / "photos" / "trip", 1, "t")
    _images(tmp_path / "photos" / "home", 1, "h")
    report = inspect_source(tmp_path / "photos")
    assert report["format"] == "folder" and report["items"] == 31
    assert main(["index", "build", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "photos"),
                 "--out", str(tmp_path / "idx")]) == 0
    assert "31 items added" in capsys.readouterr().out


# An empty class folder became a zero-shot class.
def test_an_empty_class_folder_is_skipped_once_with_a_warning(tmp_path, capsys):
    _images(tmp_path / "tree" / "cat", 2)
    _images(tmp_path / "tree" / "dog", 2)
    (tmp_path / "tree" / "empty_one").mkdir()
    data = open_imagefolder(tmp_path / "tree")
    assert data.info["classnames"] == ["cat", "dog"] and len(data) == 4
    err = capsys.readouterr().err
    assert err.count("empty_one") == 1 and "skipped 1 empty class folder" in err

    (tmp_path / "tree" / "classnames.txt").write_text("cat\ndog\nempty one\n")  # named classes stay classes
    assert open_imagefolder(tmp_path / "tree").info["classnames"] == ["cat", "dog", "empty one"]
