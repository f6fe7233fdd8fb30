"""VQAv2 accuracy as the official evaluator computes it (GT-Vision-Lab/VQA, `vqaEval.py`).

Two revisions of that code give different numbers, so both are here (`metric=`):
- "2021" (the default): the current code, commit a013f0043c1e2cdc995922dfe257f7149aa9af06 ("Fixed processing
  answers bug", 2021-03-11). Every answer is cleaned (newlines, tabs, ends stripped); when the human answers
  are not all identical, both the humans and the prediction get the full normalisation (punctuation, then
  number words, articles, contractions); when they are all identical, neither is normalised at all.
- "2016": the revision before it, which many published numbers were made with. The prediction is cleaned and
  fully normalised; the human answers are not cleaned, and get only the punctuation step, only when they
  disagree.
Then both count, for each of the ten leave-one-out subsets of the humans, min(#matching / 3, 1), and average.
The normalisation steps and their quirks are in data_pipelines/vqa_normalize.py, shared with training targets.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from data_pipelines.vqa_normalize import clean_answer, normalize_answer, process_punctuation

VQA_METRICS = ("2021", "2016")
DEFAULT_VQA_METRIC = "2021"


def _compared_answers(prediction: str, human_answers: list[str], metric: str) -> tuple[str, list[str]]:
    """The prediction and the human answers in the form the chosen revision compares them."""
    if metric == "2021":
        humans = [clean_answer(a) for a in human_answers]
        predicted = clean_answer(prediction)
        if len(set(humans)) > 1:
            humans = [normalize_answer(a) for a in humans]
            predicted = normalize_answer(predicted)
        return predicted, humans
    if metric == "2016":
        humans = list(human_answers)
        if len(set(humans)) > 1:
            humans = [process_punctuation(a) for a in humans]
        return normalize_answer(prediction), humans
    raise ValueError(f"unknown VQA metric {metric!r}; one of {', '.join(VQA_METRICS)}")


def vqa_accuracy(prediction: str, human_answers: list[str], metric: str = DEFAULT_VQA_METRIC) -> float:
    """min(#other humans who gave the prediction / 3, 1), averaged over the leave-one-out subsets.

    With 10 answers there are 10 subsets of 9; an answer 2 humans gave scores 2/3 in the 8 subsets that keep
    both and 1/3 in the 2 that drop one: (8 * 2/3 + 2 * 1/3) / 10 = 0.6. (The official code leaves out one
    answer dict at a time; VQAv2's dicts differ by `answer_id`, so that is one answer by position.)
    """
    if not human_answers:
        raise ValueError("a VQA question needs at least one human answer")
    predicted, answers = _compared_answers(prediction, human_answers, metric)
    matches = sum(a == predicted for a in answers)
    subset_scores = [min(1.0, (matches - (a == predicted)) / 3) for a in answers]
    return sum(subset_scores) / len(subset_scores)


def vqa_report(predictions: Iterable[str], human_answers: Iterable[list[str]],
               answer_types: Iterable[str | None] | None = None,
               question_families: Iterable[str | None] | None = None, metric: str = DEFAULT_VQA_METRIC) -> dict:
    """Accuracy in percent overall, per answer type and per question family (the official aggregation)."""
    scores = [vqa_accuracy(p, a, metric) for p, a in zip(predictions, human_answers, strict=True)]
    if not scores:
        raise ValueError("no VQA questions to score")
    report = {"vqa_accuracy": 100 * sum(scores) / len(scores), "questions": len(scores), "vqa_metric": metric}
    for key, groups in (("per_answer_type", answer_types), ("per_question_family", question_families)):
        if groups is None:
            continue
        by_group: dict[str, list[float]] = defaultdict(list)
        for score, group in zip(scores, groups, strict=True):
            by_group[group or "unknown"].append(score)
        report[key] = {g: 100 * sum(s) / len(s) for g, s in sorted(by_group.items())}
    return report
