"""Map-style datasets over a list of records: Samples whose image is still a file path.

Every file-based format (CSV/TSV/JSONL pairs, COCO, Karpathy, VQAv2, ImageFolder) parses its index into
records once, validates them cheaply (the file exists, the caption is not empty), and leaves decoding to
`__getitem__`, which runs in DataLoader workers. The trainer needs `len()` and index access for exact resume.
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
    ):
        self.records = records
        self.stats = stats
        self.format = format
        self.transform = transform
        self.max_pixels = max_pixels
        self.info = info or {}  # format-specific extras: class names, templates, answer vocabulary source

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        try:
            image = decode_image(record.image, self.max_pixels, min_size=getattr(self.transform, "decode_size", None))
        except BadImage as e:
            self.stats.skip(e.reason, e.detail, count_seen=False)
            self.stats.check(final=False)  # a safety net; SkipStats.watch(loader) gives the whole-run count
            meta = {**record.meta, "skip_reason": e.reason, "skip_detail": e.detail}
            return dataclasses.replace(record, image=None, meta=meta)
        if self.transform is not None:
            image = self.transform(image)
        return dataclasses.replace(record, image=image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.format}, {len(self)} items, {self.stats.report()})"


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
) -> tuple[list[Sample], SkipStats]:
    """Keep the records whose image exists (and caption is non-empty); count the rest by reason.

    `candidates` pairs each record with where it came from ("pairs.csv line 7") for the error message.
    Raises when nothing is usable or when the bad fraction is over `max_bad_fraction`.
    """
    stats = SkipStats(source=source, max_bad_fraction=max_bad_fraction)
    kept = []
    for record, where in candidates:
        if need_caption and not (record.caption or "").strip():
            stats.skip("empty caption", f"{where}: empty caption")
        elif check_files and isinstance(record.image, (str, Path)) and not os.path.isfile(record.image):
            stats.skip("missing image", f"{where}: image {str(record.image)!r} not found")
        else:
            stats.ok()
            kept.append(record)
    if not kept:
        detail = f" ({stats.report()}; first: {stats.examples[0]})" if stats.examples else ""
        raise ValueError(f"{source}: no usable samples{detail}")
    stats.check(final=True)
    return kept, stats
