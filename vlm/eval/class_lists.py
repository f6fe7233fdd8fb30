"""Class names and prompt templates for zero-shot use: given inline, from a file, or a named standard list.

`imagenet` is OpenAI's ImageNet-1k class names and its 80 prompt templates, as open_clip ships them
(`open_clip.zero_shot_metadata`), so an ImageNet-style folder (`val/n01440764/...`, class folders in WordNet-id
order) is scored with the names and prompts CLIP's published 63.2% (ViT-B/32) was measured with, but for two
names: OpenAI's list names two pairs of classes alike (see IMAGENET_RENAMES).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from data_pipelines.text_files import read_lines
from vlm.errors import UserError

DEFAULT_TEMPLATES = ["a photo of a {}."]
NAMED_LISTS = ("imagenet",)
# OpenAI's list calls classes 657 and 744 "missile" and 836 and 837 "sunglasses". open_clip (3.3) keeps the list
# as it is: its zero-shot classifier tells classes apart by index, never by name. Here a label is also the name a
# prediction is written under, so one of each pair takes its WordNet synset's own name, as torchvision's ImageNet
# categories do: n04008634 "projectile, missile" and n04355933 "sunglass" (n04356056 is "sunglasses").
IMAGENET_RENAMES = {744: ("missile", "projectile"), 836: ("sunglasses", "sunglass")}


def imagenet_classnames() -> list[str]:
    """open_clip's IMAGENET_CLASSNAMES, in its order, with each name unique (IMAGENET_RENAMES)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    names = list(IMAGENET_CLASSNAMES)
    for index, (openai_name, wordnet_name) in IMAGENET_RENAMES.items():
        if index < len(names) and names[index] == openai_name:
            names[index] = wordnet_name
    return unique_names(names)


def unique_names(names: list[str]) -> list[str]:
    """Each repeat of a name gets its class index ("kite (class 21)"): a guard, should open_clip's list change."""
    counts = Counter(names)
    seen: set[str] = set()
    out = []
    for index, name in enumerate(names):
        out.append(f"{name} (class {index})" if counts[name] > 1 and name in seen else name)
        seen.add(name)
    return out


def imagenet_templates() -> list[str]:
    """open_clip keeps them as functions of the class name; "{}" marks where the name goes."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [template("{}") for template in OPENAI_IMAGENET_TEMPLATES]


def resolve_classnames(value: str | list[str] | Path | None, option: str = "--labels") -> list[str]:
    """A list as it is; "imagenet"; a file with one name per line; or a comma-separated string.
    A Path must be a file (`--labels-file`). `option` names the flag in the errors."""
    if isinstance(value, list | tuple):
        names, source = [str(v).strip() for v in value], option
    elif isinstance(value, Path) and not value.is_file():
        raise UserError(f"{value}: no such file of class names (one per line)")
    elif value is None or str(value).strip() == "":
        raise UserError(f'{option} is empty: give class names separated by commas ("cat,dog"), a file with one '
                        'per line, or "imagenet"')
    elif str(value) == "imagenet":
        names, source = imagenet_classnames(), "imagenet"
    elif Path(value).is_file():
        names, source = read_lines(Path(value)), str(value)
    else:
        names, source = [v.strip() for v in str(value).split(",")], option
    if not names or any(not n for n in names):
        raise UserError(f"{option} {value!r}: an empty class name (two commas in a row, or a trailing comma?)")
    twice = [name for name, n in Counter(names).items() if n > 1]
    if twice:
        raise UserError(f"{source}: {', '.join(map(repr, twice))} named more than once; each class needs its own "
                        "name (predictions are written under it): remove or rename the repeats")
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
        templates = read_lines(Path(value))
    else:
        templates = [str(value)]
    bad = [t for t in templates if "{}" not in t and "{c}" not in t]
    if not templates or bad:
        raise ValueError(f"template {bad[0] if bad else ''!r} has no '{{}}' where the class name goes")
    return templates
