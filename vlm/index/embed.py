"""`vlm index embed` (and the first half of `vlm index build`): a collection into embedding parts, over ranks.

Under torchrun every rank reads the same stream of images (vlm/index/stream.py) and takes image i when
i % world_size == rank; its images go, `part_size` at a time, into its own parts `{rank:03d}_{part:06d}`
(vlm/index/parts.py). A part is the unit of resume: one with its done marker is passed over without decoding
an image, one without is embedded again. Nothing grows with the collection: one part's vectors are in memory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import groupby, islice
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from data_pipelines.image_bytes import sniff_format
from data_pipelines.sample import SkipStats
from vlm.atomic_io import atomic_write
from vlm.index.parts import PartsHeader, check_header, list_parts, part_tag, write_header, write_part
from vlm.index.stream import Entry, stream_collection

if TYPE_CHECKING:
    from vlm.index.encoder import Encoder
    from vlm.train.distributed import DistributedEnv


@dataclass(frozen=True)
class EmbedOptions:
    split: str | None = None
    batch_size: int = 64
    part_size: int = 10_000  # images per part: the unit of resume
    precision: str = "fp32"
    copy_images: bool = False  # keep a copy of each image's original bytes in PARTS/images/
    progress: bool = True
    label: str = "index build"  # the progress bar's
    source: dict = field(default_factory=dict)  # a pairs file's columns (data_pipelines.options.pairs_options)


def source_text(data: str | Path, split: str | None) -> str:
    return safe_text(f"{Path(data).resolve()}" + (f" split={split}" if split else ""))


def safe_text(text: str) -> str:
    """`text` as UTF-8 can store it: a file name in another encoding (Latin-1 bytes reach Python as surrogate
    escapes) is kept with those bytes written as `\\xe9`, the stated replacement; valid text is unchanged."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def image_root(data: str | Path) -> Path:
    """What image paths are relative to: the source folder, or the folder of a pairs file."""
    root = Path(data).resolve()
    return root if root.is_dir() else root.parent


def embed_parts(encoder: Encoder, data: str | Path, parts_dir: Path, options: EmbedOptions,
                env: DistributedEnv) -> SkipStats:
    """Write this rank's parts of `data`; every rank checks the header before rank 0 writes it."""
    if options.part_size < 1:
        raise ValueError(f"--part-size must be at least 1, got {options.part_size}")
    header = PartsHeader(dim=encoder.dim, model=encoder.name, weights=encoder.weights or "",
                         precision=options.precision, source=source_text(data, options.split),
                         world_size=env.world_size, part_size=options.part_size)
    check_header(parts_dir, header)
    _barrier(env)  # no rank writes before every rank has compared
    if env.is_main:
        write_header(parts_dir, header)
    done = {p.tag for p in list_parts(parts_dir)}
    stats = SkipStats(source=str(data))
    root = image_root(data)
    label = f"{options.label} rank {env.rank}" if env.is_distributed else options.label
    bar = tqdm(unit="img", desc=label, disable=not options.progress)
    try:
        for number, entries in my_parts(stream_collection(data, options.split, options.source, stats), env, options):
            tag = part_tag(env.rank, number)
            if tag in done:
                for _ in entries:  # passed over undecoded
                    pass
                continue
            _embed_part(encoder, entries, parts_dir, tag, root, options, bar)
    finally:
        bar.close()
    stats.check(final=True)
    return stats


def embed_to(checkpoint: str | Path, data: str | Path, parts_dir: str | Path, options: EmbedOptions) -> SkipStats:
    """`vlm index embed`: this rank's parts of `data` in `parts_dir`, with no index folder."""
    from vlm.index.encoder import load_encoder
    from vlm.train.distributed import init_distributed

    env = init_distributed()
    encoder = load_encoder(checkpoint, options.precision, fingerprint=True)
    return embed_parts(encoder, data, Path(parts_dir), options, env)


def my_parts(entries: Iterator[Entry], env: DistributedEnv, options: EmbedOptions,
             ) -> Iterator[tuple[int, Iterator[Entry]]]:
    """(part number, its entries) of this rank: image i is the rank's i // world_size-th, in part
    (i // world_size) // part_size."""
    mine = (e for i, e in enumerate(entries) if i % env.world_size == env.rank)
    numbered = ((j // options.part_size, e) for j, e in enumerate(mine))
    for number, group in groupby(numbered, key=lambda pair: pair[0]):
        yield number, (e for _, e in group)


def _embed_part(encoder: Encoder, entries: Iterator[Entry], parts_dir: Path, tag: str, root: Path,
                options: EmbedOptions, bar: tqdm) -> None:
    """Read a batch at a time (a shard member holds its image's bytes until decoded), keep the part's vectors."""
    images, texts, rows = [], [], []
    skipped = 0
    while batch := [(e, e.load()) for e in islice(entries, options.batch_size)]:
        good = [(e, s) for e, s in batch if s.image is not None]
        skipped += len(batch) - len(good)
        if good:
            image_vecs, text_vecs = _add_batch(encoder, good, parts_dir, rows, copy_all=options.copy_images)
            images.append(image_vecs)
            texts.append(text_vecs)
        bar.update(len(batch))
    dim = encoder.dim
    write_part(parts_dir, tag, np.concatenate(images) if images else np.zeros((0, dim)),
               np.concatenate(texts) if texts else np.zeros((0, dim)), _relative_rows(rows, root), skipped)


def _add_batch(encoder: Encoder, good: list, parts_dir: Path, rows: list[dict], copy_all: bool = False,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Embed one batch; its metadata rows are appended to `rows`. Returns (image, text) vectors, a zero text row
    for an image without a caption. An image is copied with `copy_all`, or when its file name is one UTF-8 cannot
    store (the name kept is a stated replacement, which names no file)."""
    image_vecs = encoder.encode_images([s.image for _, s in good])
    text_vecs = np.zeros_like(image_vecs)
    with_text = [i for i, (e, _) in enumerate(good) if e.captions]
    if with_text:
        text_vecs[with_text] = encoder.encode_texts([good[i][0].captions[0] for i in with_text])
    for entry, sample in good:
        copy = copy_all or (entry.path is not None and safe_text(str(entry.path)) != str(entry.path))
        path = _copy_image(entry, sample, parts_dir) if copy else entry.path
        rows.append({"key": safe_text(entry.key), "image_path": path, "shard": entry.shard,
                     "caption": entry.captions[0] if entry.captions else None, "has_text": bool(entry.captions),
                     "extra": json.dumps(_extra(entry, sample, copied=copy))})
    return image_vecs, text_vecs


def _relative_rows(rows: list[dict], root: Path) -> list[dict]:
    """A file's path relative to the source's image root (a copy's: relative to the parts folder)."""
    for row in rows:
        path = row["image_path"]
        if isinstance(path, Path):
            try:
                row["image_path"] = safe_text(path.resolve().relative_to(root).as_posix())
            except ValueError:  # outside the root (an absolute path in a pairs file): kept whole
                row["image_path"] = safe_text(str(path.resolve()))
    return rows


def _copy_image(entry: Entry, sample, parts_dir: Path) -> str:
    """The image's original bytes (EXIF, bit depth and compression intact) under PARTS/images/ab/<sha1>.<ext>,
    named by the format the bytes are in; only a sample without bytes or file is saved as PNG."""
    data = entry.path.read_bytes() if entry.path is not None else sample.meta.get("image_bytes")
    extension = sniff_format(data).extension if data is not None else "png"
    digest = hashlib.sha1(safe_text(entry.key).encode()).hexdigest()[:20]
    name = f"images/{digest[:2]}/{digest}.{extension}"
    with atomic_write(parts_dir / name) as f:
        if data is not None:
            f.write(data)
        else:
            sample.image.save(f, format="PNG")
    return name


def _extra(entry: Entry, sample, copied: bool) -> dict:
    """The item's metadata; names from the file system (ids, class folders) as `safe_text` stores them."""
    extra: dict = {"image_id": safe_text(entry.key)}
    if len(entry.captions) > 1:
        extra["captions"] = entry.captions
    if sample.label is not None:
        extra["label"] = sample.label
    for key, value in sample.meta.items():
        if isinstance(value, (str, int, float, bool)) and not key.startswith("skip"):
            extra.setdefault(key, safe_text(value) if isinstance(value, str) else value)
    if copied:
        extra["copied"] = True  # image_path is relative to the parts folder
    return extra


def _barrier(env: DistributedEnv) -> None:
    if env.is_distributed:
        import torch.distributed as dist

        dist.barrier()
