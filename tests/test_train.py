"""Training: exact resume, torchrun, SIGTERM, NaN stop, VQA fine-tuning, recipe errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import vlm
from data_pipelines import generate_shapes_world, open_source
from data_pipelines.transforms import eval_transform
from vlm.cli import main
from vlm.losses import sample_hard_negatives
from vlm.models.checkpoint import read_checkpoint
from vlm.tokenizer import padding_mask
from vlm.train import TrainConfig, TrainingError, load_train_config, train
from vlm.train.data import ResumableBatchSampler
from vlm.train.tasks import caption_similarity


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes_world(root, train=48, val=16, test=8, heldout=8, image_size=32, seed=1)
    return root


def recipe(shapes: Path, **changes) -> TrainConfig:
    base = {"model": "clip-tiny", "objective": "clip", "steps": 20, "batch_size": 8, "warmup_steps": 3,
            "save_every": 10, "eval_every": 1000, "log_every": 5,
            "data": {"train": str(shapes), "num_workers": 0, "val_samples": 16}}
    return load_train_config(None, [f"{k}={json.dumps(v)}" for k, v in changes.items()], base=base)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = read_checkpoint(a)["model"], read_checkpoint(b)["model"]
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-6, rtol=0, msg=key)


@pytest.mark.parametrize("model,objective", [("clip-tiny", "clip"), ("fusion-tiny", "fusion")])
def test_resume_gives_identical_weights(shapes, tmp_path, model, objective):
    config = recipe(shapes, model=model, objective=objective)
    straight = train(config, tmp_path / "straight")
    halfway = train(config, tmp_path / "resumed", stop_at_step=10)
    assert read_checkpoint(halfway)["step"] == 10
    resumed = train(config, tmp_path / "resumed", resume="auto")
    assert read_checkpoint(resumed)["step"] == 20
    assert_same_weights(straight, resumed)


def test_run_folder_has_config_metrics_and_plot(shapes, tmp_path):
    checkpoint = train(recipe(shapes, steps=6, eval_every=3), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in rows)
    assert any("val/image_retrieval_recall@1" in r for r in rows)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]["name"] == "clip-tiny"
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert isinstance(vlm.load(checkpoint), vlm.DualEncoder)


@pytest.mark.parametrize("objective", ["clip", "vqa"])
def test_trains_from_a_plain_pairs_csv_and_a_vqav2_file(shapes, tmp_path, objective):
    """What the README tells users to do: point data.train at their own file, not a shapes-world folder."""
    source = shapes / ("pairs_train.csv" if objective == "clip" else "vqa_train_questions.json")
    config = recipe(shapes, steps=2, objective=objective, data={"train": str(source), "num_workers": 0,
                                                                 "val_samples": 8})
    checkpoint = train(config, tmp_path)
    assert read_checkpoint(checkpoint)["step"] == 2


def test_batches_split_across_ranks_without_overlap():
    ranks = [iter(ResumableBatchSampler(40, 4, seed=3, rank=r, world_size=2)) for r in range(2)]
    epoch = [sum((next(it) for _ in range(5)), []) for it in ranks]  # 5 batches of 4 = one epoch per rank
    assert not set(epoch[0]) & set(epoch[1])
    assert sorted(epoch[0] + epoch[1]) == list(range(40))


def test_resumed_sampler_continues_the_same_sequence():
    full = iter(ResumableBatchSampler(30, 4, seed=5))
    batches = [next(full) for _ in range(12)]  # crosses an epoch boundary (7 batches per epoch)
    resumed = iter(ResumableBatchSampler(30, 4, seed=5, start_batch=9))
    assert [next(resumed) for _ in range(3)] == batches[9:]


class PoisonAfter(torch.utils.data.Dataset):
    """Real samples until `clean` items were read, then images full of NaN (a corrupted batch)."""

    def __init__(self, dataset, clean: int):
        self.dataset, self.clean, self.reads = dataset, clean, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        sample = self.dataset[index]
        self.reads += 1
        if self.reads > self.clean:
            sample.image = torch.full_like(sample.image, float("nan"))
        return sample


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(shapes, tmp_path):
    data = open_source(shapes, split="train", transform=eval_transform(32))
    poisoned = PoisonAfter(data, clean=8 * 8)  # steps 1-8 are clean, step 9 is not
    with pytest.raises(TrainingError, match="NaN or infinite.*last good checkpoint"):
        train(recipe(shapes, save_every=5), tmp_path, train_dataset=poisoned)
    payload = read_checkpoint(tmp_path / "checkpoint.pt")
    assert payload["step"] == 5
    assert all(torch.isfinite(w).all() for w in payload["model"].values())


def test_vqa_finetune_with_frozen_towers_trains_only_the_head(shapes, tmp_path):
    base = train(recipe(shapes, steps=2), tmp_path / "clip")
    tuned = train(recipe(shapes, model=str(base), objective="vqa", freeze_towers=True, steps=4, lr=1e-2),
                  tmp_path / "vqa")
    model = vlm.load(tuned)
    assert "yes" in model.config.vqa_answers and "no" in model.config.vqa_answers
    before, after = read_checkpoint(base)["model"], read_checkpoint(tuned)["model"]
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, msg=key)  # the towers did not move
    assert any(k.startswith("vqa_head.") for k in after)


def test_unknown_recipe_key_is_named(shapes, tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"model": "clip-tiny", "data": {"train": str(shapes)}}))
    assert main(["train", "--config", str(path), "--set", "stepz=3", "--out", str(tmp_path / "run")]) == 2
    assert "stepz" in capsys.readouterr().err


def write_recipe(tmp_path: Path, shapes: Path, **changes) -> Path:
    data = {"model": "clip-tiny", "objective": "clip", "batch_size": 8, "warmup_steps": 2, "log_every": 1,
            "eval_every": 1000, "data": {"train": str(shapes), "num_workers": 0, "val_samples": 8}, **changes}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_two_process_torchrun_trains_and_only_rank0_writes(shapes, tmp_path):
    config = write_recipe(tmp_path, shapes, steps=4, save_every=2)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vlm.cli", "train", "--config", str(config), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.yaml", "loss.png", "metrics.jsonl"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]  # one writer: each step logged once
    assert [r["step"] for r in rows if "val/image_retrieval_recall@1" in r] == [4]
    assert read_checkpoint(out / "checkpoint.pt")["step"] == 4


def test_sigterm_saves_a_loadable_checkpoint(shapes, tmp_path):
    config = write_recipe(tmp_path, shapes, steps=100_000, save_every=100_000)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "vlm.cli", "train", "--config", str(config), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    payload = read_checkpoint(out / "checkpoint.pt")
    assert 1 <= payload["step"] < 100_000
    assert isinstance(vlm.load(out / "checkpoint.pt"), vlm.DualEncoder)
    assert "resume" in stdout + stderr


def test_gradient_checkpointing_changes_memory_not_results(shapes, tmp_path):
    plain = train(recipe(shapes, model="fusion-tiny", objective="fusion", steps=2), tmp_path / "plain")
    recomputed = train(recipe(shapes, model="fusion-tiny", objective="fusion", steps=2, grad_checkpointing=True),
                       tmp_path / "checkpointed")
    assert_same_weights(plain, recomputed)


def test_a_low_itm_negative_temperature_draws_the_caption_that_differs_by_one_word():
    tokenizer = vlm.Tokenizer(16)
    captions = ["a red circle", "a blue circle", "a green square", "a yellow triangle", "two small stars"]
    ids = tokenizer(captions)
    similarity = caption_similarity(ids, padding_mask(ids))
    same = torch.eye(len(captions), dtype=torch.bool)
    generator = torch.Generator().manual_seed(0)

    def share_of_blue_circle(temperature: float) -> float:
        draws = [int(sample_hard_negatives(similarity / temperature, same, generator)[0]) for _ in range(400)]
        return draws.count(1) / len(draws)

    assert share_of_blue_circle(0.05) > 0.95  # as TrainConfig(itm_negative_temperature=0.05) draws them
    assert share_of_blue_circle(1.0) < 0.5  # temperature 1: nearly uniform over the other four


def test_a_resumed_run_logs_each_step_once(shapes, tmp_path):
    """A run that logged step 15 and died before its next checkpoint (10) resumes at 10 and logs 15 again."""
    config = recipe(shapes)
    out = tmp_path / "run"
    train(config, out, stop_at_step=10)
    at_ten = (out / "checkpoint.pt").read_bytes()
    train(config, out, resume="auto", stop_at_step=15)  # logs step 15 ...
    (out / "checkpoint.pt").write_bytes(at_ten)  # ... but its checkpoint was never written
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 16, "loss": 1.0')  # a line torn by the crash
    train(config, out, resume="auto")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [5, 10, 15, 20]
