"""Synthetic embeddings for `vlm bench index`: clustered 512-d unit vectors, written as embedding parts.

Image vectors sit around `clusters` random centres on the sphere (cosine ~0.7 to their centre). Image queries are
fresh draws from the same clusters; text queries are shifted the way a CLIP model's caption vectors sit apart
from its image vectors: a shared offset direction plus noise, renormalised. Parts are float16 in the layout of
vlm/index/parts.py, written part by part (a 10M run never holds more than one part), and resumed per part.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlm.index.parts import PartsHeader, list_parts, part_tag, write_header, write_part

PART_ROWS = 100_000
NOISE = 1.0  # noise norm relative to a unit centre
TEXT_SHIFT = 1.0  # the modality gap: a text query is its image plus this much of one shared direction


@dataclass(frozen=True)
class Synthetic:
    n: int
    dim: int = 512
    clusters: int = 0  # 0: n / 1000 within [1000, 10000]
    seed: int = 0

    @property
    def k(self) -> int:
        return self.clusters or int(min(10_000, max(1_000, self.n // 1_000)))

    def centres(self) -> np.ndarray:
        c = np.random.default_rng(self.seed).standard_normal((self.k, self.dim)).astype(np.float32)
        return c / np.linalg.norm(c, axis=1, keepdims=True)

    def draw(self, rows: int, seed: int, centres: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(seed)
        x = centres[rng.integers(0, len(centres), rows)]
        x = x + NOISE / np.sqrt(self.dim) * rng.standard_normal((rows, self.dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def shift(self, images: np.ndarray, seed: int) -> np.ndarray:
        """Text vectors: the images moved along one shared direction, plus noise, renormalised."""
        rng = np.random.default_rng(seed)
        direction = np.random.default_rng(self.seed + 1).standard_normal(self.dim).astype(np.float32)
        direction /= np.linalg.norm(direction)
        t = images + TEXT_SHIFT * direction + NOISE / np.sqrt(self.dim) * rng.standard_normal(
            images.shape, dtype=np.float32)
        return t / np.linalg.norm(t, axis=1, keepdims=True)

    def queries(self, count: int) -> dict[str, np.ndarray]:
        """Held-out image queries (never indexed) and text queries shifted from other fresh images."""
        centres = self.centres()
        return {"image": self.draw(count, self.seed + 10**9, centres),
                "text": self.shift(self.draw(count, self.seed + 2 * 10**9, centres), self.seed + 3 * 10**9)}


def write_parts(parts_dir: Path, data: Synthetic, log=print) -> None:
    """Every part not written yet; a killed run resumes at the first part without a done marker."""
    write_header(parts_dir, PartsHeader(dim=data.dim, model="synthetic", weights="", precision="fp32",
                                        source=f"vlm bench index n={data.n} seed={data.seed}", world_size=1,
                                        part_size=PART_ROWS))
    done = {p.tag for p in list_parts(parts_dir)}
    centres = data.centres()
    for part, start in enumerate(range(0, data.n, PART_ROWS)):
        tag = part_tag(0, part)
        if tag in done:
            continue
        rows = min(PART_ROWS, data.n - start)
        images = data.draw(rows, data.seed + 1 + part, centres)
        texts = data.shift(images, data.seed + 10**6 + part)
        meta = [{"key": str(start + i), "image_path": None, "shard": None, "caption": None, "has_text": True,
                 "extra": "{}"} for i in range(rows)]
        write_part(parts_dir, tag, images, texts, meta)
        if part % 10 == 0:
            log(f"parts: {start + rows:,} / {data.n:,} rows")


def chunks(parts_dir: Path, rows: int = 65_536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, float32 image vectors) in part order; an item's id is its row number."""
    start = 0
    for part in list_parts(parts_dir):
        vectors = part.vectors("image")
        for lo in range(0, part.rows, rows):
            block = np.asarray(vectors[lo:lo + rows], dtype=np.float32)
            yield np.arange(start + lo, start + lo + len(block), dtype=np.int64), block
        start += part.rows


class PartRows:
    """Row numbers -> float32 image vectors, read from the parts with pread (what re-ranks a PQ index; mapped,
    the rows it touched would count in the RSS measured)."""

    def __init__(self, parts_dir: Path):
        self.parts = [p.rows_reader("image") for p in list_parts(parts_dir)]

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids), self.parts[0].dim), np.float32)
        part, row = np.divmod(np.asarray(ids, dtype=np.int64), PART_ROWS)
        for p in np.unique(part):
            mask = part == p
            out[mask] = self.parts[p].read(row[mask])
        return out
