"""`open_source`: one entry point that recognises a dataset's format from the path and opens it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from data_pipelines.coco import open_coco_captions, open_karpathy, read_json
from data_pipelines.imagefolder import is_image_folder, open_imagefolder, open_plain_folder
from data_pipelines.options import COLUMN_OPTIONS
from data_pipelines.pairs import open_pairs
from data_pipelines.vqa import open_vqa
from vlm.errors import UserError

SHAPES_TASKS = ("pairs", "vqa", "classify", "compositional")


def detect_format(path: str | Path) -> str:
    """One of: shapes, webdataset, folder, imagefolder, csv, tsv, jsonl, coco, karpathy, vqav2.

    A folder with an image file directly in it is a plain `folder` of images, read recursively without labels;
    one with images only in subfolders is an `imagefolder` (`DIR/<class>/<image>`). Every command reads a
    folder by this one rule (`data_pipelines.imagefolder`)."""
    text = str(path)
    path = Path(text)
    if path.suffix == ".tar":  # a shard, or a brace pattern of shards (`shards/{000..099}.tar`)
        return "webdataset"
    if path.is_dir():
        if (path / "world.json").is_file():
            return "shapes"
        if any(path.glob("*.tar")):
            return "webdataset"
        return "folder" if is_image_folder(path) else "imagefolder"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".jsonl"):
        return suffix[1:]
    if suffix == ".json":
        return _json_format(path, read_json(path))
    raise ValueError(f"{path}: unknown data format (expected .csv, .tsv, .jsonl, .json, .tar or a folder)")


def _json_format(path: Path, data) -> str:
    if isinstance(data, dict) and "questions" in data:
        return "vqav2"
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        if "annotations" in data:
            return "coco"
        if data["images"] and isinstance(data["images"][0], dict) and "sentences" in data["images"][0]:
            return "karpathy"
    keys = ", ".join(data) if isinstance(data, dict) else type(data).__name__
    raise ValueError(f"{path}: JSON is neither COCO captions (images + annotations), Karpathy (images[].sentences) "
                     f"nor VQAv2 questions (questions); top level has: {keys}")


def open_source(path: str | Path, split: str | None = None, transform: Callable | None = None,
                task: str | None = None, **options):
    """Open any supported dataset; returns a map-style RecordDataset or, for shards, a ShardDataset.

    `split` selects a Karpathy split or a shapes-world split (train, val, test, heldout); for a shapes-world
    folder `task` picks the view: "pairs" (default), "vqa", "classify" or "compositional". Any other source
    is one view already (the file decides), so `task` is ignored there.
    Other options go to the format's reader (`image_column`, `caption_column`, `sep`, `image_root`,
    `annotations_path`, `shuffle`, `max_bad_fraction`, `max_pixels`, ...); an option given as None is the
    reader's default. Column options (see `data_pipelines.options.pairs_options`) given for a source that
    is not a pairs file are refused by name.
    """
    json_file = Path(path).suffix.lower() == ".json" and Path(path).is_file()
    data = read_json(Path(path)) if json_file else None  # parsed once, for detection and for the reader
    fmt = _json_format(Path(path), data) if json_file else detect_format(path)
    options = {k: v for k, v in options.items() if v is not None}  # None: the reader's default
    if fmt not in ("shapes", "csv", "tsv", "jsonl"):
        _refuse_pairs_options(path, fmt, options, has_image_root=fmt not in ("webdataset", "imagefolder", "folder"))
    if fmt == "shapes":
        return open_shapes(path, split, transform, task or "pairs", **options)
    if fmt == "webdataset":
        from data_pipelines.shards import ShardDataset  # torch's IterableDataset: loaded only for shards

        return ShardDataset(path, transform, **options)
    if fmt == "imagefolder":
        return open_imagefolder(path, transform, **options)
    if fmt == "folder":
        return open_plain_folder(path, transform, **options)
    if fmt in ("csv", "tsv", "jsonl"):
        return open_pairs(path, transform, **options)
    if fmt == "coco":
        return open_coco_captions(path, transform, data=data, **options)
    if fmt == "karpathy":
        return open_karpathy(path, split, transform, data=data, **options)
    return open_vqa(path, transform=transform, data=data, **options)


def _refuse_pairs_options(path: str | Path, what: str, options: dict, has_image_root: bool = True) -> None:
    """Column names mean something only to a pairs file; elsewhere they would fail deep in a reader."""
    refused = [k for k in COLUMN_OPTIONS if k in options]
    refused += [] if has_image_root or "image_root" not in options else ["image_root"]
    if refused:
        raise UserError(f"{path}: {', '.join(refused)} applies only to a CSV/TSV/JSONL pairs file; this is {what}")


def shapes_splits(root: str | Path) -> list[str]:
    """The splits a shapes-world folder holds (train, val, test, heldout, ...), from its pairs files."""
    return sorted(p.stem.removeprefix("pairs_") for p in Path(root).glob("pairs_*.csv"))


def open_shapes(root: str | Path, split: str | None, transform: Callable | None = None, task: str = "pairs",
                **options):
    """One view of one split of a shapes-world folder (see docs/INTERFACES.md, Data)."""
    root = Path(root)
    splits = shapes_splits(root)
    if split not in splits:
        raise ValueError(f"{root} is a shapes-world folder: pass split= one of {', '.join(splits)} (got {split!r})")
    if task == "pairs":
        return open_pairs(root / f"pairs_{split}.csv", transform, **options)
    if task in ("vqa", "classify"):
        _refuse_pairs_options(root, f"a shapes world's {task} view", options, has_image_root=task == "vqa")
    if task == "vqa":
        return open_vqa(root / f"vqa_{split}_questions.json", transform=transform, **options)
    if task == "classify":
        return open_imagefolder(root / f"classify_{split}", transform, **options)
    if task == "compositional":
        return open_pairs(root / f"compositional_{split}.jsonl", transform, **options)
    raise ValueError(f"{root}: unknown shapes-world task {task!r}; one of {', '.join(SHAPES_TASKS)}")

