"""Issue 30, users' text files read right: the findings about readers, labels, recipes and messages.

Each test builds the file a user would have (a spreadsheet's CSV with a BOM, a semicolon or Windows-1252 bytes,
an unclosed quote, a 200,000-character caption, a labels file) and asserts the right result, or a one-line
error that names the input. A traceback never passes: `main` returns 2 only for a user's mistake.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

import vlm
from data_pipelines.pairs import open_pairs
from vlm.cli import main
from vlm.train.data import open_split

HUGE = 200_000  # over the csv module's default field limit, 131,072


def _images(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (24, 24), (40 * i % 256, 90, 160)).save(folder / f"{i}.png")
    return [f"{i}.png" for i in range(n)]


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{command}: error: "), err
    return err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "clip.pt"
    vlm.create_model("clip-tiny", ["vqa_answers=[yes,no]"]).save(path)  # a VQA head: `vlm eval vqa` reads data
    return path


# Finding 11: a field over 131,072 characters raised `_csv.Error: field larger than field limit`.
def test_a_200000_character_caption_is_read_by_inspect_and_train(tmp_path, capsys):
    names = _images(tmp_path, 3)
    (tmp_path / "pairs.csv").write_text(f"image,caption\n{names[0]},{'long ' * (HUGE // 5)}\n"
                                        f"{names[1]},a short one\n{names[2]},another\n")
    assert main(["data", "inspect", str(tmp_path / "pairs.csv")]) == 0
    out = capsys.readouterr().out
    assert "items: 3" in out and "pairs.csv line 2: field 'caption' holds 200,000 characters" in out
    data = open_split(str(tmp_path / "pairs.csv"), "train", "clip", vlm.get_model_config("clip-tiny"), False)
    assert len(data) == 3 and len(data.records[0].caption) > 131_072


# Finding 7: an unclosed quote swallowed rows, and inspect said "problems: none found".
def test_an_unclosed_quote_that_swallows_rows_is_a_problem_inspect_reports(tmp_path, capsys):
    names = _images(tmp_path, 50)
    rows = [f"{name}\ta caption of {name}" for name in names]
    rows[9] = f'{names[9]}\t"a caption with an opening quote only'
    rows[49] = f'{names[49]}\tthe next quote" closes it'
    (tmp_path / "pairs.tsv").write_text("filepath\ttitle\n" + "\n".join(rows) + "\n")
    assert main(["data", "inspect", str(tmp_path / "pairs.tsv"), "--csv-img-key", "filepath",
                 "--csv-caption-key", "title"]) == 0
    out = capsys.readouterr().out
    assert "items: 10" in out and "problems: none found" not in out
    assert "pairs.tsv lines 11-51: field 'title' spans 41 lines" in out and "unclosed quote" in out


# A semicolon CSV was answered with a hint about --image-column.
def test_a_semicolon_csv_is_read_and_an_unknown_header_names_its_separator(tmp_path, capsys):
    names = _images(tmp_path, 4)
    (tmp_path / "semi.csv").write_text("image;caption\n" + "".join(f"{n};a photo, of {n}\n" for n in names))
    data = open_pairs(tmp_path / "semi.csv")
    assert len(data) == 4 and data.records[0].caption == "a photo, of 0.png"
    assert main(["data", "inspect", str(tmp_path / "semi.csv")]) == 0
    assert "format: csv (separator ';')" in capsys.readouterr().out
    (tmp_path / "other.csv").write_text("path;text\n" + "".join(f"{n};a photo\n" for n in names))
    assert main(["data", "inspect", str(tmp_path / "other.csv")]) == 2
    err = _one_error_line(capsys, "vlm data inspect")
    assert "other.csv: no column 'image' (columns: path, text; separated by ';')" in err


# A Windows-1252 CSV said `'utf-8' codec can't decode byte 0x96 in position 74`, naming neither file nor line.
def test_a_windows_1252_file_is_named_with_its_line(tmp_path, capsys):
    names = _images(tmp_path, 2)
    text = f"image,caption\n{names[0]},a plain caption\n{names[1]},caf\u00e9 \u2013 a dash\n"
    (tmp_path / "excel.csv").write_bytes(text.encode("cp1252"))
    assert main(["data", "inspect", str(tmp_path / "excel.csv")]) == 2
    err = _one_error_line(capsys, "vlm data inspect")
    assert f"{tmp_path / 'excel.csv'} line 3 column 10: not UTF-8" in err and "0xe9" in err
