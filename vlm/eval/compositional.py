"""Compositional 2-way choice: does the model prefer the true caption to a hard negative of the same words?

Late fusion scores by cosine similarity, early fusion by its ITM log-odds. A tie counts as half a hit, so a
scorer that cannot tell the two apart lands exactly on chance (50%) instead of below it.

The blind baseline scores the captions without the image: a bigram language model of the training
captions. If it beats chance, the negatives can be spotted from the text alone (SugarCrepe's warning about
ARO-style benchmarks), and a model's score above chance is not all visual.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable

import torch
from torch import nn

from vlm.eval.pair_scoring import FusionPairScorer, encode_images, encode_texts
from vlm.tokenizer import get_tokenizer


def two_way_accuracy(true_scores: torch.Tensor, negative_scores: torch.Tensor,
                     negative_types: list[str]) -> dict:
    """Percent of items where the true caption scores higher (ties: half), overall and per negative type."""
    true_scores, negative_scores = torch.as_tensor(true_scores), torch.as_tensor(negative_scores)
    if not (len(true_scores) == len(negative_scores) == len(negative_types)) or not negative_types:
        raise ValueError("compositional scoring needs one true score, one negative score and one type per item")
    hits = (true_scores > negative_scores).double() + 0.5 * (true_scores == negative_scores).double()
    by_type: dict[str, list[float]] = defaultdict(list)
    for hit, kind in zip(hits.tolist(), negative_types, strict=True):
        by_type[kind].append(hit)
    return {
        "compositional_accuracy": 100 * hits.mean().item(),
        "per_negative_type": {k: 100 * sum(v) / len(v) for k, v in sorted(by_type.items())},
        "items": len(negative_types),
    }


@torch.no_grad()
def caption_scores(model: nn.Module, images: torch.Tensor, true_captions: list[str],
                   negative_captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Scores of (image i, true caption i) and (image i, negative i), and the fusion passes spent."""
    n = len(true_captions)
    ids = get_tokenizer(model)(list(true_captions) + list(negative_captions))
    if model.config.arch == "dual_encoder":
        image_features = encode_images(model, images)
        text_features = encode_texts(model, ids)
        true = (image_features * text_features[:n]).sum(-1)
        negative = (image_features * text_features[n:]).sum(-1)
        return true, negative, 0
    scorer = FusionPairScorer(model, images, ids)
    items = torch.arange(n)
    true = scorer.score_pairs(items, items)
    negative = scorer.score_pairs(items, items + n)
    return true, negative, scorer.passes


def evaluate_compositional(model: nn.Module, images: torch.Tensor, true_captions: list[str],
                           negative_captions: list[str], negative_types: list[str]) -> dict:
    start = time.perf_counter()
    true, negative, passes = caption_scores(model, images, true_captions, negative_captions)
    result = two_way_accuracy(true, negative, negative_types)
    result.update(wall_time_s=time.perf_counter() - start, fusion_passes=passes)
    return result


def _words(text: str) -> list[str]:
    return ["<s>", *re.findall(r"[a-z0-9']+", text.lower()), "</s>"]


class BigramCaptionModel:
    """Add-one smoothed word bigram model of captions: the text-only scorer of the blind baseline."""

    def __init__(self, captions: Iterable[str]):
        self.unigrams: Counter[str] = Counter()
        self.bigrams: Counter[tuple[str, str]] = Counter()
        for caption in captions:
            words = _words(caption)
            self.unigrams.update(words[:-1])
            self.bigrams.update(itertools.pairwise(words))
        if not self.unigrams:
            raise ValueError("the text-only baseline needs training captions")
        self.vocab_size = len(set(self.unigrams) | {"</s>"}) + 1  # + an unknown word

    def log_prob(self, caption: str) -> float:
        words = _words(caption)
        return sum(math.log((self.bigrams[a, b] + 1) / (self.unigrams[a] + self.vocab_size))
                   for a, b in itertools.pairwise(words))


def evaluate_text_only(train_captions: Iterable[str], true_captions: list[str], negative_captions: list[str],
                       negative_types: list[str]) -> dict:
    """The blind baseline: prefer the caption the training captions make more likely, image unseen."""
    lm = BigramCaptionModel(train_captions)
    true = torch.tensor([lm.log_prob(c) for c in true_captions], dtype=torch.float64)
    negative = torch.tensor([lm.log_prob(c) for c in negative_captions], dtype=torch.float64)
    return two_way_accuracy(true, negative, negative_types)
