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

from vlm.eval.vqa_metric import DEFAULT_VQA_METRIC, normalize_answer, vqa_report
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
                           question_families: list[str | None] | None = None) -> dict:
    baseline = QuestionOnlyBaseline(train_questions, train_answers, train_families)
    families = question_families or [None] * len(questions)
    predictions = [baseline.predict(q, f) for q, f in zip(questions, families, strict=True)]
    return vqa_report(predictions, human_answers, answer_types, question_families)
