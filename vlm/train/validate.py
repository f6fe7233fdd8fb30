"""Validation during training: the headline number of each objective, on a fixed slice of the val split."""

from __future__ import annotations

import torch
from torch import nn

from vlm.eval.retrieval_metric import retrieval_metrics
from vlm.eval.vqa_metric import vqa_report
from vlm.train.data import to_device


@torch.no_grad()
def validate(model: nn.Module, objective: str, batches: list[dict], device: torch.device) -> dict[str, float]:
    was_training = model.training
    model.eval()
    try:
        if objective in ("clip", "siglip", "distill"):
            return validate_retrieval(model, batches, device)
        if objective == "fusion":
            return validate_itm(model, batches, device)
        return validate_vqa(model, batches, device)
    finally:
        model.train(was_training)


def validate_retrieval(model: nn.Module, batches: list[dict], device: torch.device) -> dict[str, float]:
    """Text->image and image->text recall over the val slice (each image once, all its captions)."""
    image_index: dict[str, int] = {}
    images, texts, text_to_image = [], [], []
    for batch in batches:
        batch = to_device(batch, device)
        texts.append(model.encode_text(batch["text"]))
        for i, image_id in enumerate(batch["image_ids"]):
            if image_id not in image_index:
                image_index[image_id] = len(image_index)
                images.append(model.encode_image(batch["images"][i : i + 1]))
            text_to_image.append(image_index[image_id])
    similarity = torch.cat(images) @ torch.cat(texts).T  # (N_images, N_texts)
    metrics = retrieval_metrics(similarity.cpu(), text_to_image, ks=(1, 5))
    return {"image_retrieval_recall@1": metrics["image_retrieval_recall@1"],
            "image_retrieval_recall@5": metrics["image_retrieval_recall@5"],
            "text_retrieval_recall@1": metrics["text_retrieval_recall@1"]}


def validate_itm(model: nn.Module, batches: list[dict], device: torch.device) -> dict[str, float]:
    """ITM accuracy on every true pair and one mismatched pair per image (the next caption of the batch)."""
    correct = total = 0
    for batch in batches:
        batch = to_device(batch, device)
        ids, mask = batch["text"], batch["text_mask"]
        shifted = torch.roll(torch.arange(len(ids)), 1)
        image_ids = batch["image_ids"]
        mismatched = torch.tensor([image_ids[i] != image_ids[j] for i, j in enumerate(shifted.tolist())])
        positive = model.score(batch["images"], ids, mask) > 0
        negative = model.score(batch["images"], ids[shifted], mask[shifted]) <= 0
        correct += int(positive.sum()) + int(negative[mismatched.to(negative.device)].sum())
        total += len(ids) + int(mismatched.sum())
    return {"itm_accuracy": 100 * correct / max(total, 1)}  # percent, like every other accuracy


def validate_vqa(model: nn.Module, batches: list[dict], device: torch.device) -> dict[str, float]:
    answers = model.config.vqa_answers
    predictions, humans = [], []
    for batch in batches:
        batch = to_device(batch, device)
        logits = model.vqa_logits(batch["images"], batch["questions"], batch["question_mask"])
        predictions += [answers[i] for i in logits.argmax(-1).tolist()]
        humans += batch["answers"]
    return {"vqa_accuracy": vqa_report(predictions, humans)["vqa_accuracy"]}
