"""`vlm data shapes | shard | inspect` and `vlm bench data`, called as a user would."""

import json

from PIL import Image

from data_pipelines import open_source
from vlm.bench.data import bench_data
from vlm.cli import main


def test_shapes_then_inspect_then_shard(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert main(["data", "shapes", "--out", str(out), "--train", "20", "--val", "6", "--test", "6",
                 "--image-size", "32", "--seed", "1"]) == 0
    assert (out / "pairs_heldout.csv").is_file() and (out / "vqa_val_annotations.json").is_file()
    capsys.readouterr()

    assert main(["data", "inspect", str(out), "--split", "val", "--task", "vqa", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "vqav2" and report["images"] == 6 and report["problems"]["skipped"] == {}
    assert set(report["answer_types"]) == {"yes/no", "number", "other"}

    assert main(["data", "inspect", str(out / "pairs_train.csv")]) == 0
    text = capsys.readouterr().out
    assert "format: csv" in text and "items: 60  images: 20" in text and "problems: none found" in text
    assert "images decoded: all 20" in text

    assert main(["data", "inspect", str(out / "pairs_train.csv"), "--check-images", "5"]) == 0
    text = capsys.readouterr().out
    assert "images decoded: a sample of 5 of 20" in text and "problems: none found in the images decoded" in text

    assert main(["data", "shard", str(out), "--split", "train", "--out", str(tmp_path / "shards"),
                 "--shard-size", "25"]) == 0
    assert "wrote 3 shard(s)" in capsys.readouterr().out
    shards = open_source(tmp_path / "shards")
    assert sorted(s.caption for s in shards) == sorted(s.caption for s in open_source(out, split="train").records)


def test_inspect_reports_problems_instead_of_failing(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    (tmp_path / "pairs.csv").write_text("image,caption\nok.png,fine\nbad.png,broken\nmissing.png,gone\n")
    assert main(["data", "inspect", str(tmp_path / "pairs.csv")]) == 0
    text = capsys.readouterr().out
    assert "problems: {'missing image': 1, 'corrupt image': 1}" in text and "missing.png" in text


def test_shard_counts_the_missing_image_with_the_corrupt_one(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    rows = [f"ok.png;caption {i}" for i in range(198)] + ["bad.png;corrupt", "missing.png;gone"]
    (tmp_path / "pairs.csv").write_text("image;caption\n" + "\n".join(rows) + "\n")  # 2 bad of 200: at the 1% limit
    argv = ["data", "shard", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "s"), "--separator", ";"]
    assert main(argv) == 0
    assert "skipped 2 of 200 samples (corrupt image: 1, missing image: 1)" in capsys.readouterr().out


def test_missing_column_is_one_line_and_exit_status_2(tmp_path, capsys):
    (tmp_path / "pairs.csv").write_text("image,text\na.png,hello\n")
    assert main(["data", "shard", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pairs.csv: no column 'caption'" in err


def test_bench_data_measures_both_workloads(tmp_path):
    rows = bench_data(workers=(0,), batch_size=8, scenes=12, jpegs=16, work_dir=tmp_path)
    assert [r["workload"] for r in rows] == ["shapes 64px png (csv)", "224px jpeg shards (webdataset)"]
    assert rows[0]["samples"] == 36 and rows[1]["samples"] == 16
    assert all(r["samples_per_s"] > 0 and r["decode_ms"] > 0 for r in rows)
