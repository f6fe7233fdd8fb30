"""Cheap commands stay cheap (issue 30): `vlm info`, `vlm index info` and `vlm data inspect` answer without
importing torch (nor timm, open_clip, fastapi), each checked in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_pipelines.bpe_count import bpe_token_count

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "open_clip", "fastapi")
CHECK = """
import json, sys
from vlm.cli import main
code = main(json.loads(sys.argv[1]))
print(json.dumps({"code": code, "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
""".replace("HEAVY", repr(HEAVY))


def run_alone(argv: list[str]) -> dict:
    """`vlm ARGV` in a fresh interpreter: its exit code and the heavy modules it imported."""
    result = subprocess.run([sys.executable, "-c", CHECK, json.dumps(argv)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """A tiny clip checkpoint, a shapes world and an index of its test split."""
    from data_pipelines.shapes import generate_shapes_world
    from vlm import create_model
    from vlm.cli import main

    root = tmp_path_factory.mktemp("cheap")
    create_model("clip-tiny").save(root / "clip.pt")
    generate_shapes_world(root / "w", train=4, val=4, test=6, heldout=0, image_size=32)
    assert main(["index", "build", "--checkpoint", str(root / "clip.pt"), "--data", str(root / "w"),
                 "--split", "test", "--out", str(root / "idx")]) == 0
    return {"checkpoint": root / "clip.pt", "world": root / "w", "index": root / "idx"}


@pytest.mark.parametrize("command", [
    lambda b: ["info", str(b["checkpoint"])],
    lambda b: ["index", "info", str(b["index"])],
    lambda b: ["index", "check", str(b["index"])],
    lambda b: ["data", "inspect", str(b["world"] / "pairs_test.csv")],
    lambda b: ["data", "inspect", str(b["world"]), "--check-images", "4"],
], ids=["info", "index-info", "index-check", "data-inspect-csv", "data-inspect-world"])
def test_cheap_command_imports_no_torch(built, command):
    assert run_alone(command(built)) == {"code": 0, "heavy": []}


def test_info_without_torch_prints_what_torch_reads(built, tmp_path, capsys):
    """The torch-free reader gives the same parameter count, step and config as torch.load, and a training
    checkpoint's extra state (optimizer tensors, step) reads too."""
    import torch

    from vlm.models.checkpoint_file import read_checkpoint
    from vlm.models.checkpoint_peek import peek_checkpoint

    payload = read_checkpoint(built["checkpoint"])
    payload.update(step=7, optimizer={"state": {0: {"exp_avg": torch.zeros(3, 2)}}, "param_groups": [{"lr": 1.0}]})
    torch.save(payload, tmp_path / "run.pt")
    peeked = peek_checkpoint(tmp_path / "run.pt")
    assert peeked["config"] == payload["config"] and peeked["step"] == 7
    assert {k: v.shape for k, v in peeked["model"].items()} == {k: tuple(v.shape) for k, v in payload["model"].items()}
    assert peeked["optimizer"]["state"][0]["exp_avg"].numel() == 6


def test_info_falls_back_to_torch_for_the_old_pickle_format(built, tmp_path):
    """torch.save(_use_new_zipfile_serialization=False) (torch < 1.6's format) is read by torch, as before."""
    import torch

    from vlm.models.checkpoint_file import read_checkpoint
    from vlm.models.checkpoint_peek import peek_checkpoint

    payload = read_checkpoint(built["checkpoint"])
    torch.save(payload, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert peek_checkpoint(tmp_path / "old.pt")["config"] == payload["config"]


@pytest.mark.parametrize("text", ["a red circle", "Two DOGS, running!", "café crème brûlée", "  tabs\tand\n lines ",
                                  "&amp;lt;html&amp;gt;", "数字 123 and emoji 🐕", "it's they're we'll", "x" * 300])
def test_bpe_count_matches_open_clip(text):
    from open_clip.tokenizer import SimpleTokenizer

    assert bpe_token_count(text) == len(SimpleTokenizer().encode(text))
