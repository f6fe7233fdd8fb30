"""`vlm index build`: embed a collection into an index folder, over torchrun ranks, atomically and resumably.

The build writes into `OUT.partial/`: every rank first embeds its share into `OUT.partial/parts/`
(vlm/index/embed.py; a finished part is never embedded again), then, when all ranks are done, rank 0 adds the
parts' items to the folder's table in committed batches and builds the search structures. Only a finished
build is renamed to `OUT`, so a reader never sees half an index; a build started again with the same
arguments continues where it stopped.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vlm.index.backends import FaissConfig
from vlm.index.config import CONFIG_NAME, IndexConfig
from vlm.index.embed import EmbedOptions, _barrier, embed_parts, image_root, safe_text, source_text
from vlm.index.folder import ItemIndex
from vlm.index.ingest import ingest_parts, item_from_row, unique_keys
from vlm.index.lock import FolderLock
from vlm.index.parts import list_parts

if TYPE_CHECKING:  # the encoder (torch) loads only to build: `vlm index info` reads without it
    from vlm.index.encoder import Encoder

PARTS_DIR = "parts"


@dataclass(frozen=True)
class BuildOptions:
    split: str | None = None
    batch_size: int = 64
    part_size: int = 10_000  # images per embedding part, the unit of resume
    copy_images: bool = False  # keep each image's original bytes in the index (default: refer to the source)
    backend: str = "faiss"
    faiss: FaissConfig = FaissConfig()
    milvus_uri: str = ""
    milvus_collection: str = "vlm"
    milvus_index: str = "FLAT"  # FLAT, HNSW, IVF_PQ or DISKANN (vlm/index/milvus.py)
    milvus_token: str = field(default="", repr=False)  # never written; "" = $VLM_MILVUS_TOKEN
    overwrite: bool = False
    progress: bool = True
    precision: str = "fp32"  # the encoder's (vlm.models.precision); recorded in index.json for the server
    source: dict = field(default_factory=dict)  # a pairs file's columns (data_pipelines.options.pairs_options)

    def embed_options(self) -> EmbedOptions:
        return EmbedOptions(split=self.split, batch_size=self.batch_size, part_size=self.part_size,
                            precision=self.precision, copy_images=self.copy_images, progress=self.progress,
                            source=self.source)


def build_index(checkpoint: str | Path, data: str | Path, out: str | Path,
                options: BuildOptions = BuildOptions()) -> Path:
    """Embed every image (and its first caption) of `data` with the late-fusion model into index `out`. Under
    torchrun every rank embeds its share; rank 0 writes the folder, the others return once their parts are done."""
    out = Path(out)
    if (out / CONFIG_NAME).exists() and not options.overwrite:
        raise ValueError(f"{out}: an index is already there (pass --overwrite to replace it)")
    if (out / CONFIG_NAME).exists():
        FolderLock(out).release()  # refuse now, not after the whole build, while a server has it open
    from vlm.index.encoder import load_encoder
    from vlm.train.distributed import init_distributed

    env = init_distributed()
    encoder = load_encoder(checkpoint, options.precision, fingerprint=True)
    staging = out.with_name(out.name + ".partial")
    if env.is_main:
        _start_staging(staging, checkpoint, data, encoder, options)
    embed_parts(encoder, data, staging / PARTS_DIR, options.embed_options(), env)
    _barrier(env)  # every rank's parts are written
    if not env.is_main:
        return out
    skipped = sum(p.skipped for p in list_parts(staging / PARTS_DIR))
    move_copied_images(staging / PARTS_DIR, staging)
    index = ItemIndex(staging, milvus_token=options.milvus_token)
    try:
        fill_from_parts(index, staging / PARTS_DIR)
        index.store.set_meta({"built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "skipped": str(skipped)})
        count = len(index)
    finally:
        index.close()  # also on an error: the staging folder's lock goes with it
    finish_build(staging, out, options.milvus_token)
    if options.progress:
        print(f"{out}: {count} items added ({skipped} images skipped as unreadable)")
    return out


def _start_staging(staging: Path, checkpoint: str | Path, data: str | Path, encoder: Encoder,
                   options: BuildOptions) -> None:
    """Create (or check, to resume) the staging folder, recording what builds it."""
    from vlm.models.cpu import cpu_class  # torch: `vlm index info` imports this module without it
    index = ItemIndex(staging, IndexConfig(dim=encoder.dim, backend=options.backend, model=encoder.name,
                                           precision=options.precision, cpu_class=cpu_class(), faiss=options.faiss,
                                           milvus_uri=options.milvus_uri, milvus_index=options.milvus_index,
                                           milvus_collection=options.milvus_collection),
                      milvus_token=options.milvus_token)
    try:
        check_resumable(index, staging, source_text(data, options.split), encoder, checkpoint, options.precision)
        index.store.set_meta({"source": source_text(data, options.split),
                              "checkpoint": safe_text(str(Path(checkpoint).resolve())),
                              "image_root": safe_text(str(image_root(data))), "weights": encoder.weights})
    finally:
        index.close()


def move_copied_images(parts_dir: Path, folder: Path) -> None:
    """Images `--copy-images` kept in PARTS/images/ move to the index folder's images/, under the same names
    (`images/ab/<sha1>.<ext>`, so their rows' paths hold there too); what is moved is gone, so a rerun goes on."""
    for path in sorted((parts_dir / "images").rglob("*")):
        if path.is_file():
            target = folder / path.relative_to(parts_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)


def fill_from_parts(index: ItemIndex, parts_dir: Path, batch_rows: int = 4096) -> None:
    """The table refers to the parts' rows (`ingest_parts`, no vector copied), except on a shared Milvus server
    collection, whose ids come from Milvus: there each batch is added with its vectors through the registry, and
    a resumed fill starts after the items the table holds."""
    if not index.config.shared:
        ingest_parts(index)
        return
    root, done, position = index.store.get_meta("image_root"), len(index), 0
    for part in list_parts(parts_dir):
        table, images, texts = part.metadata(), part.vectors("image"), part.vectors("text")
        for lo in range(max(0, done - position), part.rows, batch_rows):
            items = []
            for i, row in enumerate(table.slice(lo, batch_rows).to_pylist(), lo):
                item = item_from_row(row, root)
                item.image_vec = _unit(images[i])
                item.text_vec = _unit(texts[i]) if row["has_text"] else None
                items.append(item)
            unique_keys(index, items, list(range(position + lo, position + lo + len(items))))
            index.add(items, index_vectors=False)
        position += part.rows


def _unit(vector: np.ndarray) -> np.ndarray:
    """A float16 vector as float32 of length 1 again (float16 rounding leaves it off by about 1e-4)."""
    vector = np.asarray(vector, dtype=np.float32)
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def finish_build(staging: Path, out: Path, milvus_token: str = "") -> None:
    """Build the search structures of a finished staging folder and swap it in as `out`."""
    # A resumed build's first open built faiss from the part done then; without its snapshots the reopen
    # builds the search structures from the whole table (exact or approximate by the full count) and saves them.
    for snapshot in staging.glob("*.faiss"):
        snapshot.unlink()
    ItemIndex(staging, milvus_token=milvus_token).close()
    _replace_dir(staging, out)


def check_resumable(index: ItemIndex, staging: Path, source: str, encoder: Encoder, checkpoint: str | Path,
                    precision: str) -> None:
    """A partial build continues only with the same source, precision and weights: a model's name is not
    enough (two clip-tiny checkpoints share it), so the weights' fingerprint is compared."""
    previous = index.store.get_meta("source")
    if previous is None:
        return
    if previous != source or index.config.model != encoder.name or index.config.precision != precision:
        raise ValueError(f"{staging}: holds a partial build of {previous} with {index.config.model} at "
                         f"{index.config.precision}; delete it to build another source, model or precision")
    weights, before = index.store.get_meta("weights"), index.store.get_meta("checkpoint")
    if weights != encoder.weights:
        recorded = f"weights {weights[:16]}" if weights else "weights not recorded"
        raise ValueError(f"{staging}: holds a partial build made with {before} ({recorded}), but {checkpoint} has "
                         f"weights {encoder.weights[:16]}; delete {staging} or resume with the same checkpoint")


def _replace_dir(staging: Path, out: Path) -> None:
    """Swap the finished build in, holding the old folder's lock, so a server never loses its folder under it."""
    if not out.exists():
        os.replace(staging, out)
        return
    lock = FolderLock(out)  # refuses while a server (or another build) has the index open
    try:
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(staging, out)
    finally:
        lock.release()
    shutil.rmtree(old)


def index_info(directory: str | Path) -> dict:
    index = ItemIndex(directory)
    try:
        info = index.info()
        info.update({key: index.store.get_meta(key) for key in ("source", "checkpoint", "weights", "built_at")})
        skipped = index.store.get_meta("skipped")
        info["skipped"] = int(skipped) if skipped is not None else None  # a count, stored as text
        return info
    finally:
        index.close()

