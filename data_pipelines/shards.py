"""WebDataset tar shards in img2dataset's layout: read by streaming, written from any pairs source.

A shard `00000.tar` holds samples `KEY.jpg|png|webp|gif|bmp|tiff`, `KEY.txt` (the caption) and optionally
`KEY.json`; keys are the shard number followed by the index inside the shard, as img2dataset names them. The
image member holds the source file's bytes unchanged, named by the format its bytes are in (not its file name).
Reading goes through the `webdataset` library: shards split across ranks (torch.distributed or
RANK/WORLD_SIZE) and DataLoader workers, shuffled per epoch. A corrupt member or shard is handed to
`_on_error`, which counts it and lets the stream go on; it reaches the Collator as a placeholder sample.
A sample found bad is remembered by `url:key` in `stats.bad` and not decoded again; the trainer hands the
ids every worker found back to the dataset before each epoch. `resume_skip` / `worker_offset` let a
resumed run continue each worker's stream at the sample it had reached (see vlm/train/stream.py).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import random
import shutil
import tarfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from data_pipelines.image_bytes import sniff_format
from data_pipelines.images import BadImage, decode_image
from data_pipelines.sample import Sample, SkipStats
from vlm.atomic_io import atomic_write

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tiff", "tif")


def expand_shard_urls(urls: str | Path | list) -> list[str]:
    """A folder of `*.tar`, one `.tar`, a brace pattern (`shards/{00000..00009}.tar`) or a list of those."""
    import braceexpand

    if isinstance(urls, (list, tuple)):
        return [u for url in urls for u in expand_shard_urls(url)]
    text = str(urls)
    if Path(text).is_dir():
        found = sorted(str(p) for p in Path(text).glob("*.tar"))
        if not found:
            raise ValueError(f"{text}: no .tar shards in this folder")
        return found
    expanded = list(braceexpand.braceexpand(text))
    missing = [u for u in expanded if "://" not in u and not Path(u).is_file()]
    if missing:
        raise ValueError(f"{missing[0]}: shard not found ({len(missing)} of {len(expanded)} missing)")
    return expanded


def _count_from_stats_files(urls: list[str]) -> int | None:
    """Sample count from img2dataset's `NNNNN_stats.json` files ("successes"), when every shard has one."""
    total = 0
    for url in urls:
        stats = Path(url).with_name(Path(url).stem + "_stats.json")
        try:
            total += int(json.loads(stats.read_text())["successes"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return total


class ShardDataset(torch.utils.data.IterableDataset):
    """Streams Samples from WebDataset shards, shuffled anew on every pass when `shuffle=True`.

    `num_samples` is the total from img2dataset-style `_stats.json` files next to the shards, or None.
    """

    format = "webdataset"

    def __init__(
        self,
        urls: str | Path | list,
        transform: Callable | None = None,
        shuffle: bool = False,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        resampled: bool = False,
        max_pixels: int | None = None,
        max_bad_fraction: float | None = None,  # None: the command's rule (sample.bad_file_rule)
    ):
        super().__init__()
        self.urls = expand_shard_urls(urls)
        self.transform = transform
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.resampled = resampled
        self.max_pixels = max_pixels
        self.epoch = 0
        self.num_samples = _count_from_stats_files(self.urls)
        self.stats = SkipStats(source=str(urls), max_bad_fraction=max_bad_fraction)
        self._pending: list[Sample] = []
        self._passes = 0
        self.resume_skip: dict[int, int] = {}  # worker slot -> items of this pass already consumed
        self.worker_offset = 0  # DataLoader worker i reads slot (i + offset) % workers
        self.keep_bytes = False  # True: each sample's meta also holds `image_bytes`, the member as stored

    def set_epoch(self, epoch: int) -> None:
        """Pass `epoch` shuffles the same way every time (a resumed run sees the same order)."""
        self.epoch, self._passes = epoch, 0

    def __iter__(self) -> Iterator[Sample]:
        import webdataset as wds

        urls = list(self.urls)
        seed = self._shuffle_seed()
        rank, world_size, _, num_workers = wds.utils.pytorch_worker_info()
        if not self.resampled and len(urls) < world_size * num_workers:
            warnings.warn(f"{len(urls)} shards for {world_size} rank(s) x {num_workers} worker(s): some get no data "
                          "(write more, smaller shards, or use resampled=True)", stacklevel=2)
        if self.shuffle:  # same order on every rank, so the node split below stays a partition
            random.Random(seed).shuffle(urls)
        pipeline = wds.WebDataset(
            urls, handler=self._on_error, shardshuffle=False, resampled=self.resampled,
            nodesplitter=wds.split_by_node, workersplitter=self._split_by_worker, empty_check=False,
            seed=self.seed,
        )
        if self.shuffle:
            pipeline = pipeline.shuffle(self.shuffle_buffer, seed=seed)
        skip = self.resume_skip.get(self.worker_slot()[0], 0)
        for n, item in enumerate(self._items(pipeline)):
            if n >= skip:  # items before are raw bytes: skipping them decodes nothing
                yield item if isinstance(item, Sample) else self._to_sample(item)

    def raw_items(self) -> Iterator[dict | Sample]:
        """Every member group of every shard in order, undecoded (no shuffle, no rank or worker split; a read error
        is a placeholder Sample): an index build decodes, with `decode`, only the items it has not embedded."""
        import webdataset as wds

        yield from self._items(wds.WebDataset(self.urls, handler=self._on_error, shardshuffle=False,
                                              nodesplitter=None, workersplitter=None, empty_check=False))

    def decode(self, item: dict | Sample) -> Sample:
        return item if isinstance(item, Sample) else self._to_sample(item)

    def worker_slot(self) -> tuple[int, int]:
        """(which share of the shards this DataLoader worker reads, how many shares there are)."""
        info = torch.utils.data.get_worker_info()
        if info is None:
            return 0, 1
        return (info.id + self.worker_offset) % info.num_workers, info.num_workers

    def _split_by_worker(self, urls):
        slot, slots = self.worker_slot()
        yield from itertools.islice(urls, slot, None, slots)

    def _items(self, pipeline) -> Iterator[dict | Sample]:
        """Raw items, with a placeholder for each read error where it happened."""
        for item in pipeline:
            yield from self._drain_pending()
            yield item
        yield from self._drain_pending()

    def __repr__(self) -> str:
        return f"ShardDataset({len(self.urls)} shards, {self.num_samples or 'unknown'} samples)"

    def _shuffle_seed(self) -> int:
        """A new shuffle every pass, the same on every rank and worker (the node and worker splits slice one
        shard order). In workers it follows the DataLoader's base seed (seed the loader's `generator` alike on
        every rank, or call `set_epoch`); in the main process it counts passes."""
        info = torch.utils.data.get_worker_info()
        if info is not None:
            loader_seed = info.seed - info.id
        else:
            loader_seed, self._passes = self._passes, self._passes + 1
        return hash((self.seed, self.epoch, loader_seed)) & 0xFFFF_FFFF

    def _on_error(self, exn: Exception) -> bool:
        detail = f"{type(exn).__name__}: {exn}"
        self._pending.append(self._placeholder("corrupt shard", "?", detail, sample_id=detail))
        return True  # keep streaming

    def _drain_pending(self) -> Iterator[Sample]:
        while self._pending:
            yield self._pending.pop(0)

    def _placeholder(self, reason: str, key: str, detail: str, sample_id: str) -> Sample:
        if self.stats.mark_bad(sample_id, reason, detail, count_seen=True):
            self.stats.check(final=False)  # this process's share; the trainer counts every worker's
        return Sample(None, key, meta={"skip_reason": reason, "skip_detail": detail, "skip_id": sample_id})

    def _to_sample(self, item: dict) -> Sample:
        key, where = item["__key__"], f"{item.get('__url__', '?')}:{item['__key__']}"
        if where in self.stats.bad:  # found bad before: not decoded again
            return self._placeholder(self.stats.bad[where], key, f"{where}: skipped as bad", where)
        image_key = next((k for k in IMAGE_KEYS if k in item), None)
        if image_key is None:
            return self._placeholder("missing image", key, f"{where}: no image member", where)
        caption = item.get("txt", b"").decode("utf-8", errors="replace").strip()
        if not caption:
            return self._placeholder("empty caption", key, f"{where}: empty caption", where)
        meta = {"url": item.get("__url__")}
        if "json" in item:
            try:
                meta.update(json.loads(item["json"]))
            except (json.JSONDecodeError, UnicodeDecodeError):
                return self._placeholder("corrupt json", key, f"{where}: {key}.json is not valid JSON", where)
        try:
            image = decode_image(item[image_key], self.max_pixels, name=f"{where}.{image_key}",
                                 min_size=getattr(self.transform, "decode_size", None))
        except BadImage as e:
            return self._placeholder(e.reason, key, e.detail, where)
        self.stats.ok()
        if self.transform is not None:
            image = self.transform(image)
        if self.keep_bytes:  # an index copies the original, not a re-encoding of the decoded pixels
            meta["image_bytes"] = item[image_key]
        return Sample(image, str(meta.get("image_id", key)), caption=caption, meta=meta)


def write_shards(source, out_dir: str | Path, shard_size: int = 10_000, max_pixels: int | None = None,
                 overwrite: bool = False) -> tuple[list[Path], SkipStats]:
    """Write a map-style pairs source (anything `open_source` reads into records) as WebDataset shards.

    Image bytes are copied as they are (no re-encoding); each is decoded once first, so a corrupt file is
    skipped and counted instead of being shipped. Members get mtime 0 so the same input gives the same bytes.
    A folder that already holds files is refused unless `overwrite`, which replaces its shards: old shards left
    beside new ones would be read back with them. The shards are written into `OUT.partial/` and moved in only
    when every one is written, so a run that fails (too many bad images, an error, a kill) leaves none.
    """
    if not hasattr(source, "records"):
        raise ValueError(f"{source!r}: can only shard a file-indexed source (CSV/TSV/JSONL, COCO, Karpathy)")
    records = [r for r in source.records if r.caption is not None]
    if not records:
        raise ValueError(f"{source!r}: no captions to write")
    out = Path(out_dir)
    check_shard_folder(out, overwrite)
    staging = out.resolve().with_name(out.resolve().name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed run: never read, never resumed
    try:
        stats = _write_records(source, records, staging, out, shard_size, max_pixels)
        paths = _move_shards_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return paths, stats


def check_shard_folder(out: Path, overwrite: bool) -> None:
    """Refuse a file, or a folder with anything in it unless `overwrite`: one line naming the folder."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: is a file; pass a folder for the shards")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not overwrite:
        raise ValueError(f"{out}: the folder is not empty (it holds {entries[0]}, {len(entries)} entries); pass "
                         "--overwrite to replace its shards, or choose a new folder")


def _write_records(source, records: list[Sample], staging: Path, out: Path, shard_size: int,
                   max_pixels: int | None) -> SkipStats:
    stats = SkipStats(source=str(out), max_bad_fraction=source.stats.max_bad_fraction)
    # What the source's index already dropped (a missing file, an empty caption) counts too, with what fails here.
    stats.skipped.update(source.stats.skipped)
    stats.seen += source.stats.n_skipped
    stats.examples += source.stats.examples[:5]
    with ShardWriter(staging, shard_size) as writer:
        for record in records:
            try:
                data = Path(record.image).read_bytes()
                image = decode_image(data, max_pixels, name=str(record.image))
                extension = sniff_format(data).extension
            except FileNotFoundError:
                stats.skip("missing image", f"{record.image}: no such file")
                continue
            except BadImage as e:
                stats.skip(e.reason, e.detail)
                continue
            if extension not in IMAGE_KEYS:  # decodes, but no shard reader would find it under its name
                stats.skip("unsupported format", f"{record.image}: .{extension} cannot be stored in a shard "
                           f"(one of {', '.join(IMAGE_KEYS)})")
                continue
            stats.ok()
            writer.add(record, data, image.size, extension)
    stats.check(final=True)
    return stats


def _move_shards_in(staging: Path, out: Path) -> list[Path]:
    """The finished shards replace the folder's old ones (`*.tar` and their `_stats.json`); other files stay."""
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.tar"), *out.glob("*_stats.json")]:
        old.unlink()
    moved = []
    for path in sorted(staging.iterdir()):
        os.replace(path, out / path.name)
        moved += [out / path.name] if path.suffix == ".tar" else []
    return moved


class ShardWriter:
    """Streams samples into `00000.tar`, `00001.tar`, ... of `shard_size` samples, each written atomically."""

    def __init__(self, out_dir: str | Path, shard_size: int):
        if shard_size < 1:
            raise ValueError(f"shard size must be at least 1, got {shard_size}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.index_digits = max(4, len(str(shard_size - 1)))
        self.paths: list[Path] = []
        self._stack: contextlib.ExitStack | None = None
        self._tar: tarfile.TarFile | None = None
        self._count = 0

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self._close_shard(exc)

    def add(self, record: Sample, data: bytes, size: tuple[int, int], extension: str | None = None) -> None:
        """`extension`: the format of `data` (`data_pipelines.image_bytes.sniff_format`); sniffed when not given."""
        if self._tar is None or self._count == self.shard_size:
            self._close_shard((None, None, None))
            self._open_shard()
        key = f"{len(self.paths) - 1:05d}{self._count:0{self.index_digits}d}"
        ext = extension or sniff_format(data).extension
        if ext not in IMAGE_KEYS:
            raise ValueError(f"{record.image}: cannot store .{ext} images in shards (one of {', '.join(IMAGE_KEYS)})")
        meta = {"key": key, "caption": record.caption, "image_id": record.image_id, "width": size[0],
                "height": size[1], "source": str(record.image)}
        for name, payload in ((f"{key}.{ext}", data), (f"{key}.txt", record.caption.encode()),
                              (f"{key}.json", json.dumps(meta, sort_keys=True).encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(payload), 0, 0o644
            self._tar.addfile(info, io.BytesIO(payload))
        self._count += 1
    def _open_shard(self) -> None:
        path = self.out_dir / f"{len(self.paths):05d}.tar"
        self._stack = contextlib.ExitStack()
        f = self._stack.enter_context(atomic_write(path, "wb"))
        self._tar = self._stack.enter_context(tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT))
        self.paths.append(path)
        self._count = 0

    def _close_shard(self, exc: tuple) -> None:
        if self._stack is None:
            return
        self._stack.__exit__(*exc)
        if exc[0] is None:  # img2dataset writes per-shard counts next to each shard
            stats_path = self.paths[-1].with_name(self.paths[-1].stem + "_stats.json")
            stats_path.write_text(json.dumps({"count": self._count, "successes": self._count}))
        self._stack, self._tar = None, None
