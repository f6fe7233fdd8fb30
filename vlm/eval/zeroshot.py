"""Zero-shot classification from class names and prompt templates.

Late fusion (CLIP's recipe): a class is the mean of the normalised text embeddings of its prompts
("a photo of a {c}."), renormalised; an image's logits are its cosine similarity with each class.
Early fusion cannot embed a class alone, so its logit for a class is the ITM log-odds of (image, prompt)
averaged over the templates: N_images x classes x templates fusion passes, which the result counts.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from vlm.eval.pair_scoring import FusionPairScorer, encode_images, encode_texts
from vlm.eval.stream import StreamOptions, distinct_images, stream_images
from vlm.models.dual_encoder import MAX_LOGIT_SCALE
from vlm.tokenizer import get_tokenizer


def class_prompts(classnames: list[str], templates: list[str]) -> list[str]:
    """All prompts, class-major: prompt c * T + t is template t filled with class c."""
    if not classnames or not templates:
        raise ValueError("zero-shot classification needs at least one class name and one template")
    for template in templates:
        if "{c}" not in template and "{}" not in template:
            raise ValueError(f"template {template!r} has no '{{c}}' (or '{{}}') where the class name goes")
    return [t.replace("{c}", c).replace("{}", c) for c in classnames for t in templates]


@torch.no_grad()
def zero_shot_classifier(model: nn.Module, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """(C, D): per class, the renormalised mean of its prompts' normalised text embeddings."""
    ids = get_tokenizer(model)(class_prompts(classnames, templates))
    embeddings = encode_texts(model, ids).view(len(classnames), len(templates), -1)
    return F.normalize(embeddings.mean(dim=1), dim=-1)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """acc1, acc5 (only with >= 5 classes) and mean per-class recall, in percent (CLIP_benchmark's names).

    Mean per-class recall averages over the classes present in `labels`, so a class with no images does
    not count as a zero.
    """
    return metrics_from_top_classes(top_classes(logits, 5), labels, logits.shape[1])


def top_classes(logits: torch.Tensor, k: int) -> torch.Tensor:
    """(N, min(k, C)) class indices, best first, ties to the lower index (a stable sort)."""
    return torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :k].clone()  # not a view of (N, C)


def metrics_from_top_classes(top: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """`classification_metrics` from each image's top 5 classes: all a streaming evaluation keeps."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    correct = top == labels[:, None]
    metrics = {"acc1": 100 * correct[:, :1].any(dim=1).double().mean().item()}
    if num_classes >= 5:
        metrics["acc5"] = 100 * correct[:, :5].any(dim=1).double().mean().item()
    hit = correct[:, 0].double()
    recalls = [hit[labels == c].mean().item() for c in labels.unique().tolist()]
    metrics["mean_per_class_recall"] = 100 * sum(recalls) / len(recalls)
    return metrics


def chance_classification_metrics(num_classes: int) -> dict[str, float]:
    """What a classifier that guesses uniformly at random scores on average (the blind baseline)."""
    metrics = {"acc1": 100 / num_classes}
    if num_classes >= 5:
        metrics["acc5"] = 100 * 5 / num_classes
    metrics["mean_per_class_recall"] = 100 / num_classes
    return metrics


@torch.no_grad()
def zero_shot_logits(model: nn.Module, images: torch.Tensor, classnames: list[str],
                     templates: list[str]) -> tuple[torch.Tensor, int]:
    """(N, C) class logits and the number of fusion passes it took (0 for late fusion)."""
    if model.config.arch == "dual_encoder":
        classifier = zero_shot_classifier(model, classnames, templates)
        return encode_images(model, images) @ classifier.T, 0
    prompts = class_prompts(classnames, templates)
    scorer = FusionPairScorer(model, images, get_tokenizer(model)(prompts))
    scores = scorer.score_all()  # (N, C * T)
    return scores.view(len(images), len(classnames), len(templates)).mean(dim=2), scorer.passes


def class_probabilities(model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """Softmax over classes: of the temperature-scaled cosines for late fusion (CLIP's), of the mean ITM
    log-odds for early fusion."""
    if model.config.arch == "dual_encoder":
        logits = logits * model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
    return logits.float().softmax(dim=1)


def class_logit_fn(model: nn.Module, classnames: list[str], templates: list[str]):
    """A function images -> (B, C) class logits, the text side prepared once; `.passes` counts fusion passes."""
    if model.config.arch == "dual_encoder":
        classifier = zero_shot_classifier(model, classnames, templates)

        def late(images: torch.Tensor) -> torch.Tensor:
            return encode_images(model, images) @ classifier.T

        late.passes = 0
        return late
    ids = get_tokenizer(model)(class_prompts(classnames, templates))

    def early(images: torch.Tensor) -> torch.Tensor:
        scorer = FusionPairScorer(model, images, ids)
        scores = scorer.score_all().view(len(images), len(classnames), len(templates)).mean(dim=2)
        early.passes += scorer.passes
        return scores

    early.passes = 0
    return early


@torch.no_grad()
def stream_zero_shot(model: nn.Module, dataset, classnames: list[str], templates: list[str],
                     options: StreamOptions, top: int = 5, allow_empty: bool = False) -> tuple[dict, list[dict]]:
    """Zero-shot over a streamed image source: the metrics and, per image, its `top` classes and probabilities.

    Only each image's top classes are kept, so memory does not grow with the images beyond a few numbers each.
    """
    start = time.perf_counter()
    groups = distinct_images(dataset)
    stats = groups.skip_stats()
    first, logit_fn = groups.first_records(), class_logit_fn(model, classnames, templates)
    predictions, tops, labels = [], [], []
    for positions, logits in stream_images(groups, options, logit_fn, stats):
        order = top_classes(logits, max(top, 5))
        probabilities = class_probabilities(model, logits).gather(1, order)
        tops.append(order[:, :5])
        for p, classes, probs in zip(positions.tolist(), order.tolist(), probabilities.tolist(), strict=True):
            record = groups.records[first[p]]
            labels.append(record.label)
            predictions.append({"image": str(record.image), "image_id": record.image_id, "label": record.label,
                                "classes": classes[:top], "probabilities": probs[:top]})
    if not predictions and not allow_empty:
        raise ValueError(f"{stats.source}: no usable images to classify")
    result = {}
    if predictions and all(label is not None for label in labels):
        result = metrics_from_top_classes(torch.cat(tops), torch.tensor(labels), len(classnames))
    result.update(images=len(predictions), classes=len(classnames), templates=len(templates),
                  wall_time_s=time.perf_counter() - start, fusion_passes=logit_fn.passes)
    if stats.skipped:
        result["skipped_samples"] = dict(stats.skipped)
    return result, predictions


def evaluate_zero_shot(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, classnames: list[str],
                       templates: list[str]) -> dict:
    start = time.perf_counter()
    logits, passes = zero_shot_logits(model, images, classnames, templates)
    result = classification_metrics(logits, labels)
    result.update(images=len(images), classes=len(classnames), templates=len(templates),
                  wall_time_s=time.perf_counter() - start, fusion_passes=passes)
    return result
