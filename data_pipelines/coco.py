"""COCO captions JSON and Karpathy split JSON (COCO, Flickr8k/30k): the two retrieval benchmark formats."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from data_pipelines.records import RecordDataset, resolve_image_path, validate_records
from data_pipelines.sample import Sample
from data_pipelines.text_files import open_text


def read_json(path: str | Path) -> Any:
    """A JSON file, with or without a BOM; bad JSON or bad UTF-8 is one error naming the file and line."""
    path = Path(path)
    try:
        with open_text(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None


def require(obj: Any, key: str, kind: type, path: Path, where: str = "") -> Any:
    """`obj[key]` if it is a `kind`, else one error naming the file and the field."""
    field = f"{where}.{key}" if where else key
    if not isinstance(obj, dict) or key not in obj:
        raise ValueError(f"{path}: missing field {field!r}")
    if not isinstance(obj[key], kind):
        raise ValueError(f"{path}: field {field!r} should be a {kind.__name__}, got {type(obj[key]).__name__}")
    return obj[key]


def open_coco_captions(
    path: str | Path,
    transform: Callable | None = None,
    image_root: str | Path | None = None,
    data: dict | None = None,
    max_bad_fraction: float | None = None,  # None: the command's rule (sample.bad_file_rule)
    check_files: bool = True,
    max_pixels: int | None = None,
) -> RecordDataset:
    """`captions_*.json`: `images[{id, file_name}]` + `annotations[{image_id, caption}]`, one item per caption."""
    path = Path(path)
    data = read_json(path) if data is None else data
    base = Path(image_root) if image_root is not None else path.parent
    files = {}
    for i, image in enumerate(require(data, "images", list, path)):
        files[require(image, "id", int, path, f"images[{i}]")] = require(image, "file_name", str, path,
                                                                         f"images[{i}]")
    annotations = require(data, "annotations", list, path)

    def candidates() -> Iterator[tuple[Sample, str]]:
        for i, ann in enumerate(annotations):
            where = f"annotations[{i}]"
            image_id = require(ann, "image_id", int, path, where)
            caption = require(ann, "caption", str, path, where)
            if image_id not in files:
                raise ValueError(f"{path}: {where}.image_id {image_id} is not in 'images'")
            meta = {"annotation_id": ann.get("id"), "file_name": files[image_id]}
            yield Sample(resolve_image_path(base, files[image_id]), str(image_id), caption=caption.strip(),
                         meta=meta), f"{path.name} {where}"

    records, rows, stats = validate_records(candidates(), str(path), max_bad_fraction, check_files, need_caption=True)
    return RecordDataset(records, stats, "coco", transform, max_pixels, rows=rows)


def open_karpathy(
    path: str | Path,
    split: str | None = None,
    transform: Callable | None = None,
    image_root: str | Path | None = None,
    data: dict | None = None,
    max_bad_fraction: float | None = None,  # None: the command's rule (sample.bad_file_rule)
    check_files: bool = True,
    max_pixels: int | None = None,
) -> RecordDataset:
    """`dataset_coco.json` / `dataset_flickr30k.json`: `images[{filepath?, filename, split, sentences[{raw}]}]`.

    `split="train"` includes Karpathy's `restval` images, as the retrieval papers train on both.
    """
    path = Path(path)
    data = read_json(path) if data is None else data
    base = Path(image_root) if image_root is not None else path.parent
    images = require(data, "images", list, path)
    wanted = {"train", "restval"} if split == "train" else {split}

    def candidates() -> Iterator[tuple[Sample, str]]:
        for i, image in enumerate(images):
            where = f"images[{i}]"
            if split is not None and require(image, "split", str, path, where) not in wanted:
                continue
            filename = require(image, "filename", str, path, where)
            relative = str(Path(image.get("filepath", "")) / filename)
            image_id = str(image.get("cocoid", image.get("imgid", filename)))
            for j, sentence in enumerate(require(image, "sentences", list, path, where)):
                caption = require(sentence, "raw", str, path, f"{where}.sentences[{j}]")
                meta = {"split": image.get("split"), "filename": relative}
                yield Sample(resolve_image_path(base, relative), image_id, caption=caption.strip(),
                             meta=meta), f"{path.name} {where}"

    records, rows, stats = validate_records(candidates(), f"{path} split={split}", max_bad_fraction, check_files,
                                      need_caption=True)
    return RecordDataset(records, stats, "karpathy", transform, max_pixels, rows=rows)
