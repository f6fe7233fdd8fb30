"""VQAv2 accuracy with the official answer normalisation.

A port of the logic of the official evaluator (GT-Vision-Lab/VQA, `vqaEval.py`: `processPunctuation`,
`processDigitArticle`, the leave-one-out accuracy), written here so scores are comparable with published
VQAv2 numbers. Its quirks are kept on purpose, because they are what the published numbers were made with:
- the prediction gets both steps; the human answers only get the punctuation step, and only when the ten
  answers disagree (the VQAv2 annotation files were normalised when they were collected);
- the normalisation itself (punctuation, number words, articles, contractions) is in
  data_pipelines/vqa_normalize.py, shared with the training targets.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from data_pipelines.vqa_normalize import normalize_answer, process_punctuation


def vqa_accuracy(prediction: str, human_answers: list[str]) -> float:
    """min(#other humans who gave the prediction / 3, 1), averaged over the leave-one-out subsets.

    With 10 answers there are 10 subsets of 9; an answer 2 humans gave scores 2/3 in the 8 subsets that keep
    both and 1/3 in the 2 that drop one: (8 * 2/3 + 2 * 1/3) / 10 = 0.6.
    """
    if not human_answers:
        raise ValueError("a VQA question needs at least one human answer")
    predicted = normalize_answer(prediction)
    answers = list(human_answers)
    if len(set(answers)) > 1:
        answers = [process_punctuation(a) for a in answers]
    matches = sum(a == predicted for a in answers)
    subset_scores = [min(1.0, (matches - (a == predicted)) / 3) for a in answers]
    return sum(subset_scores) / len(subset_scores)


def vqa_report(predictions: Iterable[str], human_answers: Iterable[list[str]],
               answer_types: Iterable[str | None] | None = None,
               question_families: Iterable[str | None] | None = None) -> dict:
    """Accuracy in percent overall, per answer type and per question family (the official aggregation)."""
    scores = [vqa_accuracy(p, a) for p, a in zip(predictions, human_answers, strict=True)]
    if not scores:
        raise ValueError("no VQA questions to score")
    report = {"vqa_accuracy": 100 * sum(scores) / len(scores), "questions": len(scores)}
    for key, groups in (("per_answer_type", answer_types), ("per_question_family", question_families)):
        if groups is None:
            continue
        by_group: dict[str, list[float]] = defaultdict(list)
        for score, group in zip(scores, groups, strict=True):
            by_group[group or "unknown"].append(score)
        report[key] = {g: 100 * sum(s) / len(s) for g, s in sorted(by_group.items())}
    return report
