"""Inputs and the report format shared by `vlm bench encode` and `vlm bench score`.

Captions come in two length mixes: the shapes world's val captions (generated into a temp folder, or read from
a given world) and a COCO-like mix of 8-30 tokens, drawn deterministically from single-token common words.
"""

from __future__ import annotations

import csv
import json
import random
import tempfile
from pathlib import Path

from vlm.atomic_io import atomic_write
from vlm.errors import UserError

# Common caption words, each a single token in open_clip's BPE and in BERT's WordPiece vocabulary.
COCO_WORDS = ("a an the of on in with and two man woman people dog cat table street white black red blue green "
              "large small sitting standing holding riding next to near front top field water plate food train bus "
              "car room kitchen bed person group young old tree grass road city building sign window").split()


def coco_like_captions(n: int, seed: int = 0, shortest: int = 8, longest: int = 30) -> list[str]:
    """`n` captions of shortest..longest tokens counting the start and end tokens, uniform over lengths."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(COCO_WORDS) for _ in range(rng.randint(shortest - 2, longest - 2)))
            for _ in range(n)]


def shapes_captions(n: int, data: Path | None = None) -> list[str]:
    """The first `n` val captions of a shapes world (cycled if it has fewer): `data`, or one generated here."""
    if data is None:
        from data_pipelines.shapes import generate_shapes_world

        with tempfile.TemporaryDirectory(prefix="vlm-bench-shapes-") as tmp:
            world = generate_shapes_world(Path(tmp) / "shapes", train=0, val=max(1, -(-n // 3)), test=0,
                                          heldout=0, image_size=32)
            return shapes_captions(n, world)
    path = Path(data) / "pairs_val.csv"
    if not path.is_file():
        raise UserError(f"{data}: not a shapes world (no pairs_val.csv); make one with `vlm data shapes`")
    with open(path, newline="") as f:
        captions = [row["caption"] for row in csv.DictReader(f)]
    if not captions:
        raise UserError(f"{path}: no captions")
    return [captions[i % len(captions)] for i in range(n)]


def write_report(report: dict, table: str, json_path: Path | None) -> None:
    print(table)
    if json_path is not None:
        with atomic_write(json_path, "w") as f:
            json.dump(report, f, indent=2)


def markdown_rows(rows: list[dict], unit: str, reference: str,
                  last: tuple[str, str, str] = ("min cosine", "min_cosine", ".6f")) -> str:
    """One line per workload: vlm and the reference side by side, the ratio, GFLOP/s, agreement; `last` is the
    heading, key and format of the last column."""
    lines = [f"| workload | vlm {unit}/s | {reference} {unit}/s | ratio | vlm GFLOP/s | {reference} GFLOP/s | "
             f"max abs diff | {last[0]} |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['vlm']['items_per_s']:,.1f} | {r['reference']['items_per_s']:,.1f} | "
                     f"{r['ratio']:.2f} | {r['vlm']['gflops_per_s']:.1f} | {r['reference']['gflops_per_s']:.1f} | "
                     f"{r['max_abs_diff']:.2e} | {r[last[1]]:{last[2]}} |")
    return "\n".join(lines)
