"""VQA evaluation of either family, and the question-only blind baseline.

Both families answer from the same answer vocabulary (`config.vqa_answers`) through a classifier head; the
prediction is the highest-scoring answer, scored with the official VQAv2 accuracy (`vqa_metric`).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable

import torch
from torch import nn

from vlm.eval.pair_scoring import embed_images, encode_images
from vlm.eval.stream import StreamOptions, distinct_images, stream_images
from vlm.eval.vqa_metric import DEFAULT_VQA_METRIC, normalize_answer, vqa_report
from vlm.models.preprocess import pixel_mask_of
from vlm.tokenizer import get_tokenizer, padding_mask


@torch.no_grad()
def predict_answers(model: nn.Module, images: torch.Tensor, questions: list[str],
                    batch_size: int = 128) -> list[str]:
    """The answer (a string of `config.vqa_answers`) each model gives to each (image, question)."""
    answers = model.config.vqa_answers
    if not answers:
        raise ValueError(f"model {model.config.name!r} has no VQA head (its config has no vqa_answers)")
    ids = get_tokenizer(model)(questions)
    predictions = []
    for start in range(0, len(questions), batch_size):
        batch_images, batch_ids = images[start : start + batch_size], ids[start : start + batch_size]
        logits = model.vqa_logits(batch_images, batch_ids, padding_mask(batch_ids))
        predictions += [answers[i] for i in logits.argmax(dim=-1).tolist()]
    return predictions


def evaluate_vqa(model: nn.Module, images: torch.Tensor, questions: list[str], human_answers: list[list[str]],
                 answer_types: list[str | None] | None = None,
                 question_families: list[str | None] | None = None, metric: str = DEFAULT_VQA_METRIC) -> dict:
    start = time.perf_counter()
    predictions = predict_answers(model, images, questions)
    result = vqa_report(predictions, human_answers, answer_types, question_families, metric)
    passes = len(questions) if model.config.arch == "early_fusion" else 0
    result.update(wall_time_s=time.perf_counter() - start, fusion_passes=passes)
    return result


def _image_side(model: nn.Module):
    """What a VQA model computes from an image alone: the embedding (late) or the patch tokens (early)."""
    if model.config.arch == "dual_encoder":
        return lambda images: encode_images(model, images)
    return lambda images: (embed_images(model, images), model.image_mask(pixel_mask_of(images)))


def _answer(model: nn.Module, image_side: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Answer indices for questions `ids` about images already through `_image_side`."""
    if model.config.arch == "dual_encoder":
        logits = model.vqa_head(image_side, model.encode_text(ids))
    else:
        tokens, image_mask = image_side  # image_mask: the real patches of padded (ViLT) images, else None
        logits = model.vqa_head(model.fuse(tokens, ids, padding_mask(ids), image_mask).pooled)
    return logits.argmax(dim=-1)


def _take(image_side, rows: list[int]):
    """Rows of `_image_side`'s output: a tensor, or (patch tokens, image mask or None)."""
    if isinstance(image_side, tuple):
        return tuple(None if t is None else t[rows] for t in image_side)
    return image_side[rows]


@torch.no_grad()
def stream_vqa(model: nn.Module, dataset, options: StreamOptions, metric: str = DEFAULT_VQA_METRIC,
               batch_size: int = 128, require_answers: bool = True) -> tuple[dict, list[dict]]:
    """VQA over a streamed source, grouped by image: each image is decoded and encoded once (late fusion
    then answers all its questions from that embedding; early fusion fuses its patch tokens with each).

    Returns the report (questions in the source's order) and the predictions in VQAv2's results format.
    Questions without annotations (test-dev) are answered but not scored when `require_answers` is False."""
    answers = model.config.vqa_answers
    if not answers:
        raise ValueError(f"model {model.config.name!r} has no VQA head (its config has no vqa_answers)")
    groups = distinct_images(dataset)
    stats = groups.skip_stats()
    annotated = all(r.answers is not None for r in groups.records)
    if not annotated and require_answers:
        raise ValueError(f"{stats.source}: VQA evaluation needs the annotations (human answers) next to the questions "
                         "(without them, only --predictions can be written: a test-dev submission)")
    start, tokenizer = time.perf_counter(), get_tokenizer(model)
    questions_of = defaultdict(list)
    for r, image in enumerate(groups.record_image):
        questions_of[image].append(r)
    predicted: list[str | None] = [None] * len(groups.records)
    for positions, image_side in stream_images(groups, options, _image_side(model), stats):
        rows = [(row, r) for row, p in enumerate(positions.tolist()) for r in questions_of[p]]
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            ids = tokenizer([groups.records[r].question for _, r in chunk])
            best = _answer(model, _take(image_side, [row for row, _ in chunk]), ids)
            for (_, r), a in zip(chunk, best.tolist(), strict=True):
                predicted[r] = answers[a]
    kept = [r for r, a in enumerate(predicted) if a is not None]
    if not kept:
        raise ValueError(f"{stats.source}: no usable VQA questions")
    records = [groups.records[r] for r in kept]
    result = {"questions": len(kept), "vqa_accuracy": None}  # nothing to score a test-dev answer against
    if annotated:
        result = vqa_report([predicted[r] for r in kept], [q.answers for q in records],
                            [q.answer_type for q in records], [q.question_family for q in records], metric)
    result.update(wall_time_s=time.perf_counter() - start,
                  fusion_passes=len(kept) if model.config.arch == "early_fusion" else 0)
    if stats.skipped:
        result["skipped_samples"] = dict(stats.skipped)
    return result, [{"question_id": q.question_id, "answer": predicted[r]} for r, q in zip(kept, records, strict=True)]


class QuestionOnlyBaseline:
    """Answers without looking at the image: the most common training answer to the same question text,
    else to the same question family, else overall (VQAv2's "per question type prior", made finer).

    On templated questions this is a strong blind baseline: whatever a model scores above it needs the image.
    """

    def __init__(self, questions: Iterable[str], answers: Iterable[list[str]],
                 families: Iterable[str | None] | None = None):
        by_question: dict[str, Counter] = defaultdict(Counter)
        by_family: dict[str, Counter] = defaultdict(Counter)
        overall: Counter = Counter()
        questions, answers = list(questions), list(answers)
        families = list(families) if families is not None else [None] * len(questions)
        for question, human, family in zip(questions, answers, families, strict=True):
            votes = Counter(normalize_answer(a) for a in human)
            by_question[self._key(question)].update(votes)
            by_family[family or ""].update(votes)
            overall.update(votes)
        if not overall:
            raise ValueError("the question-only baseline needs training questions with answers")
        self.by_question = {q: c.most_common(1)[0][0] for q, c in by_question.items()}
        self.by_family = {f: c.most_common(1)[0][0] for f, c in by_family.items()}
        self.overall = overall.most_common(1)[0][0]

    @staticmethod
    def _key(question: str) -> str:
        return " ".join(question.lower().strip().rstrip("?").split())

    def predict(self, question: str, family: str | None = None) -> str:
        return self.by_question.get(self._key(question)) or self.by_family.get(family or "") or self.overall


def evaluate_question_only(train_questions: list[str], train_answers: list[list[str]],
                           train_families: list[str | None] | None, questions: list[str],
                           human_answers: list[list[str]], answer_types: list[str | None] | None = None,
                           question_families: list[str | None] | None = None,
                           metric: str = DEFAULT_VQA_METRIC) -> dict:
    baseline = QuestionOnlyBaseline(train_questions, train_answers, train_families)
    families = question_families or [None] * len(questions)
    predictions = [baseline.predict(q, f) for q, f in zip(questions, families, strict=True)]
    return vqa_report(predictions, human_answers, answer_types, question_families, metric)
