"""`vlm index build`: embed a collection into an index folder, atomically and resumably.

The build writes into `OUT.partial/`; each batch is one committed transaction keyed by the image's id in
its source, so an interrupted build started again with the same arguments skips what is done. Only a
finished build is renamed to `OUT`, so a reader never sees half an index.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from data_pipelines.image_bytes import sniff_format
from data_pipelines.records import RecordDataset
from data_pipelines.sample import Sample
from data_pipelines.sources import open_source
from vlm.atomic_io import atomic_write
from vlm.index.backends import FaissConfig
from vlm.index.config import CONFIG_NAME, IndexConfig
from vlm.index.folder import ItemIndex
from vlm.index.lock import FolderLock
from vlm.index.store import Item

if TYPE_CHECKING:  # the encoder (torch) loads only to build: `vlm index info` reads without it
    from vlm.index.encoder import Encoder


@dataclass(frozen=True)
class BuildOptions:
    split: str | None = None
    batch_size: int = 64
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


def open_collection(data: str | Path, split: str | None = None, options: dict | None = None):
    """A pairs source of any supported format, or a folder, read as `open_source` reads it for every command:
    a folder with an image directly in it is a plain folder, searched recursively; one with images only in
    subfolders is an ImageFolder (`DIR/<class>/<image>`). `options` name a pairs file's columns."""
    dataset = open_source(data, split, **(options or {}))
    if hasattr(dataset, "keep_bytes"):  # shards: their images are copied into the index as they are stored
        dataset.keep_bytes = True
    return dataset


def unique_images(dataset) -> Iterator[tuple[Sample, list[str], str | None]]:
    """(decoded sample, all its captions, its file) per image id: five captions of one image make one item."""
    if isinstance(dataset, RecordDataset):
        captions: dict[str, list[str]] = {}
        first: dict[str, int] = {}
        for i, record in enumerate(dataset.records):
            first.setdefault(record.image_id, i)
            if record.caption:
                captions.setdefault(record.image_id, []).append(record.caption)
        for image_id, i in first.items():
            yield dataset[i], captions.get(image_id, []), str(Path(dataset.records[i].image).resolve())
    else:  # shards: one caption per key, image bytes and no file
        for sample in dataset:
            yield sample, [sample.caption] if sample.caption else [], None


def count_images(dataset) -> int | None:
    return len({r.image_id for r in dataset.records}) if isinstance(dataset, RecordDataset) else None


def build_index(checkpoint: str | Path, data: str | Path, out: str | Path,
                options: BuildOptions = BuildOptions()) -> Path:
    """Embed every image (and its first caption) of `data` with the late-fusion model into index `out`."""
    out = Path(out)
    if (out / CONFIG_NAME).exists() and not options.overwrite:
        raise ValueError(f"{out}: an index is already there (pass --overwrite to replace it)")
    if (out / CONFIG_NAME).exists():
        FolderLock(out).release()  # refuse now, not after the whole build, while a server has it open
    from vlm.index.encoder import load_encoder

    encoder = load_encoder(checkpoint, options.precision, fingerprint=True)
    dataset = open_collection(data, options.split, options.source)
    staging = out.with_name(out.name + ".partial")
    index = ItemIndex(staging, IndexConfig(dim=encoder.dim, backend=options.backend, model=encoder.name,
                                           precision=options.precision, faiss=options.faiss,
                                           milvus_uri=options.milvus_uri, milvus_index=options.milvus_index,
                                           milvus_collection=options.milvus_collection),
                      milvus_token=options.milvus_token)
    source = safe_text(f"{Path(data).resolve()}" + (f" split={options.split}" if options.split else ""))
    try:
        check_resumable(index, staging, source, encoder, checkpoint, options.precision)
        index.store.set_meta({"source": source, "checkpoint": safe_text(str(Path(checkpoint).resolve())),
                              "image_root": safe_text(str(image_root(data))), "weights": encoder.weights})
        added, skipped = _encode_into(index, encoder, dataset, staging, options)
        dataset.stats.check(final=True)  # the one bad-file rule (--max-bad-fraction), a folder's as a file's
        index.store.set_meta({"built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "skipped": str(skipped)})
    finally:
        index.close()  # also on an error: the staging folder's lock goes with it
    # A resumed build's first open built faiss from the part done then; without its snapshots the reopen
    # builds the search structures from the whole table (exact or approximate by the full count) and saves them.
    for snapshot in staging.glob("*.faiss"):
        snapshot.unlink()
    ItemIndex(staging, milvus_token=options.milvus_token).close()
    _replace_dir(staging, out)
    if options.progress:
        print(f"{out}: {added} items added ({skipped} images skipped as unreadable)")
    return out


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


def safe_text(text: str) -> str:
    """`text` as UTF-8 can store it: a file name in another encoding (Latin-1 bytes reach Python as surrogate
    escapes) is kept with those bytes written as `\\xe9`, the stated replacement; valid text is unchanged."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def image_root(data: str | Path) -> Path:
    """What item paths are shown relative to: the source folder, or the folder of a pairs file."""
    root = Path(data).resolve()
    return root if root.is_dir() else root.parent


def _encode_into(index: ItemIndex, encoder: Encoder, dataset, staging: Path, options: BuildOptions) -> tuple[int, int]:
    bar = tqdm(total=count_images(dataset), initial=len(index.store.source_keys()), unit="img", desc="index build",
               disable=not options.progress)
    try:  # an error is printed after the bar's line is closed, never on it
        return _encode_all(index, encoder, dataset, staging, options, bar)
    finally:
        bar.close()


def _encode_all(index: ItemIndex, encoder: Encoder, dataset, staging: Path, options: BuildOptions,
                bar: tqdm) -> tuple[int, int]:
    done = index.store.source_keys()
    batch: list[tuple[Sample, list[str], str | None]] = []
    added = skipped = 0
    for sample, captions, path in unique_images(dataset):
        if safe_text(sample.image_id) in done:
            continue
        if sample.image is None:
            skipped += 1
            bar.update(1)
            continue
        batch.append((sample, captions, path))
        if len(batch) == options.batch_size:
            added += _add_batch(index, encoder, batch, staging)
            bar.update(len(batch))
            batch = []
    if batch:
        added += _add_batch(index, encoder, batch, staging)
        bar.update(len(batch))
    return added, skipped


def _add_batch(index: ItemIndex, encoder: Encoder, batch: list[tuple[Sample, list[str], str | None]],
               staging: Path) -> int:
    image_vecs = encoder.encode_images([s.image for s, _, _ in batch])
    texts = [caps[0] for _, caps, _ in batch if caps]
    text_vecs = iter(encoder.encode_texts(texts)) if texts else iter(())
    items = []
    for (sample, captions, path), image_vec in zip(batch, image_vecs, strict=True):
        if path is None or safe_text(path) != path:  # a name UTF-8 cannot store: the index keeps a copy
            path = _save_image(sample, staging, path)
        items.append(Item(path=path, caption=captions[0] if captions else None,
                          extra=_extra(sample, captions), image_vec=image_vec,
                          text_vec=next(text_vecs) if captions else None, source_key=safe_text(sample.image_id)))
    index.add(items, index_vectors=False)  # vectors go to the search structure in one piece at the end
    return len(items)


def _save_image(sample: Sample, staging: Path, path: str | None = None) -> str:
    """Keep a copy the server can show and re-rank, of the original bytes (EXIF, bit depth and compression
    intact), named by the format the bytes are in: shards hold bytes, not files, and a file whose name UTF-8
    cannot store is copied. Only a sample without its bytes is saved as PNG from its pixels."""
    data = Path(path).read_bytes() if path is not None else sample.meta.get("image_bytes")
    extension = sniff_format(data).extension if data is not None else "png"
    name = f"images/{hashlib.sha1(safe_text(sample.image_id).encode()).hexdigest()[:20]}.{extension}"
    with atomic_write(staging / name) as f:
        if data is not None:
            f.write(data)
        else:
            sample.image.save(f, format="PNG")
    return name


def _extra(sample: Sample, captions: list[str]) -> dict:
    """The item's metadata; names from the file system (ids, class folders) as `safe_text` stores them."""
    extra: dict = {"image_id": safe_text(sample.image_id)}
    if len(captions) > 1:
        extra["captions"] = captions
    if sample.label is not None:
        extra["label"] = sample.label
    for key, value in sample.meta.items():
        if isinstance(value, (str, int, float, bool)) and not key.startswith("skip"):
            extra.setdefault(key, safe_text(value) if isinstance(value, str) else value)
    return extra


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

