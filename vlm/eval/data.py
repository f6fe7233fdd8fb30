"""Evaluation sets in memory, read through data_pipelines' loaders (never a parallel reader).

Evaluation sets are small next to training sets and every evaluator needs random access to them (the
retrieval score matrix, hybrid re-ranking), so each is read once into tensors at one model's resolution.
Images that fail to decode are skipped and counted (`skipped`), as everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from data_pipelines.collate import Collator
from data_pipelines.sample import SkipStats
from data_pipelines.sources import detect_format, open_source
from vlm.errors import UserError

BATCH_SIZE = 64


@dataclass
class RetrievalSet:
    images: torch.Tensor  # (N_images, 3, H, W), one per distinct image
    captions: list[str]  # every caption
    text_to_image: list[int]  # caption t describes images[text_to_image[t]]
    skipped: dict = field(default_factory=dict)


@dataclass
class VQASet:
    images: torch.Tensor  # (N_questions, 3, H, W), the image of each question
    questions: list[str]
    answers: list[list[str]]  # the human answers of each question
    answer_types: list[str | None]
    question_families: list[str | None]
    skipped: dict = field(default_factory=dict)


@dataclass
class ClassificationSet:
    images: torch.Tensor
    labels: torch.Tensor
    classnames: list[str]
    templates: list[str]
    skipped: dict = field(default_factory=dict)


@dataclass
class CompositionalSet:
    images: torch.Tensor
    captions: list[str]
    negatives: list[str]
    negative_types: list[str]
    skipped: dict = field(default_factory=dict)


def is_shapes_world(path: str | Path) -> bool:
    return Path(path).is_dir() and detect_format(path) == "shapes"


def eval_split(path: str | Path, split: str | None) -> str | None:
    """The split an evaluation reads: `split`, or `val` for a shapes-world folder (None: the whole file)."""
    return split or ("val" if is_shapes_world(path) else None)


# The formats each task reads, outside a shapes world, and what to pass instead; compositional reads any pairs file.
TASK_FORMATS = {
    "vqa": (("vqav2",), "a VQAv2 questions JSON (annotations next to it) or a shapes-world folder"),
    "classify": (("imagefolder",), "a class-folder tree (root/<class>/<image>) or a shapes-world folder"),
    "pairs": (("csv", "tsv", "jsonl", "coco", "karpathy", "webdataset"),
              "a pairs file (CSV/TSV/JSONL), COCO or Karpathy captions JSON, shards or a shapes-world folder"),
}
TASK_COMMANDS = {"vqa": "vlm eval vqa", "classify": "vlm eval zeroshot", "pairs": "vlm eval retrieval"}


def open_eval_source(path: str | Path, task: str, split: str | None, transform=None, options: dict | None = None):
    """A shapes-world folder is opened at `split` for `task`; any other path is opened as it is, and refused
    by name when its format is not one `task` reads (a pairs CSV has no questions, so no VQA).
    `transform`: the model's own preprocessing (`model_transform`); `options`: a pairs file's columns
    (`data_pipelines.options.pairs_options`)."""
    if is_shapes_world(path):
        return open_source(path, split=eval_split(path, split), transform=transform, task=task, **(options or {}))
    if Path(path).suffix.lower() != ".json":  # a JSON file's format is known once it is parsed, below
        check_task_format(path, task, detect_format(path))
    dataset = open_source(path, split=split, transform=transform, **(options or {}))
    check_task_format(path, task, dataset.format)
    return dataset


def check_task_format(path: str | Path, task: str, fmt: str) -> None:
    formats, wanted = TASK_FORMATS.get(task, ((fmt,), ""))
    if fmt not in formats:
        raise UserError(f"{path}: {TASK_COMMANDS[task]} does not read {FORMAT_NAMES.get(fmt, fmt)}; give it {wanted}")


FORMAT_NAMES = {"csv": "a CSV pairs file", "tsv": "a TSV pairs file", "jsonl": "a JSONL pairs file",
                "coco": "COCO captions", "karpathy": "Karpathy captions", "webdataset": "shards",
                "imagefolder": "a class-folder tree", "vqav2": "VQA questions",
                "folder": "a folder of images without classes (an image directly in it)"}


def _batches(dataset, stats: SkipStats):
    loader = DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=False, collate_fn=Collator())  # texts stay strings
    return stats.watch(loader)


def load_retrieval(path: str | Path, transform, split: str | None = None,
                   options: dict | None = None) -> RetrievalSet:
    """Distinct images (grouped by `image_id`) and all their captions."""
    dataset = open_eval_source(path, "pairs", split, transform, options)
    stats = SkipStats(source=str(path))
    index: dict[str, int] = {}
    images, captions, text_to_image = [], [], []
    for batch in _batches(dataset, stats):
        for image, image_id, caption in zip(batch["images"], batch["image_ids"], batch["captions"], strict=True):
            if image_id not in index:
                index[image_id] = len(images)
                images.append(image)
            captions.append(caption)
            text_to_image.append(index[image_id])
    if not images:
        raise ValueError(f"{path}: no usable image-caption pairs for retrieval")
    return RetrievalSet(torch.stack(images), captions, text_to_image, dict(stats.skipped))


def load_vqa(path: str | Path, transform, split: str | None = None, options: dict | None = None) -> VQASet:
    dataset = open_eval_source(path, "vqa", split, transform, options)
    stats = SkipStats(source=str(path))
    images, questions, answers, types, families = [], [], [], [], []
    for batch in _batches(dataset, stats):
        if "answers" not in batch:
            raise ValueError(f"{path}: VQA evaluation needs the annotations (human answers) next to the questions")
        images.append(batch["images"])
        questions += batch["question_text"]
        answers += batch["answers"]
        types += batch["answer_types"]
        families += batch["question_families"]
    if not questions:
        raise ValueError(f"{path}: no usable VQA questions")
    return VQASet(torch.cat(images), questions, answers, types, families, dict(stats.skipped))


def load_classification(path: str | Path, transform, split: str | None = None,
                        options: dict | None = None) -> ClassificationSet:
    dataset = open_eval_source(path, "classify", split, transform, options)
    stats = SkipStats(source=str(path))
    images, labels = [], []
    for batch in _batches(dataset, stats):
        images.append(batch["images"])
        labels.append(batch["labels"])
    if not images:
        raise ValueError(f"{path}: no usable images to classify")
    info = dataset.info
    return ClassificationSet(torch.cat(images), torch.cat(labels), list(info["classnames"]),
                             list(info["templates"]), dict(stats.skipped))


def load_compositional(path: str | Path, transform, split: str | None = None,
                       options: dict | None = None) -> CompositionalSet:
    """Items with a true caption and a hard negative (`negative_caption`, `negative_type` in the JSONL)."""
    dataset = open_eval_source(path, "compositional", split, transform, options)
    stats = SkipStats(source=str(path))
    images, captions, negatives, types = [], [], [], []
    for batch in _batches(dataset, stats):
        if "negative_captions" not in batch:
            raise ValueError(f"{path}: compositional items need a 'negative_caption' field")
        images.append(batch["images"])
        captions += batch["captions"]
        negatives += batch["negative_captions"]
        types += [t or "unknown" for t in batch["negative_types"]]
    if not images:
        raise ValueError(f"{path}: no usable compositional items")
    return CompositionalSet(torch.cat(images), captions, negatives, types, dict(stats.skipped))


def training_captions(path: str | Path) -> list[str]:
    """The captions of a shapes world's train split, read from the index (no image decoded)."""
    return [r.caption for r in open_eval_source(path, "pairs", "train").records]


def training_questions(path: str | Path) -> tuple[list[str], list[list[str]], list[str | None]]:
    """Questions, human answers and families of the train split, read from the index (no image decoded)."""
    records = [r for r in open_eval_source(path, "vqa", "train").records if r.answers]
    return [r.question for r in records], [r.answers for r in records], [r.question_family for r in records]
