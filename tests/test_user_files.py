"""Issue 30, users' text files read right: the findings about readers, labels, recipes and messages.

Each test builds the file a user would have (a spreadsheet's CSV with a BOM, a semicolon or Windows-1252 bytes,
an unclosed quote, a 200,000-character caption, a labels file) and asserts the right result, or a one-line
error that names the input. A traceback never passes: `main` returns 2 only for a user's mistake.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import hard_inputs
import pytest
from PIL import Image

import vlm
from data_pipelines.imagefolder import open_imagefolder
from data_pipelines.inspection import inspect_source
from data_pipelines.pairs import open_pairs
from vlm.cli import main
from vlm.config import resolve_config, shipped_configs
from vlm.eval.class_lists import resolve_classnames, resolve_templates
from vlm.train import load_train_config
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


# Finding 9: a labels file with a UTF-8 BOM kept \ufeff in its first label, the prompt and the output CSV.
def test_a_bom_is_stripped_from_labels_templates_class_names_and_jsonl(tmp_path, checkpoint, capsys):
    _images(tmp_path / "photos", 2)
    (tmp_path / "labels.txt").write_text("cat\ndog\n", encoding="utf-8-sig")
    (tmp_path / "templates.txt").write_text("a photo of a {}.\n", encoding="utf-8-sig")
    assert resolve_classnames(str(tmp_path / "labels.txt")) == ["cat", "dog"]
    assert resolve_templates(str(tmp_path / "templates.txt")) == ["a photo of a {}."]
    (tmp_path / "cp1252.txt").write_bytes("caf\u00e9\ndog\n".encode("cp1252"))
    with pytest.raises(ValueError, match=r"cp1252\.txt line 1 column 4: not UTF-8"):
        resolve_classnames(str(tmp_path / "cp1252.txt"))
    out = tmp_path / "out.csv"
    assert main(["classify", str(tmp_path / "photos"), "--checkpoint", str(checkpoint), "--labels-file",
                 str(tmp_path / "labels.txt"), "--templates", str(tmp_path / "templates.txt"), "--out", str(out),
                 "--workers", "0", "--no-progress"]) == 0
    assert "\ufeff" not in out.read_text(encoding="utf-8") and {r["top1"] for r in csv.DictReader(out.open())} <= {
        "cat", "dog"}

    root = tmp_path / "folder"
    _images(root / "a", 1), _images(root / "b", 1)
    (root / "classnames.txt").write_text("apple\nbanana\n", encoding="utf-8-sig")
    assert open_imagefolder(root).info["classnames"] == ["apple", "banana"]
    (tmp_path / "photos" / "pairs.jsonl").write_text('{"image": "0.png", "caption": "a cat"}\n', encoding="utf-8-sig")
    assert open_pairs(tmp_path / "photos" / "pairs.jsonl").records[0].caption == "a cat"


# Finding 13: `--labels imagenet` always failed with "--labels has a label twice", naming neither label.
def test_the_imagenet_list_has_unique_labels_and_a_user_list_with_repeats_is_refused_by_name(
        tmp_path, checkpoint, capsys):
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    names = resolve_classnames("imagenet")
    assert len(set(names)) == 1000 and (names[657], names[744]) == ("missile", "projectile")
    assert (names[836], names[837]) == ("sunglass", "sunglasses")
    assert sum(a != b for a, b in zip(names, IMAGENET_CLASSNAMES, strict=True)) == 2  # open_clip's order otherwise
    _images(tmp_path, 1)
    argv = ["classify", str(tmp_path / "0.png"), "--checkpoint", str(checkpoint), "--workers", "0", "--no-progress"]
    assert main([*argv, "--labels", "imagenet"]) == 0
    assert capsys.readouterr().out.startswith(str(tmp_path / "0.png"))
    assert main([*argv, "--labels", "cat,dog,cat,bird,dog"]) == 2
    assert "'cat', 'dog' named more than once" in _one_error_line(capsys, "vlm classify")
    (tmp_path / "labels.txt").write_text("cat\ncat\n")
    assert main([*argv, "--labels-file", str(tmp_path / "labels.txt")]) == 2
    assert f"{tmp_path / 'labels.txt'}: 'cat' named more than once" in _one_error_line(capsys, "vlm classify")


# Recipes resolved only inside the repository: `--config configs/train/clip.yaml` failed elsewhere.
def test_recipes_and_model_names_resolve_from_any_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    by_name, by_path = resolve_config("clip", "train"), resolve_config("configs/train/clip.yaml", "train")
    assert by_name == by_path and by_name.is_file()
    assert load_train_config(by_name).model and vlm.get_model_config("clip-tiny")
    assert resolve_config("configs/sweep/shapes.yaml", "sweep").is_file()
    packaged = Path(vlm.__file__).parent / "configs"  # the link a wheel copies as package data
    assert packaged.is_dir() and shipped_configs() == packaged and (packaged / "models" / "clip-tiny.yaml").is_file()
    assert main(["train", "--config", "no-such-recipe"]) == 2
    err = _one_error_line(capsys, "vlm train")
    assert "no-such-recipe: no such config file" in err and "clip" in err and "quickstart" in err


# `vlm info photo.jpg` suggested `weights_only=False`: torch's advice to run a file's code.
def test_info_on_a_photo_says_it_is_an_image(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")
    assert main(["info", str(tmp_path / "photo.jpg")]) == 2
    err = _one_error_line(capsys, "vlm info")
    assert f"{tmp_path / 'photo.jpg'}: not a readable checkpoint (it is a JPEG image)" in err
    assert "weights_only" not in err


# `vlm eval vqa` on a pairs CSV talked about annotations; `vlm eval zeroshot` on one raised KeyError.
def test_eval_on_the_wrong_kind_of_file_names_the_file_and_what_to_give(tmp_path, checkpoint, capsys):
    names = _images(tmp_path, 2)
    (tmp_path / "pairs.csv").write_text("image,caption\n" + "".join(f"{n},a photo\n" for n in names))
    for task, wanted in (("vqa", "VQAv2 questions JSON"), ("zeroshot", "class-folder tree")):
        assert main(["eval", task, "--checkpoint", str(checkpoint), "--data", str(tmp_path / "pairs.csv"),
                     "--workers", "0"]) == 2
        err = _one_error_line(capsys, f"vlm eval {task}")
        assert f"{tmp_path / 'pairs.csv'}: vlm eval {task} does not read a CSV pairs file" in err and wanted in err
        assert "annotations (human" not in err


# `vlm classify --labels ""` hinted at `--classnames`, a flag classify does not have.
def test_empty_labels_name_only_classifys_own_flags(tmp_path, checkpoint, capsys):
    _images(tmp_path, 1)
    assert main(["classify", str(tmp_path), "--checkpoint", str(checkpoint), "--labels", ""]) == 2
    err = _one_error_line(capsys, "vlm classify")
    assert "--labels is empty" in err and "--classnames" not in err
    assert main(["classify", str(tmp_path), "--checkpoint", str(checkpoint), "--labels-file", "nowhere.txt"]) == 2
    assert "nowhere.txt: no such file of class names" in _one_error_line(capsys, "vlm classify")


# Two spaces in a row in a path were collapsed to one in every message.
def test_a_path_with_two_spaces_keeps_them_in_the_message(tmp_path, capsys):
    missing = tmp_path / "my  photos" / "model.pt"
    assert main(["info", str(missing)]) == 2
    assert f"{missing}: no such checkpoint file" in _one_error_line(capsys, "vlm info")


# "first 500 training items" was printed when 6 existed, and captions over the context were cut without a word.
def test_training_says_how_many_items_validate_and_how_many_captions_are_cut(tmp_path, capsys):
    names = _images(tmp_path, 6)
    long = " ".join(f"word{i}" for i in range(60))  # over clip-tiny's 32 tokens
    rows = [(n, long if i < 2 else f"a photo number {i}") for i, n in enumerate(names)]
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "caption"), *rows])
    recipe = Path(vlm.__file__).resolve().parents[1] / "configs" / "train" / "clip.yaml"
    argv = ["train", "--config", str(recipe), "--out", str(tmp_path / "run"), "--set", "model=clip-tiny",
            "--set", f"data.train={tmp_path / 'pairs.csv'}", "--set", "data.num_workers=0", "--set", "steps=1",
            "--set", "batch_size=2", "--set", "warmup_steps=1", "--set", "eval_every=1", "--set", "save_every=1"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "validation runs on the first 6 training items" in err
    assert f"data: 2 of 6 captions in {tmp_path / 'pairs.csv'} are longer than the model's 32-token context" in err
    assert "(first: pairs.csv line 2)" in err and err.count("are longer than the model's") == 1


# COCO's official layout could be evaluated and indexed but not trained on: image_root, max_bad_fraction and
# max_pixels were command-line options only.
def test_every_data_option_of_the_command_line_is_a_recipe_key(tmp_path):
    coco = tmp_path / "coco"
    names = _images(coco / "train2017", 3)
    images = [{"id": i, "file_name": name} for i, name in enumerate(names)] + [{"id": 9, "file_name": "gone.jpg"}]
    annotations = [{"id": i, "image_id": i, "caption": f"a photo {i}"} for i in (0, 1, 2, 9)]
    (coco / "annotations").mkdir()
    (coco / "annotations" / "captions_train2017.json").write_text(json.dumps({"images": images,
                                                                            "annotations": annotations}))
    keys = [f"data.train={coco / 'annotations' / 'captions_train2017.json'}", f"data.image_root={coco / 'train2017'}"]
    model = vlm.get_model_config("clip-tiny")
    config = load_train_config(None, keys, base={"model": "clip-tiny"})
    with pytest.raises(ValueError, match="captions_train2017.json.*missing image"):  # 1 of 4 is over the 1% rule
        open_split(config.data.train, "train", "clip", model, False, config.data.train_source_options())
    config = load_train_config(None, [*keys, "data.max_bad_fraction=0.5", "data.max_pixels=100"],
                               base={"model": "clip-tiny"})
    data = open_split(config.data.train, "train", "clip", model, False, config.data.train_source_options())
    assert len(data) == 3 and data.max_pixels == 100 and data.stats.max_bad_fraction == 0.5
    assert config.data.val_source_options()["image_root"] == str(coco / "train2017")
    with pytest.raises(ValueError, match="data.max_bad_fraction must be between 0 and 1, got 2"):
        load_train_config(None, ["data.max_bad_fraction=2"], base={"model": "clip-tiny"})


# The CSV fixtures (tests/hard_inputs.py): each is read right, and only the broken ones are problems.
def test_the_hard_input_csvs_read_right_and_only_the_broken_ones_are_problems(tmp_path):
    def report(path: Path, **options) -> dict:
        return inspect_source(path, samples=0, check_images=0, **options)

    bom, crlf = report(hard_inputs.write_bom_csv(tmp_path)), report(hard_inputs.write_crlf_csv(tmp_path))
    semicolon = report(hard_inputs.write_semicolon_csv(tmp_path))
    assert (bom["items"], crlf["items"], semicolon["items"]) == (5, 5, 5) and semicolon["separator"] == ";"
    assert open_pairs(tmp_path / "bom.csv").records[0].caption == "a photo number 0"
    assert open_pairs(tmp_path / "semicolon.csv").records[0].caption == "red, round, number 0"
    assert not any("long_fields" in r["problems"] for r in (bom, crlf, semicolon))
    quote = report(hard_inputs.write_unbalanced_quote_tsv(tmp_path), image_column="filepath", caption_column="title")
    assert quote["items"] == 4 and quote["problems"]["long_fields"] == 1
    assert "quote.tsv lines 5-201: field 'title' spans 197 lines" in quote["problems"]["examples"][0]
    huge = report(hard_inputs.write_huge_field_csv(tmp_path))
    assert huge["items"] == 3 and "huge.csv line 3: field 'caption' holds 200,000 characters" in str(huge["problems"])
