"""Training objectives for both families.

Late fusion: CLIP's contrastive loss (ITC) and SigLIP's sigmoid loss, with features gathered across ranks.
Early fusion: image-text matching (ITM) with hard negatives, masked-token modelling (MLM). Both: VQA.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import nn


def gather_with_grad(features: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's features; gradients flow back to the rank that produced them.

    With DDP's gradient averaging this gives exactly the single-process gradient of the global batch
    (OpenCLIP's `gather_with_grad=True`).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features
    return torch.cat(dist_fn.all_gather(features), dim=0)


class ClipLoss(nn.Module):
    """Symmetric InfoNCE over all pairs of the global batch: (CE(img->txt) + CE(txt->img)) / 2."""

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor, logit_bias: torch.Tensor | None = None) -> torch.Tensor:
        all_images, all_texts = gather_with_grad(image_features), gather_with_grad(text_features)
        logits = self.get_logits(all_images, all_texts, logit_scale)
        labels = self.get_ground_truth(logits.shape[0], logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    @staticmethod
    def get_logits(image_features: torch.Tensor, text_features: torch.Tensor,
                   logit_scale: torch.Tensor) -> torch.Tensor:
        return logit_scale * image_features @ text_features.T  # (N_img, N_txt)

    @staticmethod
    def get_ground_truth(n: int, device: torch.device) -> torch.Tensor:
        return torch.arange(n, device=device)


def negclip_loss(image_features: torch.Tensor, text_features: torch.Tensor, negative_features: torch.Tensor,
                 negative_valid: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """NegCLIP's loss: image->text softmax over the batch's captions plus every hard negative caption (those
    with `negative_valid` False are left out); text->image over the captions only, as in CLIP.

    `negative_features` (B*K, D) are the normalised features of the swapped captions, K per caption.
    Gathered across ranks like ClipLoss, so the global batch's negatives are in every image's softmax.
    (Yuksekgonul et al. 2023; their code appends the hard captions to the texts and cuts the text->image
    logits to the first B rows.)
    """
    all_images, all_texts = gather_with_grad(image_features), gather_with_grad(text_features)
    all_negatives = gather_with_grad(negative_features)
    valid = gather_with_grad(negative_valid.reshape(-1).float()).bool()
    captions = ClipLoss.get_logits(all_images, all_texts, logit_scale)  # (N, N)
    negatives = ClipLoss.get_logits(all_images, all_negatives, logit_scale).masked_fill(~valid, float("-inf"))
    labels = ClipLoss.get_ground_truth(captions.shape[0], captions.device)
    image_to_text = F.cross_entropy(torch.cat([captions, negatives], dim=1), labels)
    return (image_to_text + F.cross_entropy(captions.T, labels)) / 2


class SigLipLoss(nn.Module):
    """SigLIP: an independent binary decision per pair, so no softmax over the batch is needed.

    Each rank scores its own images against every rank's texts; DDP's average over ranks then equals
    the loss of the global batch.
    """

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor, logit_bias: torch.Tensor | None = None) -> torch.Tensor:
        if logit_bias is None:
            raise ValueError("the SigLIP loss needs a logit_bias: set init_logit_bias in the model config")
        all_texts = gather_with_grad(text_features)
        logits = logit_scale * image_features @ all_texts.T + logit_bias  # (B_local, B_global)
        offset = dist.get_rank() * image_features.shape[0] if dist.is_initialized() else 0
        labels = -torch.ones_like(logits)
        labels[torch.arange(logits.shape[0]), offset + torch.arange(logits.shape[0])] = 1.0
        return -F.logsigmoid(labels * logits).sum() / image_features.shape[0]


def sample_hard_negatives(similarity: torch.Tensor, same: torch.Tensor,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """For each row, one column index drawn with probability softmax(similarity), never a positive.

    `same` marks pairs that must not be drawn (the diagonal and duplicates of it). ALBEF's recipe:
    negatives that the model finds similar teach it more than random ones.
    """
    weights = similarity.float().masked_fill(same, float("-inf")).softmax(dim=-1)
    empty = ~torch.isfinite(weights).all(dim=-1) | (weights.sum(dim=-1) == 0)
    weights[empty] = (~same[empty]).float() + 1e-12  # a row with no valid negative: fall back to uniform
    # drawn on the CPU, where the step's generator lives (vlm/train/tasks.py), also when training on a GPU
    return torch.multinomial(weights.cpu(), 1, generator=generator).squeeze(1).to(similarity.device)


def itm_loss(model: nn.Module, images: torch.Tensor, ids: torch.Tensor, text_mask: torch.Tensor,
             similarity: torch.Tensor, same: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ITM over B positives, B (image, hard-negative text) and B (hard-negative image, text) pairs.

    `similarity[i, j]` says how alike image i and text j look (from any cheap scorer); `same[i, j]`
    marks pairs that are true matches. Returns (loss, accuracy) of the 2-way match classifier.
    """
    B = images.shape[0]
    if same is None:
        same = torch.eye(B, dtype=torch.bool, device=images.device)
    neg_text = sample_hard_negatives(similarity, same, generator)  # a wrong text for each image
    neg_image = sample_hard_negatives(similarity.T, same.T, generator)  # a wrong image for each text
    all_images = torch.cat([images, images, images[neg_image]])
    all_ids = torch.cat([ids, ids[neg_text], ids])
    all_masks = torch.cat([text_mask, text_mask[neg_text], text_mask])
    labels = torch.cat([torch.ones(B), torch.zeros(2 * B)]).long().to(images.device)
    logits = model.itm_logits(all_images, all_ids, all_masks)
    accuracy = (logits.argmax(-1) == labels).float().mean()
    return F.cross_entropy(logits, labels), accuracy


def itm_negative_pairs(model: nn.Module, images: torch.Tensor, negative_ids: torch.Tensor,
                       negative_mask: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """ITM on (image, its own hard-negative caption) pairs, all labelled "no match".

    `negative_ids` / `negative_mask` (B, K, T), `valid` (B, K). Returns the summed cross-entropy, the number
    classified correctly and the number of pairs, so the caller can pool them with `itm_loss`'s pairs.
    """
    B, K, T = negative_ids.shape
    keep = valid.reshape(-1)
    owners = torch.arange(B, device=images.device).repeat_interleave(K)[keep]
    if len(owners) == 0:
        return images.sum() * 0.0, torch.zeros((), device=images.device), 0
    logits = model.itm_logits(images[owners], negative_ids.reshape(B * K, T)[keep],
                              negative_mask.reshape(B * K, T)[keep])
    labels = torch.zeros(len(owners), dtype=torch.long, device=images.device)
    return F.cross_entropy(logits, labels, reduction="sum"), (logits.argmax(-1) == 0).float().sum(), len(owners)


def mask_tokens(ids: torch.Tensor, text_mask: torch.Tensor, mask_token_id: int, vocab_size: int,
                probability: float = 0.15, special_ids: tuple[int, ...] = (),
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: pick `probability` of real tokens; 80% -> [MASK], 10% -> random, 10% kept.

    Returns (masked ids, labels) with labels -100 where no prediction is asked.
    """
    def rand(shape):
        return torch.rand(shape, generator=generator, device="cpu").to(ids.device)

    candidates = text_mask.bool().clone()
    for special in special_ids:
        candidates &= ids != special
    chosen = (rand(ids.shape) < probability) & candidates
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    roll = rand(ids.shape)
    masked = ids.clone()
    masked[chosen & (roll < 0.8)] = mask_token_id
    random_tokens = (rand(ids.shape) * vocab_size).long().clamp(max=vocab_size - 1).to(ids.device)
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    masked[swap] = random_tokens[swap]
    return masked, labels


def masked_positions(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The hidden states (N, W) and labels (N,) of the N positions that ask for a prediction (label != -100).

    The MLM head's output spans the whole vocabulary (49,408 tokens for CLIP's BPE); running it on the ~15%
    of text positions that were masked rather than on every position gives the same loss for a fraction of
    the work (on fusion-small, most of a training step's time went there).
    """
    picked = labels != -100
    return hidden[picked], labels[picked]


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the masked positions only; zero (with a gradient) if none was masked.

    `logits` (..., V) and `labels` (...): every position with -100 where no prediction is asked, or only
    the masked positions, as `masked_positions` picks them.
    """
    logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    if labels.numel() == 0:
        return logits.sum() * 0.0
    # the mean over the asked positions, written out so that none asked gives 0, not 0/0, without a host sync
    total = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
    return total / (labels != -100).sum().clamp(min=1)


def vqa_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE with logits against soft scores, summed over answers and averaged over questions (ViLT)."""
    return F.binary_cross_entropy_with_logits(logits, targets) * targets.shape[1]


# Distillation (vlm/train/distill.py): what a small student learns from a teacher besides the pairs themselves.

def similarity_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of the image->text softmax of each row and the text->image softmax of each column,
    averaged: MobileCLIP's affinity distillation. Logits (N_img, N_txt) are already scaled by each side's own
    temperature; zero when the student's matrix equals the teacher's."""
    def kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return F.kl_div(student.log_softmax(-1), teacher.log_softmax(-1), log_target=True, reduction="batchmean")

    return (kl(student_logits, teacher_logits) + kl(student_logits.T, teacher_logits.T)) / 2


def feature_mse(student_features: torch.Tensor, teacher_features: torch.Tensor,
                projection: nn.Module | None = None) -> torch.Tensor:
    """CLIP-KD's feature distillation: the squared distance between the student's embedding, mapped to the
    teacher's width by a learned `projection` where the widths differ, and the teacher's; summed over the
    width, averaged over the batch."""
    if projection is not None:
        student_features = projection(student_features)
    return (student_features - teacher_features).pow(2).sum(-1).mean()


def ranking_kl(student_scores: torch.Tensor, teacher_scores: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Listwise ranking distillation (CPRD): per query, KL(teacher || student) of the softmax over the same k
    candidates, (Q, k) each. A cross encoder's scores are not on a dual encoder's scale, so only the ranking
    (the teacher's softmax at `temperature`) transfers, never the raw scores."""
    teacher = (teacher_scores / temperature).log_softmax(-1)
    return F.kl_div(student_scores.log_softmax(-1), teacher, log_target=True, reduction="batchmean")
