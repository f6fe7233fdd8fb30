"""A collection read one image at a time, undecoded: what `vlm index embed` splits over ranks and parts.

Each `Entry` names one image (its stable key, captions, file or shard member) and decodes it only when asked,
so a resumed build passes over a finished part's images without opening one. CSV/TSV/JSONL files, plain image
folders, ImageFolder trees and shards are read record by record, in constant memory (a folder's listing at a
time); captions of one image are grouped when their rows are adjacent. COCO and Karpathy files are read as
their loaders read them, then handed out one image at a time: each is one JSON document whose captions are
grouped by image id across the file, so some index of it is held whatever the reader (118k images for COCO
2017 train).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

from data_pipelines.imagefolder import imagefolder_classes, iter_imagefolder
from data_pipelines.images import IMAGE_EXTENSIONS, BadImage, decode_image
from data_pipelines.pairs import iter_pairs
from data_pipelines.records import RecordDataset
from data_pipelines.sample import Sample, SkipStats
from data_pipelines.sources import detect_format, open_source


@dataclass
class Entry:
    key: str  # the image's id in its source, as the index stores it
    captions: list[str]
    path: Path | None  # its file, or None for a shard member
    shard: str | None  # "SHARD:KEY" for a shard member
    load: Callable[[], Sample] = field(repr=False)  # decodes; a bad image gives image=None


def stream_collection(data: str | Path, split: str | None, options: dict, stats: SkipStats,
                      max_pixels: int | None = None) -> Iterator[Entry]:
    """Every image of `data` once, in a fixed order (the same on every rank and every resume)."""
    fmt = detect_format(data) if not str(data).endswith(".json") else "json"
    if fmt == "shapes" and split:
        data, fmt = Path(data) / f"pairs_{split}.csv", "csv"
    if fmt in ("csv", "tsv", "jsonl"):
        return _pairs_entries(Path(data), options, stats, max_pixels)
    if fmt == "folder":
        return _folder_entries(Path(data), stats, max_pixels)
    if fmt == "imagefolder":
        return _imagefolder_entries(Path(data), options, stats, max_pixels)
    dataset = open_source(data, split, **options)
    _count_into(dataset, stats)
    if fmt == "webdataset":
        dataset.keep_bytes = True
        return _shard_entries(dataset)
    return _record_entries(dataset)


def _count_into(dataset, stats: SkipStats) -> None:
    """The reader's counts (files found missing while its index was read) go to `stats`, and so will its
    decoding failures: one bad-file rule for the whole build."""
    stats.seen += dataset.stats.seen
    stats.skipped.update(dataset.stats.skipped)
    stats.examples += dataset.stats.examples[:5 - len(stats.examples)]
    dataset.stats = stats


def _pairs_entries(path: Path, options: dict, stats: SkipStats, max_pixels: int | None) -> Iterator[Entry]:
    records = iter_pairs(path, stats, **options)
    for image_id, group in groupby(records, key=lambda r: r.image_id):
        group = list(group)
        yield Entry(image_id, [r.caption for r in group], Path(group[0].image), None,
                    _loader(group[0], stats, max_pixels))


def _folder_entries(root: Path, stats: SkipStats, max_pixels: int | None) -> Iterator[Entry]:
    """Every image under `root`, walked folder by folder in sorted order; its id is its path under `root`."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                stats.ok()
                record = Sample(str(path), path.relative_to(root).as_posix())
                yield Entry(record.image_id, [], path, None, _loader(record, stats, max_pixels))


def _imagefolder_entries(root: Path, options: dict, stats: SkipStats, max_pixels: int | None) -> Iterator[Entry]:
    """An ImageFolder tree class by class, as its loader orders it (same keys, labels and class names)."""
    folders, classnames, _ = imagefolder_classes(root, options.get("keep_empty", False))
    for record, _ in iter_imagefolder(root, folders, classnames):
        stats.ok()
        yield Entry(record.image_id, [], Path(record.image), None, _loader(record, stats, max_pixels))


def _loader(record: Sample, stats: SkipStats, max_pixels: int | None) -> Callable[[], Sample]:
    def load() -> Sample:
        try:
            return Sample(decode_image(record.image, max_pixels), record.image_id, label=record.label,
                          meta=dict(record.meta))
        except BadImage as e:
            stats.skip(e.reason, e.detail, count_seen=False)
            return Sample(None, record.image_id, meta={"skip_reason": e.reason})
    return load


def _record_entries(dataset: RecordDataset) -> Iterator[Entry]:
    captions: dict[str, list[str]] = {}
    first: dict[str, int] = {}
    for i, record in enumerate(dataset.records):
        first.setdefault(record.image_id, i)
        if record.caption:
            captions.setdefault(record.image_id, []).append(record.caption)
    for image_id, i in first.items():
        yield Entry(image_id, captions.get(image_id, []), Path(dataset.records[i].image), None,
                    lambda i=i: dataset[i])


def _shard_entries(dataset) -> Iterator[Entry]:
    """One entry per member group; its key read from KEY.json (cheap) without decoding the image."""
    for item in dataset.raw_items():
        if isinstance(item, Sample):  # a read error, already counted
            yield Entry(item.image_id, [], None, None, lambda item=item: item)
            continue
        key, where = item["__key__"], f"{item.get('__url__', '?')}:{item['__key__']}"
        try:
            key = str(json.loads(item["json"]).get("image_id", key)) if "json" in item else key
        except (ValueError, AttributeError):
            pass  # decode() counts the bad JSON
        caption = item.get("txt", b"").decode("utf-8", errors="replace").strip()
        yield Entry(key, [caption] if caption else [], None, where, lambda item=item: dataset.decode(item))
