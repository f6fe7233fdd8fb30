"""Map-style datasets over a list of records: Samples whose image is still a file path.

Every file-based format (CSV/TSV/JSONL pairs, COCO, Karpathy, VQAv2, ImageFolder) parses its index into
records once, validates them cheaply (the file exists, the caption is not empty), and leaves decoding to
`__getitem__`, which runs in DataLoader workers. The trainer needs `len()` and index access for exact resume.
An index found bad at decode time is remembered in `stats.bad` and never decoded again by this copy.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from data_pipelines.images import BadImage, decode_image
from data_pipelines.sample import Sample, SkipStats


class RecordDataset:
    """Decodes and transforms one record per index; a bad image gives `image=None` instead of an exception.

    A map-style dataset as torch's DataLoader takes it (`__len__`, `__getitem__`), without subclassing
    torch's Dataset: reading an index (`vlm data inspect`, `vlm index info`) then needs no torch.
    """

    def __init__(
        self,
        records: list[Sample],
        stats: SkipStats,
        format: str,
        transform: Callable | None = None,
        max_pixels: int | None = None,
        info: dict | None = None,
        rows: list[str] | None = None,
    ):
        self.records = records
        self.rows = rows  # where each record came from ("pairs.csv line 7"), for error messages
        self.stats = stats
        self.format = format
        self.transform = transform
        self.max_pixels = max_pixels
        self.info = info or {}  # format-specific extras: class names, templates, answer vocabulary source
        self.image_cache: ImageCache | None = None  # set by `cache_images`

    def cache_images(self, max_mb: float) -> None:
        """Keep each decoded, transformed image (by file) in this process's memory, up to `max_mb`: a small set
        read for many epochs then decodes each file once. Only for a deterministic transform (no augmentation)."""
        self.image_cache = ImageCache(int(max_mb * 2**20)) if max_mb > 0 else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        where = self.rows[index] if self.rows else str(record.image)
        if index in self.stats.bad:  # found bad before, in this process or (passed in) another one
            return skipped_sample(record, index, self.stats.bad[index], f"{where}: skipped, found bad before")
        cached = self.image_cache.get(record.image) if self.image_cache is not None else None
        if cached is not None:
            return dataclasses.replace(record, image=cached)
        try:
            image = decode_image(record.image, self.max_pixels, min_size=getattr(self.transform, "decode_size", None))
        except BadImage as e:
            detail = f"{where}: {e.detail}" if self.rows and where != str(record.image) else e.detail
            self.stats.mark_bad(index, e.reason, detail)
            self.stats.check(final=False)  # this process's share; the trainer counts every worker's (stats.bad)
            return skipped_sample(record, index, e.reason, detail)
        if self.transform is not None:
            image = self.transform(image)
        if self.image_cache is not None:
            self.image_cache.put(record.image, image)
        return dataclasses.replace(record, image=image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.format}, {len(self)} items, {self.stats.report()})"


class ImageCache:
    """Transformed image tensors by file, until `max_bytes` are held; then new files are simply not kept."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self.images: dict = {}

    def get(self, key):
        return self.images.get(key)

    def put(self, key, image) -> None:
        if not hasattr(image, "element_size") or key in self.images:  # tensors only (a torch.Tensor)
            return
        size = image.numel() * image.element_size()
        if self.bytes + size <= self.max_bytes:
            self.images[key] = image
            self.bytes += size


def skipped_sample(record: Sample, sample_id, reason: str, detail: str) -> Sample:
    """The placeholder for a sample whose image is unusable; the Collator drops it and lists it as bad."""
    meta = {**record.meta, "skip_reason": reason, "skip_detail": detail, "skip_id": sample_id}
    return dataclasses.replace(record, image=None, meta=meta)


def resolve_image_path(base: Path, value: str) -> Path:
    """Image paths in an index file are relative to that file (or to `image_root`), unless absolute."""
    path = Path(value)
    return path if path.is_absolute() else base / path


def validate_records(
    candidates: Iterable[tuple[Sample, str]],
    source: str,
    max_bad_fraction: float | None = None,  # None: the command's rule (sample.bad_file_rule)
    check_files: bool = True,
    need_caption: bool = False,
) -> tuple[list[Sample], list[str], SkipStats]:
    """Keep the records whose image exists (and caption is non-empty); count the rest by reason.

    `candidates` pairs each record with where it came from ("pairs.csv line 7") for the error messages;
    returns the kept records, where each came from, and the counts.
    Raises when nothing is usable or when the bad fraction is over `max_bad_fraction`.
    """
    stats = SkipStats(source=source, max_bad_fraction=max_bad_fraction)
    kept, rows = [], []
    for record, where in candidates:
        if need_caption and not (record.caption or "").strip():
            stats.skip("empty caption", f"{where}: empty caption")
        elif check_files and isinstance(record.image, (str, Path)) and not os.path.isfile(record.image):
            stats.skip("missing image", f"{where}: image {str(record.image)!r} not found")
        else:
            stats.ok()
            kept.append(record)
            rows.append(where)
    if not kept:
        detail = f" ({stats.report()}; first: {stats.examples[0]})" if stats.examples else ""
        raise ValueError(f"{source}: no usable samples{detail}")
    stats.check(final=True)
    return kept, rows, stats
