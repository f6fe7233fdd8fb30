"""Image-text pairs from CSV, TSV and JSONL index files (image paths relative to the file).

Column names are configurable because every tool spells them differently: OpenCLIP's CSV loader uses
`filepath` / `title` with a tab separator, img2dataset's inputs `url` / `caption`, ours `image` / `caption`.
Extra JSONL keys land in `Sample.meta` (the compositional files use that for their hard negatives).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from data_pipelines.records import RecordDataset, resolve_image_path, validate_records
from data_pipelines.sample import Sample, SkipStats
from data_pipelines.text_files import open_text, raise_csv_field_limit

raise_csv_field_limit()  # a 200,000-character caption is data, not `_csv.Error: field larger than field limit`
SEPARATORS = (",", "\t", ";", "|")  # tried, in this order, when none is named
LONG_FIELD_LINES = 5  # a quoted caption may hold a line break or two; an unclosed quote swallows the rows below
LONG_FIELD_CHARS = 2000
LONG_FIELD_EXAMPLES = 5


def open_pairs(
    path: str | Path,
    transform: Callable | None = None,
    image_column: str = "image",
    caption_column: str = "caption",
    id_column: str | None = None,
    sep: str | None = None,
    image_root: str | Path | None = None,
    max_bad_fraction: float | None = None,  # None: the command's rule (sample.bad_file_rule)
    check_files: bool = True,
    max_pixels: int | None = None,
) -> RecordDataset:
    """A map-style dataset of (image, caption) items from a .csv, .tsv or .jsonl file."""
    path = Path(path)
    base = Path(image_root) if image_root is not None else path.parent
    long_fields: dict = {"count": 0, "examples": []}  # filled as the rows are read (`_long_field`)
    if path.suffix.lower() == ".jsonl":
        rows = _jsonl_rows(path, image_column, caption_column, id_column)
        fmt = "jsonl"
    else:
        sep = sep or detect_separator(path, [c for c in (image_column, caption_column, id_column) if c])
        rows = _csv_rows(path, sep, image_column, caption_column, id_column, long_fields)
        fmt = "tsv" if sep == "\t" else "csv"
    candidates = _records(rows, base, image_column, caption_column, id_column)
    records, rows, stats = validate_records(candidates, str(path), max_bad_fraction, check_files, need_caption=True)
    info = {"separator": sep, "long_fields": long_fields} if fmt != "jsonl" else {}
    return RecordDataset(records, stats, fmt, transform, max_pixels, info, rows=rows)


def iter_pairs(path: str | Path, stats: SkipStats, image_column: str = "image", caption_column: str = "caption",
               id_column: str | None = None, sep: str | None = None, image_root: str | Path | None = None,
               ) -> Iterator[Sample]:
    """The records of a pairs file one at a time, checked as `open_pairs` checks them (an empty caption or a
    missing image is counted in `stats` and passed over): an index build reads a file of any size in constant
    memory. Options are `open_pairs`'s."""
    path = Path(path)
    base = Path(image_root) if image_root is not None else path.parent
    if path.suffix.lower() == ".jsonl":
        rows = _jsonl_rows(path, image_column, caption_column, id_column)
    else:
        sep = sep or detect_separator(path, [c for c in (image_column, caption_column, id_column) if c])
        rows = _csv_rows(path, sep, image_column, caption_column, id_column, {"count": 0, "examples": []})
    for record, where in _records(rows, base, image_column, caption_column, id_column):
        if not record.caption:
            stats.skip("empty caption", f"{where}: empty caption")
        elif not os.path.isfile(record.image):
            stats.skip("missing image", f"{where}: image {str(record.image)!r} not found")
        else:
            stats.ok()
            yield record


def detect_separator(path: Path, columns: list[str]) -> str:
    """The separator whose split of the header holds every named column; else the one that splits the header
    into the most columns; else the suffix's (tab for .tsv, comma otherwise). A spreadsheet in a
    semicolon locale saves `image;caption`, which a comma would read as one column."""
    default = "\t" if path.suffix.lower() == ".tsv" else ","
    with open_text(path, newline="") as f:
        header = f.readline()
    splits = {sep: _split_header(header, sep) for sep in dict.fromkeys((default, *SEPARATORS))}
    fitting = [sep for sep, names in splits.items() if set(columns) <= set(names)]
    if fitting:
        return fitting[0]
    widest = max(splits, key=lambda sep: len(splits[sep]))
    return widest if len(splits[widest]) > len(splits[default]) else default


def _split_header(header: str, sep: str) -> list[str]:
    return next(csv.reader([header.rstrip("\r\n")], delimiter=sep), [])


def _separated_by(path: Path, sep: str) -> str:
    """Said in an error only when the header was read with another separator than the suffix's."""
    default = "\t" if path.suffix.lower() == ".tsv" else ","
    return "" if sep == default else f"; separated by {'a tab' if sep == chr(9) else repr(sep)}"


def _csv_rows(path: Path, sep: str, image_column: str, caption_column: str, id_column: str | None,
              long_fields: dict) -> Iterator[tuple[dict, str]]:
    """Rows with where they end ("pairs.csv line 7"); a field spanning many lines or thousands of characters
    is counted in `long_fields` (an unclosed quote reads every row below it into one caption)."""
    with open_text(path, newline="") as f:  # spreadsheets start CSVs with a BOM; open_text drops it
        reader = csv.DictReader(f, delimiter=sep)
        columns = reader.fieldnames or []
        for option, column in (("image_column", image_column), ("caption_column", caption_column),
                               ("id_column", id_column)):
            if column is not None and column not in columns:
                raise ValueError(f"{path}: no column {column!r} (columns: {', '.join(columns) or 'none'}"
                                 f"{_separated_by(path, sep)}); {_how_to_name(option)}")
        for row in reader:
            note = _long_field(row, path, reader.line_num)
            if note:
                long_fields["count"] += 1
                if len(long_fields["examples"]) < LONG_FIELD_EXAMPLES:
                    long_fields["examples"].append(note)
            yield row, f"{path.name} line {reader.line_num}"


def _long_field(row: dict, path: Path, last_line: int) -> str | None:
    """What is suspect about a row whose longest field spans many lines or thousands of characters, else None."""
    name, value = max(((k, v) for k, v in row.items() if isinstance(v, str)), key=lambda kv: len(kv[1]),
                      default=(None, ""))
    lines = value.rstrip("\r\n").count("\n") + 1  # a quote left open at the end swallows the last line end too
    if lines < LONG_FIELD_LINES and len(value) < LONG_FIELD_CHARS:
        return None
    if lines == 1:
        return (f"{path.name} line {last_line}: field {name!r} holds {len(value):,} characters; if it is not one "
                "caption, a quote or a line end is missing")
    return (f"{path.name} lines {last_line - lines + 1}-{last_line}: field {name!r} spans {lines} lines "
            f"({len(value):,} characters); an unclosed quote reads the rows below it into one field: close the "
            "quote, or double the quotes inside it")


def _jsonl_rows(path: Path, image_column: str, caption_column: str, id_column: str | None
                ) -> Iterator[tuple[dict, str]]:
    with open_text(path) as f:
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
