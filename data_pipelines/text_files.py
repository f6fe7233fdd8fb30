"""Users' text files read one way: UTF-8 with or without a BOM, and an error that names the file and line.

Spreadsheets save CSVs, label lists and templates with a UTF-8 BOM (Excel's "CSV UTF-8") or in Windows-1252
(Excel's plain "CSV"). A BOM kept in the text ends up in the first label, the prompt and the output CSV; a
decode error from Python names a byte position in a buffer, not the file or the line a person can open.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from vlm.errors import UserError

ENCODING = "utf-8-sig"  # decodes UTF-8 and drops a leading BOM; plain UTF-8 reads the same


def raise_csv_field_limit() -> None:
    """Lift the csv module's 131,072-character field limit: a long caption is data, not an error."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:  # a C long narrower than sys.maxsize (Windows)
            limit //= 2


def not_utf8(path: str | Path, error: UnicodeDecodeError) -> UserError:
    """The one-line error for a file that is not UTF-8: its line and column, and how to convert it."""
    path = Path(path)
    where, byte = str(path), error.object[error.start:error.start + 1].hex() if error.object else "?"
    try:
        with open(path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    where, byte = f"{path} line {line_no} column {e.start + 1}", raw[e.start:e.start + 1].hex()
                    break
    except OSError:
        pass
    return UserError(f"{where}: not UTF-8 text (byte 0x{byte}); save it as UTF-8 (Excel: 'CSV UTF-8') or convert "
                     f"it, e.g. iconv -f WINDOWS-1252 -t UTF-8 {path.name} > utf8-{path.name}")


@contextmanager
def open_text(path: str | Path, newline: str | None = None) -> Iterator[TextIO]:
    """`open(path)` for reading UTF-8 text without its BOM; a decode error anywhere inside the block is
    raised again as `not_utf8`'s one line naming the file and line."""
    try:
        with open(path, encoding=ENCODING, newline=newline) as f:
            yield f
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None


def read_lines(path: str | Path) -> list[str]:
    """The non-blank lines of a list file (labels, class names, templates), stripped, without a BOM."""
    with open_text(path) as f:
        return [line.strip() for line in f.read().splitlines() if line.strip()]
