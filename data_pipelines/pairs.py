"""Image-text pairs from CSV, TSV and JSONL index files (image paths relative to the file).

Column names are configurable because every tool spells them differently: OpenCLIP's CSV loader uses
`filepath` / `title` with a tab separator, img2dataset's inputs `url` / `caption`, ours `image` / `caption`.
Extra JSONL keys land in `Sample.meta` (the compositional files use that for their hard negatives).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from data_pipelines.records import RecordDataset, resolve_image_path, validate_records
from data_pipelines.sample import DEFAULT_MAX_BAD_FRACTION, Sample


def open_pairs(
    path: str | Path,
    transform: Callable | None = None,
    image_column: str = "image",
    caption_column: str = "caption",
    id_column: str | None = None,
    sep: str | None = None,
    image_root: str | Path | None = None,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    check_files: bool = True,
    max_pixels: int | None = None,
) -> RecordDataset:
    """A map-style dataset of (image, caption) items from a .csv, .tsv or .jsonl file."""
    path = Path(path)
    base = Path(image_root) if image_root is not None else path.parent
    if path.suffix.lower() == ".jsonl":
        rows = _jsonl_rows(path, image_column, caption_column, id_column)
        fmt = "jsonl"
    else:
        sep = sep or ("\t" if path.suffix.lower() == ".tsv" else ",")
        rows = _csv_rows(path, sep, image_column, caption_column, id_column)
        fmt = "tsv" if sep == "\t" else "csv"
    candidates = _records(rows, base, image_column, caption_column, id_column)
    records, rows, stats = validate_records(candidates, str(path), max_bad_fraction, check_files, need_caption=True)
    return RecordDataset(records, stats, fmt, transform, max_pixels, rows=rows)


def _csv_rows(path: Path, sep: str, image_column: str, caption_column: str, id_column: str | None
              ) -> Iterator[tuple[dict, str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets start CSVs with a BOM
        reader = csv.DictReader(f, delimiter=sep)
        columns = reader.fieldnames or []
        for option, column in (("image_column", image_column), ("caption_column", caption_column),
                               ("id_column", id_column)):
            if column is not None and column not in columns:
                raise ValueError(f"{path}: no column {column!r} (columns: {', '.join(columns) or 'none'}); "
                                 f"{_how_to_name(option)}")
        for row in reader:
            yield row, f"{path.name} line {reader.line_num}"


def _jsonl_rows(path: Path, image_column: str, caption_column: str, id_column: str | None
                ) -> Iterator[tuple[dict, str]]:
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path.name} line {line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {line_no}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {line_no}: expected a JSON object, got {type(row).__name__}")
            for option, key in (("image_column", image_column), ("caption_column", caption_column),
                                ("id_column", id_column)):
                if key is not None and key not in row:
                    raise ValueError(f"{path} line {line_no}: no field {key!r} (fields: {', '.join(row)}); "
                                     f"{_how_to_name(option)}")
            yield row, where


def _how_to_name(option: str) -> str:
    if option == "id_column":
        return "pass id_column=... to name it"
    return f"name it with {option}=... (recipe: data.{option}, command line: --{option.replace('_', '-')})"


def _records(rows: Iterator[tuple[dict, str]], base: Path, image_column: str, caption_column: str,
             id_column: str | None) -> Iterator[tuple[Sample, str]]:
    """One record per caption; a JSONL row may hold a list of captions for one image."""
    for row, where in rows:
        image_value = str(row[image_column] or "")
        image_id = str(row[id_column]) if id_column else image_value
        meta = {k: v for k, v in row.items() if k not in (image_column, caption_column, id_column)}
        captions = row[caption_column]
        for caption in captions if isinstance(captions, list) else [captions]:
            caption = "" if caption is None else str(caption).strip()
            yield Sample(resolve_image_path(base, image_value), image_id, caption=caption, meta=meta), where
