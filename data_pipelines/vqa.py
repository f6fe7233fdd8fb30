"""VQAv2 question + annotation files, the answer vocabulary, and soft answer targets.

Images are found by an `image` field on a question (our extension; the shapes world writes it) or by
VQAv2's naming, `{data_subtype}/COCO_{data_subtype}_{image_id:012d}.jpg` under `image_root`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from data_pipelines.coco import read_json, require
from data_pipelines.records import RecordDataset, resolve_image_path, validate_records
from data_pipelines.sample import Sample
from data_pipelines.vqa_normalize import normalize_answer

if TYPE_CHECKING:
    import torch

COCO_IMAGE_PATTERN = "{data_subtype}/COCO_{data_subtype}_{image_id:012d}.jpg"
# VQAv2's soft score for 0, 1, 2, 3, 4+ humans giving an answer (DESIGN.md, Objectives).
SOFT_SCORES = (0.0, 0.3, 0.6, 0.9, 1.0)


def annotations_path_for(questions: Path) -> Path | None:
    """The annotation file next to a questions file, by VQAv2's and the shapes world's naming."""
    for name in (questions.name.replace("questions", "annotations"),
                 questions.name.replace("OpenEnded_", "").replace("questions", "annotations")):
        candidate = questions.with_name(name)
        if candidate != questions and candidate.is_file():
            return candidate
    return None


def open_vqa(
    questions_path: str | Path,
    annotations_path: str | Path | None = None,
    transform: Callable | None = None,
    image_root: str | Path | None = None,
    image_pattern: str = COCO_IMAGE_PATTERN,
    max_bad_fraction: float | None = None,  # None: the command's rule (sample.bad_file_rule)
    check_files: bool = True,
    max_pixels: int | None = None,
    data: dict | None = None,
) -> RecordDataset:
    """One item per question; `answers` holds the 10 human answers when an annotation file exists.

    `data`: the questions file already parsed (open_source reads a JSON file once)."""
    questions_path = Path(questions_path)
    data = read_json(questions_path) if data is None else data
    questions = require(data, "questions", list, questions_path)
    annotations_path = Path(annotations_path) if annotations_path else annotations_path_for(questions_path)
    annotations = _read_annotations(annotations_path) if annotations_path else {}
    base = Path(image_root) if image_root is not None else questions_path.parent
    subtype = data.get("data_subtype", "")

    def candidates() -> Iterator[tuple[Sample, str]]:
        for i, q in enumerate(questions):
            where = f"questions[{i}]"
            question_id = require(q, "question_id", int, questions_path, where)
            image_id = require(q, "image_id", int, questions_path, where)
            text = require(q, "question", str, questions_path, where)
            relative = q.get("image") or image_pattern.format(data_subtype=subtype, image_id=image_id)
            ann = annotations.get(question_id)
            if annotations and ann is None:
                raise ValueError(f"{annotations_path}: no annotation for question_id {question_id}")
            sample = Sample(resolve_image_path(base, relative), q.get("image") or str(image_id),
                            question=text, question_id=question_id, meta={"vqa_image_id": image_id})
            if ann is not None:
                sample.answers = ann["answers"]
                sample.answer_type = ann.get("answer_type")
                sample.question_family = ann.get("question_family")
                sample.meta["multiple_choice_answer"] = ann.get("multiple_choice_answer")
            yield sample, f"{questions_path.name} {where}"

    records, rows, stats = validate_records(candidates(), str(questions_path), max_bad_fraction, check_files)
    info = {"annotations": str(annotations_path) if annotations_path else None}
    return RecordDataset(records, stats, "vqav2", transform, max_pixels, info, rows=rows)


def _read_annotations(path: Path) -> dict[int, dict]:
    by_question = {}
    for i, ann in enumerate(require(read_json(path), "annotations", list, path)):
        where = f"annotations[{i}]"
        question_id = require(ann, "question_id", int, path, where)
        answers = require(ann, "answers", list, path, where)
        texts = [require(a, "answer", str, path, f"{where}.answers[{j}]") for j, a in enumerate(answers)]
        by_question[question_id] = {**ann, "answers": texts}
    return by_question


def build_answer_vocab(source: RecordDataset | Iterable[Sample], max_answers: int = 3129,
                       min_count: int = 1) -> list[str]:
    """The most frequent answers (each question's majority human answer), most frequent first.

    3129 is the usual VQAv2 vocabulary size (answers given at least 9 times in train+val).
    Ties are broken alphabetically so the vocabulary is the same on every run.
    """
    samples = source.records if isinstance(source, RecordDataset) else source
    counts = Counter()
    for sample in samples:
        if sample.answers:
            majority = Counter(normalize_answer(a) for a in sample.answers).most_common(1)[0][0]
            counts[majority] += 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [answer for answer, n in ranked if n >= min_count][:max_answers]


def answer_targets(answers: list[list[str]], vocab: list[str]) -> torch.Tensor:
    """(B, len(vocab)) soft scores: 0.3 per human who gave the answer, capped at 1 (VQAv2's BCE targets)."""
    import torch  # here, not at the top: reading a VQA file (`vlm data inspect`) needs no torch

    index = {a: i for i, a in enumerate(vocab)}
    targets = torch.zeros(len(answers), len(vocab))
    for row, human_answers in enumerate(answers):
        for answer, n in Counter(normalize_answer(a) for a in human_answers or []).items():
            if answer in index:
                targets[row, index[answer]] = SOFT_SCORES[min(n, 4)]
    return targets
