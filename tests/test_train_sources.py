"""`vlm train` on every source data_pipelines reads, as a user points it at their own files (issue 16)."""

from __future__ import annotations

import csv
import io
import json
import random
import re
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image

from data_pipelines import TooManyBadSamples
from data_pipelines.worker_errors import reraise_worker_errors
from vlm.cli import main
from vlm.models.checkpoint import read_checkpoint

N_TRAIN, N_VAL = 16, 8  # batch 8: 2 batches an epoch, so 5 steps are more than two epochs
COLOURS = ["red", "green", "blue", "yellow"]


def jpeg(colour: str, seed: int) -> bytes:
    base = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200), "yellow": (200, 200, 30)}[colour]
    rng = random.Random(seed)
    image = Image.new("RGB", (16, 16), tuple(min(255, c + rng.randint(0, 40)) for c in base))
    out = io.BytesIO()
    image.save(out, format="JPEG")
    return out.getvalue()


def items(n: int, offset: int = 0) -> list[dict]:
    """n image-caption items, their JPEGs in memory."""
    return [{"key": f"{offset + i:09d}", "file": f"img/{offset + i:03d}.jpg", "colour": COLOURS[i % 4],
             "caption": f"a {COLOURS[i % 4]} square", "bytes": jpeg(COLOURS[i % 4], offset + i)} for i in range(n)]


def write_images(root: Path, rows: list[dict]) -> None:
    (root / "img").mkdir(parents=True, exist_ok=True)
    for row in rows:
        (root / row["file"]).write_bytes(row["bytes"])


def write_pairs(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({"image": r["file"], "caption": r["caption"]}) + "\n" for r in rows))
        return path
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t" if path.suffix == ".tsv" else ",")
        writer.writerow(["image", "caption"])
        writer.writerows([r["file"], r["caption"]] for r in rows)
    return path


def write_coco(path: Path, rows: list[dict]) -> Path:
    images = [{"id": i, "file_name": r["file"]} for i, r in enumerate(rows)]
    annotations = [{"id": i, "image_id": i, "caption": r["caption"]} for i, r in enumerate(rows)]
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def write_karpathy(path: Path, train: list[dict], val: list[dict]) -> Path:
    images = [{"filename": r["file"], "imgid": i, "split": split, "sentences": [{"raw": r["caption"]}]}
              for split, rows in (("train", train), ("val", val)) for i, r in enumerate(rows)]
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def write_vqa(root: Path, name: str, rows: list[dict], first_id: int) -> Path:
    questions, annotations = [], []
    for i, r in enumerate(rows):
        qid = first_id + i
        questions.append({"question_id": qid, "image_id": qid, "question": "what colour is it?", "image": r["file"]})
        annotations.append({"question_id": qid, "answer_type": "other", "multiple_choice_answer": r["colour"],
                            "answers": [{"answer": r["colour"]} for _ in range(10)]})
    (root / f"{name}_annotations.json").write_text(json.dumps({"annotations": annotations}))
    path = root / f"{name}_questions.json"
    path.write_text(json.dumps({"questions": questions}))
    return path


def write_wds_shards(root: Path, rows: list[dict], per_shard: int) -> str:
    """With webdataset's own ShardWriter, in img2dataset's layout (jpg, txt, json per key)."""
    root.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(root / "%05d.tar"), maxcount=per_shard, verbose=0) as sink:
        for r in rows:
            sink.write({"__key__": r["key"], "jpg": r["bytes"], "txt": r["caption"],
                        "json": {"key": r["key"], "caption": r["caption"], "status": "success"}})
    last = (len(rows) - 1) // per_shard
    return str(root / f"{{00000..{last:05d}}}.tar")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, tuple[str, str, str]]:
    """format -> (objective, train path, val path), all over the same tiny images."""
    root = tmp_path_factory.mktemp("sources")
    train, val = items(N_TRAIN), items(N_VAL, offset=N_TRAIN)
    write_images(root, train + val)
    found = {ext: ("clip", str(write_pairs(root / f"train.{ext}", train)), str(write_pairs(root / f"val.{ext}", val)))
             for ext in ("csv", "tsv", "jsonl")}
    found["coco"] = ("clip", str(write_coco(root / "captions_train.json", train)),
                     str(write_coco(root / "captions_val.json", val)))
    karpathy = str(write_karpathy(root / "dataset_coco.json", train, val))
    found["karpathy"] = ("clip", karpathy, karpathy)
    found["vqav2"] = ("vqa", str(write_vqa(root, "train", train, 1000)), str(write_vqa(root, "val", val, 2000)))
    found["webdataset"] = ("clip", write_wds_shards(root / "shards", train, per_shard=8),
                           write_wds_shards(root / "val_shards", val, per_shard=8))
    assert main(["data", "shard", found["csv"][1], "--out", str(root / "vlm_shards"), "--shard-size", "8"]) == 0
    found["vlm-shards"] = ("clip", str(root / "vlm_shards"), found["webdataset"][2])
    return found


def train_argv(out: Path, objective: str, train: str, val: str | None, *extra: str) -> list[str]:
    sets = {"model": "clip-tiny", "data.train": train, "steps": 5, "batch_size": 8, "warmup_steps": 2,
            "log_every": 5, "eval_every": 5, "save_every": 100, "data.num_workers": 0, "data.val_samples": 8}
    if objective == "vqa":
        sets.update(objective="vqa", vqa_max_answers=8)
    if val is not None:
        sets["data.val"] = val
    argv = ["train", "--config", "configs/train/clip.yaml", "--out", str(out)]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    return argv + list(extra)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("with_val", [False, True], ids=["no-val", "val"])
@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "coco", "karpathy", "vqav2", "webdataset", "vlm-shards"])
def test_trains_two_epochs_on_every_source(sources, tmp_path, fmt, with_val):
    objective, train, val = sources[fmt]
    out = tmp_path / "run"
    assert main(train_argv(out, objective, train, val if with_val else None)) == 0
    payload = read_checkpoint(out)
    assert payload["step"] == 5
    assert payload["data"]["batches"] == 5  # 5 batches of 8 out of 16 items: into the third epoch
    if fmt in ("webdataset", "vlm-shards"):
        assert payload["data"]["stream"][0]["epoch"] == 2
    # Without data.val a file with no val split validates on training items, and the metric names say so.
    prefix = "val/" if with_val or fmt == "karpathy" else "train_as_val/"
    headline = prefix + ("vqa_accuracy" if objective == "vqa" else "image_retrieval_recall@1")
    assert any(headline in row for row in metrics(out))


def test_an_imagefolder_is_refused_for_training_with_one_line(tmp_path, capsys):
    for i, colour in enumerate(COLOURS):
        (tmp_path / "classes" / colour).mkdir(parents=True)
        (tmp_path / "classes" / colour / f"{i}.jpg").write_bytes(jpeg(colour, i))
    assert main(train_argv(tmp_path / "run", "clip", str(tmp_path / "classes"), None)) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "classes: its items have no caption" in error and "vlm eval zeroshot" in error


def test_a_shard_run_stopped_and_resumed_gets_the_same_weights(tmp_path):
    """Two workers read three shards (two and one: batches come from workers 0, 1, 0 each epoch); the stop
    falls one batch into the second epoch, so the resumed run must start with worker 1's batch."""
    write_images(tmp_path, rows := items(24))
    train = write_wds_shards(tmp_path / "shards", rows, per_shard=8)
    argv = lambda out, *extra: train_argv(out, "clip", train, None, "--set", "data.num_workers=2",  # noqa: E731
                                          "--set", "steps=6", *extra)
    assert main(argv(tmp_path / "straight")) == 0
    assert main(argv(tmp_path / "resumed", "--stop-at", "4")) == 0
    stream = read_checkpoint(tmp_path / "resumed")["data"]["stream"][0]
    assert stream["epoch"] == 1 and sum(stream["consumed"]) == 8  # one batch into the second epoch
    assert main(argv(tmp_path / "resumed", "--resume", "auto")) == 0
    straight, resumed = read_checkpoint(tmp_path / "straight"), read_checkpoint(tmp_path / "resumed")
    assert resumed["step"] == 6
    for key, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, atol=1e-6, rtol=0, msg=key)


# --- bad samples: counted once each, remembered across workers, epochs and resumes ---------------------------

def write_bad_pairs(root: Path, good: int, corrupt: list[int], missing: list[int] = ()) -> Path:
    """`good` images plus corrupt JPEGs and missing files at the given row positions of pairs.csv."""
    rows = items(good)
    write_images(root, rows)
    for i in sorted([*corrupt, *missing]):
        name = f"img/corrupt{i}.jpg" if i in corrupt else f"img/missing{i}.jpg"
        rows.insert(i, {"file": name, "caption": "a broken square"})
        if i in corrupt:
            (root / name).write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return write_pairs(root / "pairs.csv", rows)


def bad_run_argv(out: Path, pairs: Path, steps: int, batch_size: int, workers: int, *extra: str) -> list[str]:
    return train_argv(out, "clip", str(pairs), None, "--set", f"steps={steps}", "--set", f"batch_size={batch_size}",
                      "--set", f"data.num_workers={workers}", "--set", "log_every=10", "--set", f"eval_every={steps}",
                      *extra)


@pytest.fixture
def corrupt_decodes(tmp_path, monkeypatch) -> Path:
    """A file that gets one line (the decoding process's id) per attempt to decode a corrupt image.
    DataLoader workers are forked, so they inherit the patch."""
    import os

    import data_pipelines.records as records

    log, decode = tmp_path / "corrupt_decodes.log", records.decode_image

    def counting_decode(source, *args, **kwargs):
        if Path(str(source)).name.startswith("corrupt"):
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\n")
        return decode(source, *args, **kwargs)

    monkeypatch.setattr(records, "decode_image", counting_decode)
    return log


def test_202_rows_with_one_corrupt_and_one_missing_train_40_steps_and_report_2_bad(tmp_path, capsys,
                                                                                  corrupt_decodes):
    """The issue's case: 0.99% bad over 6+ epochs used to die in epoch 2 (bad counted per visit, in a worker)."""
    pairs = write_bad_pairs(tmp_path, good=200, corrupt=[100], missing=[150])
    assert main(bad_run_argv(tmp_path / "run", pairs, steps=40, batch_size=32, workers=2)) == 0
    assert "pairs.csv: skipped 2 of 202 samples (corrupt image: 1, missing image: 1)" in capsys.readouterr().out
    payload = read_checkpoint(tmp_path / "run")
    assert payload["step"] == 40 and payload["data"]["batches"] >= 40
    assert payload["data"]["bad_samples"]["skipped"] == {"corrupt image": 1, "missing image": 1}
    last = [row for row in metrics(tmp_path / "run") if "data/bad_fraction" in row][-1]
    assert last["data/skipped/corrupt image"] == 1 and last["data/skipped/missing image"] == 1
    assert last["data/bad_fraction"] == pytest.approx(2 / 202)
    pids = corrupt_decodes.read_text().split()
    assert pids and len(pids) == len(set(pids))  # decoded at most once by each worker over 6+ epochs


def test_half_a_percent_corrupt_trains_ten_epochs(tmp_path):
    pairs = write_bad_pairs(tmp_path, good=199, corrupt=[60])  # 2 batches of 100 an epoch
    assert main(bad_run_argv(tmp_path / "run", pairs, steps=20, batch_size=100, workers=0)) == 0
    assert read_checkpoint(tmp_path / "run")["data"]["bad_samples"]["skipped"] == {"corrupt image": 1}


def test_five_percent_corrupt_stops_with_one_line_naming_the_file_and_the_rows(tmp_path, capsys):
    pairs = write_bad_pairs(tmp_path, good=190, corrupt=list(range(20, 200, 18)))
    assert main(bad_run_argv(tmp_path / "run", pairs, steps=40, batch_size=32, workers=2)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Caught" not in err and "worker" not in err
    error = err.strip().splitlines()[-1]
    assert error.startswith("vlm train: error: ") and f"{pairs}: " in error
    assert "samples are bad (corrupt image:" in error and "max_bad_fraction=0.01" in error
    rows = re.findall(r"pairs\.csv line (\d+): \S+/img/corrupt(\d+)\.jpg", error)  # the first ones found
    assert rows and all(int(line) == int(row) + 2 for line, row in rows)  # header + 1-based lines


def test_a_run_resumed_in_epoch_3_reports_the_bad_counts_of_an_uninterrupted_run(tmp_path, capsys,
                                                                                corrupt_decodes):
    pairs = write_bad_pairs(tmp_path, good=200, corrupt=[30], missing=[150])  # 3 batches of 64 an epoch
    argv = lambda out, *extra: bad_run_argv(out, pairs, 10, 64, 0, *extra)  # noqa: E731
    assert main(argv(tmp_path / "straight")) == 0
    assert main(argv(tmp_path / "resumed", "--stop-at", "8")) == 0  # batch 8: the third epoch
    stopped = read_checkpoint(tmp_path / "resumed")["data"]["bad_samples"]
    assert stopped["skipped"] == {"corrupt image": 1, "missing image": 1} and len(stopped["bad"]) == 1
    decodes_before_resume = len(corrupt_decodes.read_text().split())
    capsys.readouterr()
    assert main(argv(tmp_path / "resumed", "--resume", "auto")) == 0
    assert "skipped 2 of 202 samples (corrupt image: 1, missing image: 1)" in capsys.readouterr().out
    straight, resumed = (read_checkpoint(tmp_path / run)["data"]["bad_samples"] for run in ("straight", "resumed"))
    assert resumed == straight
    assert len(corrupt_decodes.read_text().split()) == decodes_before_resume  # the resumed run knew it was bad


class RaisesInWorker(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        raise TooManyBadSamples("pairs.csv: 3 of 202 samples are bad (corrupt image: 3)")


def test_an_error_in_a_dataloader_worker_reaches_the_caller_as_the_worker_raised_it():
    loader = torch.utils.data.DataLoader(RaisesInWorker(), batch_size=2, num_workers=1)
    with pytest.raises(TooManyBadSamples) as caught:
        list(reraise_worker_errors(loader))
    assert str(caught.value) == "pairs.csv: 3 of 202 samples are bad (corrupt image: 3)"
    assert "Caught TooManyBadSamples in DataLoader worker process 0" in str(caught.value.__cause__)  # for --debug


@pytest.mark.slow
def test_torchrun_over_shards_shares_bad_samples_and_resumes_each_rank_where_it_was(tmp_path):
    """Two ranks, one worker each, four shards (two a rank); one corrupt image, found by the rank that reads it,
    which leaves that rank's batch one short (the other ranks trim theirs to match)."""
    import os
    import subprocess
    import sys

    rows = items(32)
    rows[13]["bytes"] = b"\xff\xd8\xff\xe0 this is not a jpeg"
    train = write_wds_shards(tmp_path / "shards", rows, per_shard=8)

    def torchrun(out: Path, *extra: str) -> None:
        argv = train_argv(out, "clip", train, None, "--set", "data.num_workers=1", "--set", "steps=6",
                          "--set", "log_every=1", *extra)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "vlm.cli", *argv]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=Path(__file__).parents[1])
        assert result.returncode == 0, result.stderr[-3000:]

    torchrun(tmp_path / "straight")
    torchrun(tmp_path / "resumed", "--stop-at", "3")
    stopped = read_checkpoint(tmp_path / "resumed")["data"]
    assert [place["epoch"] for place in stopped["stream"]] == [1, 1]  # each rank's own place in its shards
    torchrun(tmp_path / "resumed", "--resume", "auto")
    straight, resumed = read_checkpoint(tmp_path / "straight"), read_checkpoint(tmp_path / "resumed")
    assert straight["data"]["bad_samples"]["skipped"] == {"corrupt image": 1}  # once, in rank 0's file
    assert resumed["data"]["bad_samples"] == straight["data"]["bad_samples"]
    for key, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, atol=1e-5, rtol=0, msg=key)
