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

import torch

from data_pipelines.images import BadImage, decode_image
from data_pipelines.sample import DEFAULT_MAX_BAD_FRACTION, Sample, SkipStats


class RecordDataset(torch.utils.data.Dataset):
    """Decodes and transforms one record per index; a bad image gives `image=None` instead of an exception."""

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

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        where = self.rows[index] if self.rows else str(record.image)
        if index in self.stats.bad:  # found bad before, in this process or (passed in) another one
            return skipped_sample(record, index, self.stats.bad[index], f"{where}: skipped, found bad before")
        try:
            image = decode_image(record.image, self.max_pixels, min_size=getattr(self.transform, "decode_size", None))
        except BadImage as e:
            detail = f"{where}: {e.detail}" if self.rows else e.detail
            self.stats.mark_bad(index, e.reason, detail)
            self.stats.check(final=False)  # this process's share; the trainer counts every worker's (stats.bad)
            return skipped_sample(record, index, e.reason, detail)
        if self.transform is not None:
            image = self.transform(image)
        return dataclasses.replace(record, image=image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.format}, {len(self)} items, {self.stats.report()})"


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
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
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
