"""What a new user meets on the documented paths: column names, one-line errors, file modes, start-up."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import vlm
from data_pipelines.shapes import generate_shapes_world
from vlm.cli import main
from vlm.models.checkpoint import CheckpointError
from vlm.train import load_train_config
from vlm.train.data import open_split

OPENCLIP_COLUMNS = ["--csv-img-key", "filepath", "--csv-caption-key", "title"]  # OpenCLIP's own flag names


@pytest.fixture(scope="module")
def openclip_tsv(tmp_path_factory) -> Path:
    """The shapes world's training pairs rewritten as OpenCLIP's CSV loader expects: TSV, `filepath`, `title`."""
    root = tmp_path_factory.mktemp("tsv")
    generate_shapes_world(root / "shapes", train=16, val=0, test=0, heldout=0, image_size=32, seed=2)
    with open(root / "shapes" / "pairs_train.csv", newline="") as f:
        rows = [(f"shapes/{r['image']}", r["caption"]) for r in csv.DictReader(f)]
    with open(root / "pairs.tsv", "w", newline="") as f:
        csv.writer(f, delimiter="\t").writerows([("filepath", "title"), *rows])
    recipe = {"model": "clip-tiny", "objective": "clip", "steps": 4, "batch_size": 8, "warmup_steps": 1,
              "eval_every": 2, "log_every": 1, "save_every": 4,
              "data": {"train": str(root / "pairs.tsv"), "num_workers": 0, "val_samples": 8,
                       "image_column": "filepath", "caption_column": "title"}}
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return root / "pairs.tsv"


def test_train_eval_index_build_and_classify_read_an_openclip_style_tsv(openclip_tsv, tmp_path, capsys):
    root = openclip_tsv.parent
    run = tmp_path / "run"
    assert main(["train", "--config", str(root / "recipe.yaml"), "--out", str(run), "--stop-at", "2"]) == 0
    assert "2/4" in capsys.readouterr().err  # the bar counts to the schedule's end, not to --stop-at
    assert main(["train", "--config", str(root / "recipe.yaml"), "--out", str(run), "--resume", "auto"]) == 0
    err = capsys.readouterr().err
    assert "validation runs on the first 8 training items" in err
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("train_as_val/image_retrieval_recall@1" in m for m in metrics)
    assert not any(k.startswith("val/") for m in metrics for k in m)  # never called validation when it is not

    out = tmp_path / "eval.json"
    assert main(["eval", "retrieval", "--checkpoint", str(run), "--data", str(openclip_tsv), *OPENCLIP_COLUMNS,
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["images"] == 16 and result["split"] is None

    index = tmp_path / "index"
    assert main(["index", "build", "--checkpoint", str(run), "--data", str(openclip_tsv),
                 "--image-column", "filepath", "--caption-column", "title", "--out", str(index)]) == 0
    assert "16 items added" in capsys.readouterr().out

    predictions = tmp_path / "classify.csv"  # vlm classify takes the images a pairs file lists, once each
    assert main(["classify", "--checkpoint", str(run), str(openclip_tsv), *OPENCLIP_COLUMNS, "--labels", "red,blue",
                 "--workers", "0", "--no-progress", "--out", str(predictions)]) == 0
    with open(predictions, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 and {r["top1"] for r in rows} <= {"red", "blue"}


def test_without_the_column_names_the_error_says_which_option_to_pass(openclip_tsv, tmp_path, capsys):
    argv = ["train", "--config", str(openclip_tsv.parent / "recipe.yaml"), "--set", "data.image_column=null",
            "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vlm train: error: ") and "no column 'image'" in err
    assert "data.image_column" in err and "--image-column" in err


def test_column_options_on_a_source_without_columns_are_refused_by_name(tmp_path, capsys):
    generate_shapes_world(tmp_path / "w", train=4, val=0, test=0, heldout=0, image_size=32)
    assert main(["data", "inspect", str(tmp_path / "w" / "classify_train"), "--image-column", "x"]) == 2
    assert "image_column applies only to a CSV/TSV/JSONL pairs file; this is imagefolder" in capsys.readouterr().err


def test_recipe_separator_and_columns_reach_the_reader(tmp_path):
    generate_shapes_world(tmp_path / "w", train=4, val=0, test=0, heldout=0, image_size=32)
    rows = (tmp_path / "w" / "pairs_train.csv").read_text().replace(",", ";").replace("image;caption", "img;text")
    (tmp_path / "w" / "pairs.csv").write_text(rows)
    config = load_train_config(None, ["data.image_column=img", "data.caption_column=text", "data.separator=;"],
                               base={"model": "clip-tiny"})
    model_config = vlm.get_model_config("clip-tiny")
    data = open_split(str(tmp_path / "w" / "pairs.csv"), "train", "clip", model_config, False,
                      config.data.train_source_options())
    assert len(data) == 12 and data.records[0].caption


def test_openclip_export_of_a_fusion_checkpoint_is_one_line_and_status_2(tmp_path, capsys):
    vlm.create_model("fusion-tiny").save(tmp_path / "fusion" / "checkpoint.pt")
    assert main(["openclip", "export", str(tmp_path / "fusion"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vlm openclip export: error: ") and "early_fusion" in err


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    missing = str(tmp_path / "missing.pt")
    assert main(["info", missing]) == 2
    with pytest.raises(CheckpointError):
        main(["--debug", "info", missing])
    monkeypatch.setenv("VLM_DEBUG", "1")
    with pytest.raises(CheckpointError):
        main(["info", missing])


def test_info_of_a_run_folder_prints_its_checkpoints_size(tmp_path, clip_tiny, capsys):
    clip_tiny.save(tmp_path / "run" / "checkpoint.pt")
    assert main(["info", str(tmp_path / "run")]) == 0
    size = (tmp_path / "run" / "checkpoint.pt").stat().st_size / 2**20
    assert f"({size:.1f} MiB)" in capsys.readouterr().out and size >= 0.1


def test_checkpoint_and_report_under_umask_022_are_readable_by_all(tmp_path, clip_tiny):
    old = os.umask(0o022)
    try:
        clip_tiny.save(tmp_path / "run" / "checkpoint.pt")
        generate_shapes_world(tmp_path / "w", train=4, val=4, test=0, heldout=0, image_size=32)
        assert main(["eval", "retrieval", "--checkpoint", str(tmp_path / "run"), "--data", str(tmp_path / "w"),
                     "--json", str(tmp_path / "report.json")]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "run" / "checkpoint.pt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o644
    assert json.loads((tmp_path / "report.json").read_text())["split"] == "val"  # the default split, by name


def test_help_imports_no_torch():
    """`vlm --help` must answer at once: the parsers of every command load without torch and its friends."""
    code = """
import contextlib, sys
from vlm.cli import main
with contextlib.suppress(SystemExit):
    main(["--help"])
print(sorted(m for m in ("torch", "timm", "open_clip", "fastapi", "faiss") if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert result.stdout.strip().splitlines()[-1] == "[]"
