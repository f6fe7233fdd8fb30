"""ImageFolder (`root/<class>/*.png`) with readable class names and prompt templates for zero-shot use.

Labels are the index of the class folder in sorted order, as torchvision's ImageFolder. `classnames.txt`
(one name per line, in that order) and `templates.txt` (one prompt per line with `{}`) sit in the root, as in
CLIP_benchmark. A class folder without images is a class only when `classnames.txt` names it (a split may
hold no images of a class the classifier must still predict: the shapes world's held-out combinations);
where the class names come from the folders, an empty one is skipped, with one warning, never made a class.

One rule for what a folder is, the same for every command (`is_image_folder`): a folder with an image file
directly in it is a plain folder of images, read recursively, without labels (`open_plain_folder`); a folder
whose images are all in subfolders is an ImageFolder, one class per subfolder.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from data_pipelines.images import IMAGE_EXTENSIONS
from data_pipelines.records import RecordDataset, validate_records
from data_pipelines.sample import Sample
from data_pipelines.text_files import read_lines  # BOM-free, with decode errors that name the line

DEFAULT_TEMPLATES = ("a photo of a {}.",)


def open_imagefolder(
    root: str | Path,
    transform: Callable | None = None,
    max_bad_fraction: float | None = None,  # None: the command's rule (sample.bad_file_rule)
    max_pixels: int | None = None,
    keep_empty: bool = False,
) -> RecordDataset:
    """One item per image with `label`; `.info` holds `classnames` and `templates`.

    Empty class folders are not made classes, unless the class names come from elsewhere (`classnames.txt`,
    or `keep_empty` for a caller that names the classes itself, as `--classnames imagenet` does for ImageNet's
    1000 folders): then every folder keeps its place in the label order."""
    root = Path(root)
    folders, classnames, templates = imagefolder_classes(root, keep_empty)
    records, rows, stats = validate_records(iter_imagefolder(root, folders, classnames), str(root), max_bad_fraction,
                                            check_files=False)
    info = {"classnames": classnames, "templates": templates, "folders": folders}
    return RecordDataset(records, stats, "imagefolder", transform, max_pixels, info, rows=rows)


def imagefolder_classes(root: Path, keep_empty: bool = False) -> tuple[list[str], list[str], list[str]]:
    """(class folders in label order, their class names, the prompt templates), without listing the images."""
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{root}: no class folders (expected root/<class>/<image>)")
    if not keep_empty and not (root / "classnames.txt").is_file():
        folders = _non_empty(root, folders)
    classnames = [f.replace("_", " ") for f in folders]
    if (root / "classnames.txt").is_file():
        classnames = read_lines(root / "classnames.txt")
        if len(classnames) != len(folders):
            raise ValueError(f"{root / 'classnames.txt'}: {len(classnames)} names for {len(folders)} class folders")
    templates = list(DEFAULT_TEMPLATES)
    if (root / "templates.txt").is_file():
        templates = read_lines(root / "templates.txt")
        bad = [t for t in templates if "{}" not in t]
        if bad:
            raise ValueError(f"{root / 'templates.txt'}: template {bad[0]!r} has no '{{}}' for the class name")
    return folders, classnames, templates


def iter_imagefolder(root: Path, folders: list[str], classnames: list[str]) -> Iterator[tuple[Sample, str]]:
    """Each image of each class folder as (record, where it came from), one folder's listing held at a time: an
    index build streams this (vlm/index/stream.py), a dataset keeps the records."""
    for label, folder in enumerate(folders):
        for image in sorted((root / folder).iterdir()):
            if image.suffix.lower() in IMAGE_EXTENSIONS:
                yield Sample(image, f"{folder}/{image.name}", label=label,
                             meta={"classname": classnames[label]}), str(image)


def _non_empty(root: Path, folders: list[str]) -> list[str]:
    """The class folders holding an image; the empty ones are named once on stderr, as not made classes."""
    empty = [f for f in folders if not any(_images(root / f))]
    if empty:
        named = ", ".join(empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
        print(f"{root}: skipped {len(empty)} empty class folder(s), not made classes: {named}", file=sys.stderr)
    kept = [f for f in folders if f not in empty]
    if not kept:
        raise ValueError(f"{root}: every class folder is empty (expected root/<class>/<image>); add images")
    return kept


def _images(folder: Path) -> Iterator[Path]:
    return (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def is_image_folder(root: str | Path) -> bool:
    """True for a plain folder of images (an image file directly in it), False for an ImageFolder tree."""
    return any(_images(Path(root)))


def open_plain_folder(
    root: str | Path,
    transform: Callable | None = None,
    max_bad_fraction: float | None = None,  # None: the command's rule (sample.bad_file_rule)
    max_pixels: int | None = None,
) -> RecordDataset:
    """Every image under `root`, recursively and sorted, one item each (id: its path under `root`), no labels."""
    root = Path(root)
    candidates = ((Sample(str(p), str(p.relative_to(root))), str(p))
                  for p in sorted(root.rglob("*")) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    records, rows, stats = validate_records(candidates, str(root), max_bad_fraction, check_files=False)
    return RecordDataset(records, stats, "folder", transform, max_pixels, rows=rows)
