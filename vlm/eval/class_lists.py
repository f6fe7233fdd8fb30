"""Class names and prompt templates for zero-shot use: given inline, from a file, or a named standard list.

`imagenet` is OpenAI's ImageNet-1k class names and its 80 prompt templates, as open_clip ships them
(`open_clip.zero_shot_metadata`), so an ImageNet-style folder (`val/n01440764/...`, class folders in WordNet-id
order) is scored with the names and prompts CLIP's published 63.2% (ViT-B/32) was measured with.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_TEMPLATES = ["a photo of a {}."]
NAMED_LISTS = ("imagenet",)


def imagenet_classnames() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def imagenet_templates() -> list[str]:
    """open_clip keeps them as functions of the class name; "{}" marks where the name goes."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [template("{}") for template in OPENAI_IMAGENET_TEMPLATES]


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def resolve_classnames(value: str | list[str] | Path | None) -> list[str]:
    """A list as it is; "imagenet"; a file with one name per line; or a comma-separated string."""
    if isinstance(value, list | tuple):
        names = [str(v).strip() for v in value]
    elif value is None or str(value).strip() == "":
        raise ValueError("no class names: give --labels \"cat,dog\", --labels-file FILE or --classnames imagenet")
    elif str(value) == "imagenet":
        names = imagenet_classnames()
    elif Path(value).is_file():
        names = _lines(Path(value))
    else:
        names = [v.strip() for v in str(value).split(",")]
    if not names or any(not n for n in names):
        raise ValueError(f"class names {value!r}: an empty name (two commas in a row, or a trailing comma?)")
    return names


def resolve_templates(value: str | list[str] | Path | None) -> list[str]:
    """A list as it is; None for the default; "imagenet" (OpenAI's 80); a file, one per line; or one template."""
    if value is None:
        templates = list(DEFAULT_TEMPLATES)
    elif isinstance(value, list | tuple):
        templates = list(value)
    elif str(value) == "imagenet":
        templates = imagenet_templates()
    elif Path(value).is_file():
        templates = _lines(Path(value))
    else:
        templates = [str(value)]
    bad = [t for t in templates if "{}" not in t and "{c}" not in t]
    if not templates or bad:
        raise ValueError(f"template {bad[0] if bad else ''!r} has no '{{}}' where the class name goes")
    return templates
