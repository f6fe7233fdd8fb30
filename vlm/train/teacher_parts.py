"""A late-fusion teacher's embeddings of the training data, computed once (`vlm distill --precompute`, which
vlm/distill/precompute.py runs): the parts' writer and the table the distillation steps read.

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

from vlm.atomic_io import atomic_write
from vlm.errors import UserError

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
