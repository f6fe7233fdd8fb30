"""The evaluation metrics on cases worked out by hand (no model involved)."""

from __future__ import annotations

import itertools

import pytest
import torch

from data_pipelines.vqa_normalize import process_digit_article
from vlm.eval.compositional import BigramCaptionModel, evaluate_text_only, two_way_accuracy
from vlm.eval.retrieval_metric import chance_retrieval_metrics, positives_matrix, recall_at_k, retrieval_metrics
from vlm.eval.vqa import QuestionOnlyBaseline
from vlm.eval.vqa_metric import VQA_METRICS, normalize_answer, process_punctuation, vqa_accuracy, vqa_report
from vlm.eval.zeroshot import class_prompts, classification_metrics

# ---- VQA: the official normalisation and accuracy (GT-Vision-Lab/VQA vqaEval.py, 2021 and 2016) ----

@pytest.mark.parametrize("prediction, expected", [
    ("Two", "2"), ("none", "0"), ("the dog", "dog"), ("A Dog", "dog"), ("dont", "don't"),
    ("yes.", "yes"), ("2.5", "2.5"), ("red, white", "red white"), ("1,000", "1000"),
    ("t-shirt", "t shirt"), ("  yes\n", "yes"), ("an apple and a pear", "apple and pear"),
])
def test_answers_are_normalised_like_the_official_evaluator(prediction, expected):
    assert normalize_answer(prediction) == expected


def test_punctuation_touching_a_space_is_deleted_otherwise_it_becomes_a_space():
    assert process_punctuation("red , blue") == "red  blue"
    assert process_punctuation("red/blue") == "red blue"


def test_only_the_first_32_periods_are_stripped_as_re_unicode_is_passed_as_the_count():
    assert process_punctuation("." * 40) == "." * 8
    assert process_punctuation("a." * 33) == "a" * 32 + "a."


def test_digits_in_the_official_patterns_are_ascii_only_as_in_python_2():
    assert process_punctuation("1.\uff15") == "1\uff15"  # fullwidth 5 is no digit: the period goes
    assert process_punctuation("1.5") == "1.5"
    assert process_punctuation("\uff11,\uff10") == "\uff11 \uff10"  # no digit-comma-digit: the comma -> space


def test_lower_case_is_python_2_one_character_to_one():
    assert process_digit_article("\u0130S") == "is"  # Python 3's str.lower() would give "i\u0307s"
    assert process_digit_article("\u039f\u0394\u039f\u03a3") == "\u03bf\u03b4\u03bf\u03c3"  # no final sigma


def test_two_of_ten_humans_score_point_six():
    humans = ["cat", "cat"] + ["dog"] * 8
    assert vqa_accuracy("cat", humans) == pytest.approx(0.6)
    assert vqa_accuracy("dog", humans) == pytest.approx(1.0)
    assert vqa_accuracy("bird", humans) == 0.0


@pytest.mark.parametrize("metric", VQA_METRICS)
@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_leave_one_out_accuracy_for_each_number_of_matching_humans(matches, expected, metric):
    humans = ["2"] * matches + ["3"] * (10 - matches)
    assert vqa_accuracy("2", humans, metric) == pytest.approx(expected)


def test_current_metric_normalises_both_sides_when_the_humans_disagree():
    # The two cases of issue 10: "none" -> "0" on both sides; ten identical "2" are compared as they are.
    assert vqa_accuracy("none", ["none"] * 3 + ["no"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("Two", ["2"] * 10) == 0.0
    assert vqa_accuracy("dog", ["the dog"] * 4 + ["cat"] * 6) == 1.0  # articles go from the humans too
    assert vqa_accuracy("Yes.", ["yes"] * 3 + ["no"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("Dont", ["don't"] * 2 + ["do"] * 8) == pytest.approx(0.6)


def test_current_metric_normalises_neither_side_when_the_humans_agree():
    assert vqa_accuracy("red, white", ["red, white"] * 10) == 1.0
    assert vqa_accuracy("red white", ["red, white"] * 10) == 0.0
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy(" yes\n", ["yes"] * 10) == 1.0  # cleaning (newlines, tabs, ends) applies to all


def test_current_metric_strips_the_human_answers_before_comparing_them():
    # Stripped, these ten agree: no normalisation, the prediction must match exactly.
    assert vqa_accuracy("yes", [" yes"] * 5 + ["yes"] * 5) == 1.0
    assert vqa_accuracy("Yes", [" yes"] * 5 + ["yes"] * 5) == 0.0
    assert vqa_accuracy("yes", [" yes"] * 2 + ["no"] * 8) == pytest.approx(0.6)


def test_the_2016_metric_normalises_only_the_prediction_and_the_humans_punctuation():
    assert vqa_accuracy("none", ["none"] * 3 + ["no"] * 7, "2016") == 0.0
    assert vqa_accuracy("Two", ["2"] * 10, "2016") == 1.0
    assert vqa_accuracy("the dog", ["dog"] * 10, "2016") == 1.0
    assert vqa_accuracy("dont", ["don't"] * 10, "2016") == 1.0
    assert vqa_accuracy("2", ["two"] * 10, "2016") == 0.0
    assert vqa_accuracy("dog", ["the dog"] * 4 + ["cat"] * 6, "2016") == 0.0
    assert vqa_accuracy("red white", ["red, white"] * 4 + ["blue"] * 6, "2016") == 1.0
    assert vqa_accuracy("red white", ["red, white"] * 10, "2016") == 0.0  # all agree: left as they are
    assert vqa_accuracy("yes", [" yes"] * 2 + ["no"] * 8, "2016") == 0.0  # humans are not stripped


def test_an_unknown_vqa_metric_is_refused_by_name():
    with pytest.raises(ValueError, match="2017"):
        vqa_accuracy("yes", ["yes"] * 10, "2017")


def test_vqa_report_averages_in_percent_per_answer_type_and_family():
    report = vqa_report(
        predictions=["yes", "2", "red"],
        human_answers=[["yes"] * 10, ["cat", "cat"] + ["2"] * 2 + ["dog"] * 6, ["blue"] * 10],
        answer_types=["yes/no", "number", "other"],
        question_families=["exist", "count", "exist"],
    )
    assert report["vqa_accuracy"] == pytest.approx(100 * (1 + 0.6 + 0) / 3)
    assert report["per_answer_type"] == pytest.approx({"yes/no": 100.0, "number": 60.0, "other": 0.0})
    assert report["per_question_family"] == pytest.approx({"exist": 50.0, "count": 60.0})


def test_question_only_baseline_answers_the_training_majority_for_the_same_question():
    baseline = QuestionOnlyBaseline(
        questions=["Is there a red circle?", "is there a red circle", "How many squares?"],
        answers=[["yes"] * 10, ["yes"] * 6 + ["no"] * 4, ["two"] * 10],
        families=["exist", "exist", "count"],
    )
    assert baseline.predict("Is there a RED circle?") == "yes"
    assert baseline.predict("How many stars?", family="count") == "2"
    assert baseline.predict("What colour is the star?", family="query_color") == "yes"


# ---- retrieval recall ----

def test_recall_with_several_captions_per_image_from_a_hand_built_matrix():
    # 2 images, 4 captions: captions 0, 1 describe image 0; captions 2, 3 describe image 1.
    text_to_image = [0, 0, 1, 1]
    similarity = torch.tensor([  # (images, texts)
        [0.9, 0.1, 0.8, 0.2],
        [0.5, 0.3, 0.1, 0.7],
    ])
    metrics = retrieval_metrics(similarity, text_to_image, ks=(1, 2))
    # text -> image: caption 0 top image 0 (hit); 1: image 1 first (miss@1); 2: image 0 first (miss@1); 3: hit.
    assert metrics["image_retrieval_recall@1"] == 50.0
    assert metrics["image_retrieval_recall@2"] == 100.0
    # image -> text: image 0 ranks caption 0 first (hit); image 1 ranks caption 3 first (hit).
    assert metrics["text_retrieval_recall@1"] == 100.0


def test_an_image_is_found_if_any_of_its_captions_is_in_the_top_k():
    # 1 query image, 5 captions; its captions are 3 and 4, ranked 3rd and 5th.
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]])
    positives = torch.tensor([[False, False, True, False, True]])
    assert recall_at_k(scores, positives, ks=(1, 2, 3, 5)) == {1: 0.0, 2: 0.0, 3: 100.0, 5: 100.0}


def test_ties_are_broken_by_candidate_index():
    scores = torch.tensor([[1.0, 1.0, 1.0]])
    assert recall_at_k(scores, torch.tensor([[True, False, False]]), ks=(1,)) == {1: 100.0}
    assert recall_at_k(scores, torch.tensor([[False, False, True]]), ks=(1, 2)) == {1: 0.0, 2: 0.0}


def test_chance_recall_matches_the_average_over_all_rankings():
    text_to_image = [0, 0, 1, 2]  # 3 images, image 0 has two captions
    chance = chance_retrieval_metrics(text_to_image, num_images=3, ks=(1, 2))
    positives = positives_matrix(text_to_image, 3)  # (texts, images)
    for direction, pos in (("image_retrieval", positives), ("text_retrieval", positives.T)):
        rankings = list(itertools.permutations(range(pos.shape[1])))
        for k in (1, 2):
            average = sum(
                recall_at_k(-torch.tensor(order, dtype=torch.float).expand(pos.shape), pos, ks=(k,))[k]
                for order in rankings
            ) / len(rankings)
            assert chance[f"{direction}_recall@{k}"] == pytest.approx(average)
    # image -> text at k=1: image 0 has 2 of 4 captions (1/2), the others 1 of 4.
    assert chance["text_retrieval_recall@1"] == pytest.approx(100 * (0.5 + 0.25 + 0.25) / 3)


# ---- zero-shot classification ----

def test_classification_metrics_by_hand():
    logits = torch.tensor([
        [5.0, 4, 3, 2, 1, 0],  # label 0: top-1 hit
        [5.0, 4, 3, 2, 1, 0],  # label 1: top-5 hit only
        [0.0, 1, 2, 3, 4, 5],  # label 0: ranked 6th, a miss at 5
        [0.0, 0, 9, 0, 0, 0],  # label 2: hit
    ])
    metrics = classification_metrics(logits, torch.tensor([0, 1, 0, 2]))
    assert metrics["acc1"] == 50.0
    assert metrics["acc5"] == 75.0
    # per-class recall: class 0: 1/2, class 1: 0/1, class 2: 1/1 -> mean 0.5
    assert metrics["mean_per_class_recall"] == pytest.approx(50.0)


def test_no_top5_with_fewer_than_five_classes():
    assert "acc5" not in classification_metrics(torch.eye(3), torch.arange(3))


def test_prompts_fill_each_template_with_each_class():
    assert class_prompts(["cat", "dog"], ["a {c}.", "the {c}"]) == ["a cat.", "the cat", "a dog.", "the dog"]
    with pytest.raises(ValueError, match="template"):
        class_prompts(["cat"], ["no slot"])


# ---- compositional ----

def test_two_way_accuracy_per_negative_type_ties_count_half():
    result = two_way_accuracy(torch.tensor([0.9, 0.2, 0.5, 0.7]), torch.tensor([0.1, 0.3, 0.5, 0.6]),
                              ["swap", "swap", "relation", "relation"])
    assert result["compositional_accuracy"] == pytest.approx(100 * 2.5 / 4)
    assert result["per_negative_type"] == {"relation": 75.0, "swap": 50.0}


def test_text_only_baseline_prefers_word_pairs_seen_in_training():
    train = ["a red circle", "a red circle", "a blue square"]
    lm = BigramCaptionModel(train)
    assert lm.log_prob("a red circle") > lm.log_prob("a red square")
    result = evaluate_text_only(train, ["a red circle"], ["a blue circle"], ["attribute"])
    assert result["compositional_accuracy"] == 100.0


def test_vqa_report_scores_with_the_chosen_revision_and_says_which():
    assert vqa_report(["Two"], [["2"] * 10]) == {"vqa_accuracy": 0.0, "questions": 1, "vqa_metric": "2021"}
    assert vqa_report(["Two"], [["2"] * 10], metric="2016")["vqa_accuracy"] == 100.0
