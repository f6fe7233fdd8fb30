"""A late-fusion teacher's embeddings of the training data, computed once (`vlm distill --precompute`).

Written in the embedding-parts layout of clip-retrieval's `clip inference` (parts.json, img_emb/, text_emb/,
metadata/, done/; the contract vlm/index/parts.py also writes), with plain numpy and pyarrow here because
vlm.train sits below vlm.index in the layers. parts.json adds the teacher's `logit_scale`. Each metadata row's
`key` is the item's image id and `caption` its caption, which is how a training batch finds its rows.

The trade-off: steps never run the teacher, but it saw each image once, un-augmented, at the student's
preprocessing resized to its own resolution; a run with `data.augment` is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader

from vlm.atomic_io import atomic_write
from vlm.config import ConfigError
from vlm.errors import UserError
from vlm.train.config import TrainConfig

SCHEMA = pa.schema([("key", pa.string()), ("image_path", pa.string()), ("shard", pa.string()),
                    ("caption", pa.string()), ("has_text", pa.bool_()), ("extra", pa.string())])
FILES = {"image": "img_emb/img_emb_{}.npy", "text": "text_emb/text_emb_{}.npy",
         "metadata": "metadata/metadata_{}.parquet"}


def _npy(vectors: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, vectors.float().cpu().numpy().astype(np.float16))
    return buffer.getvalue()


def write_part(out: Path, tag: str, images: torch.Tensor, texts: torch.Tensor, keys: list[str],
               captions: list[str]) -> None:
    """The three files of one part, then its done marker (sizes and sha256), each written atomically."""
    rows = [{"key": k, "image_path": None, "shard": None, "caption": c, "has_text": True, "extra": "{}"}
            for k, c in zip(keys, captions, strict=True)]
    table = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), table)
    payloads = {FILES["image"].format(tag): _npy(images), FILES["text"].format(tag): _npy(texts),
                FILES["metadata"].format(tag): table.getvalue()}
    for name, data in payloads.items():
        with atomic_write(out / name) as f:
            f.write(data)
    done = {"rows": len(rows), "bytes": {n: len(d) for n, d in payloads.items()},
            "sha256": {n: hashlib.sha256(d).hexdigest() for n, d in payloads.items()}}
    with atomic_write(out / "done" / f"{tag}.json", "w") as f:
        json.dump(done, f)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def precompute_teacher(config: TrainConfig, out: str | Path, batch_size: int = 128, part_size: int = 100_000) -> Path:
    """Run the recipe's teacher once over its training data (in order, no augmentation) and write the parts."""
    from vlm.models.checkpoint import resolve_checkpoint
    from vlm.tokenizer import get_tokenizer
    from vlm.train.data import make_collator, open_split
    from vlm.train.distill import load_teacher, teacher_embeddings
    from vlm.train.run import is_checkpoint, starting_checkpoint, starting_config

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
              "part_size": part_size, "logit_scale": float(teacher_embeddings_scale(teacher))}
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


def teacher_embeddings_scale(teacher) -> float:
    from vlm.models.dual_encoder import MAX_LOGIT_SCALE

    return float(teacher.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE))


def flush(out: Path, part: int, pending: dict[str, list]) -> int:
    write_part(out, f"000_{part:06d}", torch.cat(pending["image"]), torch.cat(pending["text"]), pending["keys"],
               pending["captions"])
    for values in pending.values():
        values.clear()
    return part + 1


class TeacherTable:
    """Precomputed teacher embeddings, in memory, found by a batch's image ids and captions."""

    def __init__(self, parts_dir: str | Path):
        parts_dir = Path(parts_dir)
        header_path = parts_dir / "parts.json"
        if not header_path.is_file():
            raise UserError(f"{parts_dir}: no parts.json; write it with `vlm distill --precompute`")
        header = json.loads(header_path.read_text())
        self.dim, self.logit_scale = int(header["dim"]), float(header["logit_scale"])
        self.images: dict[str, int] = {}
        self.texts: dict[str, int] = {}
        image_rows, text_rows = [], []
        for marker in sorted((parts_dir / "done").glob("*.json")):
            tag = marker.stem
            meta = pq.read_table(parts_dir / FILES["metadata"].format(tag)).to_pydict()
            images = np.load(parts_dir / FILES["image"].format(tag))
            texts = np.load(parts_dir / FILES["text"].format(tag))
            for key, caption, image, text in zip(meta["key"], meta["caption"], images, texts, strict=True):
                if key not in self.images:
                    self.images[key] = len(image_rows)
                    image_rows.append(image)
                if caption not in self.texts:
                    self.texts[caption] = len(text_rows)
                    text_rows.append(text)
        if not image_rows:
            raise UserError(f"{parts_dir}: no finished part (done/*.json)")
        self.image_vectors = torch.from_numpy(np.stack(image_rows).astype(np.float32))
        self.text_vectors = torch.from_numpy(np.stack(text_rows).astype(np.float32))

    def lookup(self, image_ids: list[str], captions: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        try:
            images = self.image_vectors[[self.images[i] for i in image_ids]]
            texts = self.text_vectors[[self.texts[c] for c in captions]]
        except KeyError as e:
            raise UserError(f"precomputed teacher outputs lack item {e.args[0]!r}: write them again over this "
                            "training data with `vlm distill --precompute`") from None
        return {"image": images.to(device), "text": texts.to(device),
                "logit_scale": torch.tensor(self.logit_scale, device=device)}
