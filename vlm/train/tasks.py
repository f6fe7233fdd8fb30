"""One module per objective: model + loss, so DDP wraps a single `forward(batch) -> (loss, metrics)`.

DDP only synchronises what runs inside `forward`; wrapping model and loss together keeps every head
(ITM, MLM, VQA) inside it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlm.losses import (
    ClipLoss,
    SigLipLoss,
    itm_loss,
    itm_negative_pairs,
    mask_tokens,
    masked_positions,
    mlm_loss,
    negclip_loss,
    vqa_loss,
)
from vlm.tokenizer import EOT_ID, PAD_ID, SOT_ID, VOCAB_SIZE, get_tokenizer


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """Randomness of one step (negatives, masks) from (seed, step, rank) alone, so resume needs no RNG state."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 997 + rank)


class ContrastiveTask(nn.Module):
    """Late fusion: CLIP's softmax loss or SigLIP's sigmoid loss over the (global) batch."""

    def __init__(self, model: nn.Module, loss: str = "clip"):
        super().__init__()
        self.model = model
        self.loss = SigLipLoss() if loss == "siglip" else ClipLoss()

    def forward(self, batch: dict, step: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.model(batch["images"], batch["text"])
        negatives = None
        if "hard_negative_text" in batch:  # with hard negatives in the batch (`hard_negatives.enabled`): NegCLIP
            if isinstance(self.loss, SigLipLoss):
                raise ValueError("hard negatives are for the clip loss; siglip takes none")
            ids = batch["hard_negative_text"]
            negatives = self.model.encode_text(ids.reshape(-1, ids.shape[-1]))  # (B*K, D)
        with float32_loss(out["image_features"].device):
            out = {k: v.float() if v is not None else None for k, v in out.items()}
            if negatives is not None:
                loss = negclip_loss(out["image_features"], out["text_features"], negatives.float(),
                                    batch["hard_negative_valid"], out["logit_scale"])
            else:
                loss = self.loss(out["image_features"], out["text_features"], out["logit_scale"], out["logit_bias"])
        return loss, {"logit_scale": out["logit_scale"].detach()}


def float32_loss(device: torch.device) -> torch.autocast:
    """Autocast off: similarity logits and the loss in float32 under bf16 training (as OpenCLIP's amp_bf16)."""
    return torch.autocast(device.type, enabled=False)


def caption_similarity(ids: torch.Tensor, mask: torch.Tensor, special_ids: tuple[int, ...] = (PAD_ID, SOT_ID, EOT_ID),
                       vocab_size: int = VOCAB_SIZE + 1) -> torch.Tensor:
    """Cosine similarity of captions as bags of tokens, (B, B).

    An early-fusion model has no cheap embedding to mine negatives with; captions that share most of
    their words ("a red circle left of a blue square" / "a blue circle left of a red square") make the
    hard negatives that teach attribute binding and word order.
    """
    bags = torch.zeros(ids.shape[0], vocab_size, device=ids.device)
    bags.scatter_add_(1, ids, mask.float())
    bags[:, list(special_ids)] = 0
    bags = F.normalize(bags, dim=-1)
    return bags @ bags.T


def same_pairs(image_ids: list[str], captions: list[str], device: torch.device) -> torch.Tensor:
    """True where item j's image or caption would also be a true match for item i."""
    n = len(image_ids)
    return torch.tensor([[image_ids[i] == image_ids[j] or captions[i] == captions[j] for j in range(n)]
                         for i in range(n)], dtype=torch.bool, device=device)


class FusionTask(nn.Module):
    """Early fusion: ITM with hard negatives + masked-token modelling (ViLT's pre-training)."""

    def __init__(self, model: nn.Module, mlm_weight: float = 1.0, mlm_probability: float = 0.15,
                 seed: int = 0, rank: int = 0, negative_temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.negative_temperature = negative_temperature
        self.mlm_weight, self.mlm_probability = mlm_weight, mlm_probability
        self.seed, self.rank = seed, rank
        self.tokenizer = get_tokenizer(model)  # its special, [MASK] and real-token ids

    def forward(self, batch: dict, step: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, ids, mask = batch["images"], batch["text"], batch["text_mask"]
        generator = step_generator(self.seed, step, self.rank)
        tok = self.tokenizer
        similarity = caption_similarity(ids, mask, (tok.pad_id, *tok.special_ids),
                                        self.model.config.vocab_size) / self.negative_temperature
        same = same_pairs(batch["image_ids"], batch["captions"], ids.device)
        loss_itm, itm_accuracy = itm_loss(self.model, images, ids, mask, similarity, same, generator)
        if "hard_negative_text" in batch:
            loss_itm, itm_accuracy = self.with_hard_negatives(batch, loss_itm, itm_accuracy)
        metrics = {"itm_loss": loss_itm.detach(), "itm_accuracy": 100 * itm_accuracy.detach()}  # percent, as in val/
        if self.mlm_weight == 0:
            return loss_itm, metrics
        masked, labels = mask_tokens(ids, mask, tok.mask_id, tok.vocab_size, self.mlm_probability,
                                     special_ids=tok.special_ids, generator=generator)
        hidden, targets = masked_positions(self.model(images, masked, mask).text_hidden, labels)
        loss_mlm = mlm_loss(self.model.mlm_logits(hidden), targets)  # the head over masked positions only
        metrics["mlm_loss"] = loss_mlm.detach()
        return loss_itm + self.mlm_weight * loss_mlm, metrics

    def with_hard_negatives(self, batch: dict, loss_itm: torch.Tensor,
                            itm_accuracy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ITM loss and accuracy pooled over `itm_loss`'s 3B pairs and the (image, swapped caption) pairs."""
        images = batch["images"]
        total, hits, n = itm_negative_pairs(self.model, images, batch["hard_negative_text"],
                                            batch["hard_negative_mask"], batch["hard_negative_valid"])
        base = 3 * images.shape[0]
        return (loss_itm * base + total) / (base + n), (itm_accuracy * base + hits) / (base + n)


class VQATask(nn.Module):
    """Either family: soft-score BCE of the VQA head over the answer vocabulary."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict, step: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.model.vqa_logits(batch["images"], batch["questions"], batch["question_mask"])
        targets = batch["answer_targets"]
        loss = vqa_loss(logits, targets)
        # VQA score of the top answer against the soft targets: a cheap running accuracy.
        score = targets.gather(1, logits.argmax(-1, keepdim=True)).mean()
        return loss, {"vqa_score": score.detach()}


def build_task(model: nn.Module, objective: str, config, rank: int = 0) -> nn.Module:
    arch = model.config.arch
    if objective == "distill":
        from vlm.train.distill import build_distill_task  # loads the teacher

        return build_distill_task(model, config.distill)
    if objective in ("clip", "siglip"):
        if arch != "dual_encoder":
            raise ValueError(f"objective {objective!r} trains late-fusion models; {model.config.name} is {arch}")
        return ContrastiveTask(model, objective)
    if objective == "fusion":
        if arch != "early_fusion":
            raise ValueError(f"objective 'fusion' trains early-fusion models; {model.config.name} is {arch}")
        return FusionTask(model, config.mlm_weight, config.mlm_probability, config.seed, rank,
                          config.itm_negative_temperature)
    return VQATask(model)
