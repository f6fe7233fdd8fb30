"""`vlm bench data`: samples/s of decode + transform + tokenise through a real DataLoader.

Two workloads: the shapes world at 64 px (PNG, map-style CSV source) and 224 px training from JPEG
WebDataset shards (photo-like 320x256 JPEGs, random resized crop to 224). The JPEGs are generated, not
downloaded: smooth colour fields plus sensor-like noise, so they compress like photos (tens of KB each).
"""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from data_pipelines.images import decode_image
from data_pipelines.shapes import generate_shapes_world

if TYPE_CHECKING:  # torch loads when the benchmark runs, not when `vlm` builds its parser
    from data_pipelines.collate import Collator


def make_photo_like_jpegs(out_dir: Path, n: int, size: tuple[int, int] = (320, 256), seed: int = 0) -> Path:
    """`n` JPEGs (quality 90) and a `pairs.csv` naming them; returns the CSV path."""
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.normal(0, 10, (size[1], size[0], 3)).astype(np.int16)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(out_dir / f"{i:06d}.jpg", quality=90)
        rows.append((f"{i:06d}.jpg", f"a generated photo number {i} with smooth colours and some noise"))
    with open(out_dir / "pairs.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "caption"), *rows])
    return out_dir / "pairs.csv"


def time_loader(dataset, collator: Collator, workers: int, batch_size: int) -> dict:
    """One pass over `dataset` after a warm-up batch; samples/s total and per worker process."""
    import torch

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collator,
                                         persistent_workers=False)
    it = iter(loader)
    warm = len(next(it)["image_ids"])  # worker start-up is not part of the steady-state rate
    start, n = time.perf_counter(), 0
    for batch in it:
        n += len(batch["image_ids"])
    seconds = time.perf_counter() - start
    total = n / seconds if seconds > 0 else float("nan")
    return {"workers": workers, "samples": n + warm, "samples_per_s": total,
            "per_worker_samples_per_s": total / max(1, workers)}


def stage_breakdown(dataset, collator: Collator, n: int = 200) -> dict:
    """Milliseconds per sample for decode, transform and tokenise, in this process."""
    records = dataset.records[:n]
    t0 = time.perf_counter()
    images = [decode_image(r.image) for r in records]
    t1 = time.perf_counter()
    for image in images:
        dataset.transform(image)
    t2 = time.perf_counter()
    collator.tokenizer([r.caption for r in records])
    t3 = time.perf_counter()
    k = 1000 / len(records)
    return {"decode_ms": (t1 - t0) * k, "transform_ms": (t2 - t1) * k, "tokenize_ms": (t3 - t2) * k}


def bench_data(workers: tuple[int, ...] = (0, 1, 2), batch_size: int = 64, scenes: int = 1000,
               jpegs: int = 1000, context_length: int = 32, work_dir: str | Path | None = None) -> list[dict]:
    """Run both workloads for every worker count; returns one result row per (workload, workers)."""
    from data_pipelines.collate import Collator
    from data_pipelines.shards import ShardDataset, write_shards
    from data_pipelines.sources import open_source
    from data_pipelines.transforms import train_transform
    from vlm.tokenizer import Tokenizer

    collator = Collator(Tokenizer(context_length))
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        tmp = Path(tmp)
        generate_shapes_world(tmp / "shapes", train=scenes, val=0, test=0, heldout=0)
        shapes = open_source(tmp / "shapes", split="train", transform=train_transform(64))
        pairs = open_source(make_photo_like_jpegs(tmp / "jpeg", jpegs))
        write_shards(pairs, tmp / "shards", shard_size=max(1, jpegs // 8))
        shards = ShardDataset(tmp / "shards", transform=train_transform(224), shuffle=True)
        pairs.transform = train_transform(224)
        workloads = [("shapes 64px png (csv)", shapes, stage_breakdown(shapes, collator)),
                     ("224px jpeg shards (webdataset)", shards, stage_breakdown(pairs, collator))]
        rows = []
        for name, dataset, stages in workloads:
            for w in workers:
                rows.append({"workload": name, **stages, **time_loader(dataset, collator, w, batch_size)})
    return rows


def format_rows(rows: list[dict]) -> str:
    header = (f"{'workload':<32}{'workers':>8}{'samples':>9}{'total/s':>10}{'per worker/s':>14}"
              f"{'decode ms':>11}{'transform ms':>14}{'tokenise ms':>13}")
    lines = [header]
    for r in rows:
        lines.append(f"{r['workload']:<32}{r['workers']:>8}{r['samples']:>9}{r['samples_per_s']:>10.0f}"
                     f"{r['per_worker_samples_per_s']:>14.0f}{r['decode_ms']:>11.3f}{r['transform_ms']:>14.3f}"
                     f"{r['tokenize_ms']:>13.3f}")
    return "\n".join(lines)


def register_bench(subparsers) -> None:
    """Adds `vlm bench data` (called from vlm/bench/cli.py)."""
    p = subparsers.add_parser("data", help="samples/s of decode + transform + tokenise (shapes 64 px, JPEG shards)")
    p.add_argument("--workers", default="0,1,2", help="comma-separated DataLoader worker counts (0: main process)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--scenes", type=int, default=1000, help="shapes-world scenes (3 captions each)")
    p.add_argument("--jpegs", type=int, default=1000, help="320x256 JPEGs written into shards")
    p.add_argument("--context-length", type=int, default=32)
    p.set_defaults(func=_cmd_bench_data)


def _cmd_bench_data(args) -> int:
    workers = tuple(int(w) for w in args.workers.split(","))
    rows = bench_data(workers, args.batch_size, args.scenes, args.jpegs, args.context_length)
    print(format_rows(rows))
    return 0
