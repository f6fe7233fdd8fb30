"""Embedding parts: what `vlm index build` and `vlm index embed` write before (or instead of) an index folder.

The layout of clip-retrieval's `clip inference`, which embedding-reader ("npy_parquet") and autofaiss read:

    PARTS/parts.json                      written once: format, dim, dtype, model, weights, precision, source,
                                          world_size, part_size (a resume must match every field)
    PARTS/img_emb/img_emb_{tag}.npy       (n, D) float16, L2-normalised image embeddings
    PARTS/text_emb/text_emb_{tag}.npy     (n, D) float16, the same rows; an item without a caption is a zero row
    PARTS/metadata/metadata_{tag}.parquet one row per npy row: key, image_path, shard, caption, has_text, extra
    PARTS/done/{tag}.json                 written last: rows, bytes and sha256 of the three files (and skipped)

tag = f"{rank:03d}_{part:06d}"; a part without its done marker does not exist. Every file is written atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlm.atomic_io import atomic_write
from vlm.errors import UserError

HEADER_NAME = "parts.json"
FOLDERS = {"image": "img_emb", "text": "text_emb", "metadata": "metadata"}
SCHEMA = pa.schema([("key", pa.string()), ("image_path", pa.string()), ("shard", pa.string()),
                    ("caption", pa.string()), ("has_text", pa.bool_()), ("extra", pa.string())])


@dataclass(frozen=True)
class PartsHeader:
    dim: int
    model: str
    weights: str
    precision: str
    source: str
    world_size: int
    part_size: int
    format: int = 1
    dtype: str = "float16"


def part_tag(rank: int, part: int) -> str:
    return f"{rank:03d}_{part:06d}"


def check_header(parts_dir: Path, header: PartsHeader) -> None:
    """Refuse, in one line naming the file and the field, parts written by another build or split."""
    path = Path(parts_dir) / HEADER_NAME
    if not path.is_file():
        return
    try:
        found = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); delete the parts folder to start again") from None
    for name, want in asdict(header).items():
        if found.get(name) != want:
            raise UserError(f"{path}: field '{name}' is {found.get(name)!r}, this run's is {want!r}; resume with the "
                            f"same source, checkpoint, precision, ranks and --part-size, or delete {path.parent}")


def write_header(parts_dir: Path, header: PartsHeader) -> None:
    if not (Path(parts_dir) / HEADER_NAME).is_file():
        with atomic_write(Path(parts_dir) / HEADER_NAME, "w") as f:
            json.dump(asdict(header), f, indent=2)


def read_header(parts_dir: Path) -> PartsHeader:
    path = Path(parts_dir) / HEADER_NAME
    if not path.is_file():
        raise UserError(f"{parts_dir}: no {HEADER_NAME}; not an embedding parts folder")
    data = json.loads(path.read_text())
    return PartsHeader(**{f.name: data[f.name] for f in fields(PartsHeader) if f.name in data})


def write_part(parts_dir: Path, tag: str, image_vecs: np.ndarray, text_vecs: np.ndarray, rows: list[dict],
               skipped: int = 0) -> None:
    """The part's three files, then its done marker with their sizes and checksums."""
    parts_dir = Path(parts_dir)
    payloads = {_relative("image", tag): _npy(image_vecs), _relative("text", tag): _npy(text_vecs),
                _relative("metadata", tag): _parquet(rows)}
    for name, data in payloads.items():
        with atomic_write(parts_dir / name) as f:
            f.write(data)
    done = {"rows": len(rows), "bytes": {n: len(d) for n, d in payloads.items()},
            "sha256": {n: hashlib.sha256(d).hexdigest() for n, d in payloads.items()}, "skipped": skipped}
    with atomic_write(parts_dir / "done" / f"{tag}.json", "w") as f:
        json.dump(done, f)


def _relative(kind: str, tag: str) -> str:
    return f"{FOLDERS[kind]}/{FOLDERS[kind]}_{tag}.{'parquet' if kind == 'metadata' else 'npy'}"


def _npy(vectors: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(vectors, dtype=np.float16))
    return buffer.getvalue()


def _parquet(rows: list[dict]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), buffer)
    return buffer.getvalue()


@dataclass(frozen=True)
class Part:
    """One finished part, read lazily: vectors are memory-mapped, metadata read when asked."""

    directory: Path
    tag: str
    rows: int
    skipped: int = 0

    def vectors(self, modality: str) -> np.ndarray:
        """(rows, D) float16, memory-mapped; modality "image" or "text"."""
        if modality not in ("image", "text"):
            raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
        return np.load(self.directory / _relative(modality, self.tag), mmap_mode="r")

    def metadata(self) -> pa.Table:
        return pq.read_table(self.directory / _relative("metadata", self.tag))

    def rows_reader(self, modality: str) -> RowReader:
        return RowReader(self.directory / _relative(modality, self.tag))


class RowReader:
    """Rows of one .npy file by position, read with pread rather than mapped: a mapped file's touched pages
    count in the reader's RSS, so a server re-ranking from 10 GB of parts would grow to their size (and a build
    measuring recall with it), while pread leaves them in the page cache, the kernel's to drop."""

    def __init__(self, path: Path):
        self.path, self._fd = Path(path), -1
        with self.path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, self.dtype = read_header(f)
            self.offset = f.tell()
        if fortran or len(shape) != 2:
            raise ValueError(f"{self.path}: not a C-ordered 2-d array (shape {shape})")
        self.rows, self.dim = shape
        self.row_bytes = self.dim * self.dtype.itemsize
        self._fd = os.open(self.path, os.O_RDONLY)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), dim) in the file's dtype, in the order of `rows`; each run of consecutive rows is one read."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), self.dtype)
        if not len(rows):
            return out
        if rows.min() < 0 or rows.max() >= self.rows:
            raise IndexError(f"{self.path}: row {int(rows.max())} is past its {self.rows} rows")
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        for run in np.split(order, np.flatnonzero(np.diff(ordered) != 1) + 1):
            first, size = int(rows[run[0]]), len(run) * self.row_bytes
            data = os.pread(self._fd, size, self.offset + first * self.row_bytes)
            if len(data) != size:
                raise OSError(f"{self.path}: short read at row {first} (truncated?)")
            out[run] = np.frombuffer(data, self.dtype).reshape(len(run), self.dim)
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()


def list_parts(parts_dir: str | Path) -> list[Part]:
    """The finished parts (those with a done marker), sorted by tag."""
    parts_dir = Path(parts_dir)
    parts = []
    for marker in sorted((parts_dir / "done").glob("*.json")):
        done = json.loads(marker.read_text())
        parts.append(Part(parts_dir, marker.stem, int(done["rows"]), int(done.get("skipped", 0))))
    return parts


def iter_vectors(parts_dir: str | Path, modality: str, batch_rows: int = 65536) -> Iterator[np.ndarray]:
    """Every part's vectors of one modality as float32 batches of at most `batch_rows`, in tag order: one
    batch in memory at a time."""
    for part in list_parts(parts_dir):
        vectors = part.vectors(modality)
        for start in range(0, part.rows, batch_rows):
            yield np.asarray(vectors[start:start + batch_rows], dtype=np.float32)
