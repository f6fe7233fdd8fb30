"""ImageFolder (`root/<class>/*.png`) with readable class names and prompt templates for zero-shot use.

Labels are the index of the class folder in sorted order, as torchvision's ImageFolder. `classnames.txt`
(one name per line, in that order) and `templates.txt` (one prompt per line with `{}`) sit in the root, as in
CLIP_benchmark. Empty class folders are allowed: a split may hold no images of a class the classifier
must still be able to predict (the shapes world's held-out combinations).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from data_pipelines.images import IMAGE_EXTENSIONS
from data_pipelines.records import RecordDataset, validate_records
from data_pipelines.sample import DEFAULT_MAX_BAD_FRACTION, Sample
from data_pipelines.text_files import read_lines  # BOM-free, with decode errors that name the line

DEFAULT_TEMPLATES = ("a photo of a {}.",)


def open_imagefolder(
    root: str | Path,
    transform: Callable | None = None,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    max_pixels: int | None = None,
) -> RecordDataset:
    """One item per image with `label`; `.info` holds `classnames` and `templates`."""
    root = Path(root)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{root}: no class folders (expected root/<class>/<image>)")
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

    def candidates() -> Iterator[tuple[Sample, str]]:
        for label, folder in enumerate(folders):
            for image in sorted((root / folder).iterdir()):
                if image.suffix.lower() in IMAGE_EXTENSIONS:
                    yield Sample(image, f"{folder}/{image.name}", label=label,
                                 meta={"classname": classnames[label]}), str(image)

    records, rows, stats = validate_records(candidates(), str(root), max_bad_fraction, check_files=False)
    info = {"classnames": classnames, "templates": templates, "folders": folders}
    return RecordDataset(records, stats, "imagefolder", transform, max_pixels, info, rows=rows)
