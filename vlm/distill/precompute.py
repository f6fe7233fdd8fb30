"""`vlm distill --precompute`: run the recipe's late-fusion teacher once over its training data into embedding parts
(the layout vlm/train/teacher_parts.py writes and reads), so the distillation steps never run it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from vlm.atomic_io import atomic_write
from vlm.config import ConfigError
from vlm.models.checkpoint import resolve_checkpoint
from vlm.models.dual_encoder import MAX_LOGIT_SCALE
from vlm.tokenizer import get_tokenizer
from vlm.train.config import TrainConfig
from vlm.train.data import make_collator, open_split
from vlm.train.distill import load_teacher, teacher_embeddings
from vlm.train.run import is_checkpoint, starting_checkpoint, starting_config
from vlm.train.teacher_parts import file_sha256, write_part


def precompute_teacher(config: TrainConfig, out: str | Path, batch_size: int = 128, part_size: int = 100_000) -> Path:
    """Run the recipe's teacher once over its training data (in order, no augmentation) and write the parts."""
    distill = config.distill
    if distill is None or not distill.teacher:
        raise ConfigError("--precompute needs objective distill with a distill.teacher")
    teacher = load_teacher(distill)
    if teacher.config.arch != "dual_encoder":
        raise ConfigError("--precompute is for a late-fusion teacher: an early-fusion teacher scores the student's "
                          "own top-k, which change every step, so it runs online")
    student_config = starting_config(config, starting_checkpoint(config.model) if is_checkpoint(config.model)
                                     else None, config.model)
    data = open_split(config.data.train, config.data.train_split, "clip", student_config, False,
                      config.data.train_source_options())
    collate = make_collator(get_tokenizer(student_config), pad_to_longest=True)
    out = Path(out)
    teacher_file = Path(distill.teacher)
    weights = file_sha256(resolve_checkpoint(teacher_file)) if teacher_file.is_file() or \
        (teacher_file / "checkpoint.pt").is_file() else ""
    header = {"format": 1, "dim": teacher.config.embed_dim, "dtype": "float16", "model": teacher.config.name,
              "weights": weights, "precision": "float32", "source": str(config.data.train), "world_size": 1,
              "part_size": part_size, "logit_scale": float(teacher.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE))}
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "parts.json", "w") as f:
        json.dump(header, f, indent=2)
    pending: dict[str, list] = {"image": [], "text": [], "keys": [], "captions": []}
    part = 0
    for batch in DataLoader(data, batch_size=batch_size, collate_fn=collate):
        target = teacher_embeddings(teacher, batch["images"], batch["text"])
        pending["image"].append(target["image"])
        pending["text"].append(target["text"])
        pending["keys"] += batch["image_ids"]
        pending["captions"] += batch["captions"]
        if len(pending["keys"]) >= part_size:
            part = flush(out, part, pending)
    if pending["keys"]:
        flush(out, part, pending)
    return out


def flush(out: Path, part: int, pending: dict[str, list]) -> int:
    write_part(out, f"000_{part:06d}", torch.cat(pending["image"]), torch.cat(pending["text"]), pending["keys"],
               pending["captions"])
    for values in pending.values():
        values.clear()
    return part + 1
