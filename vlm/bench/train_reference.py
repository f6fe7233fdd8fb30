"""The reference training steps `vlm bench train` times the trainer against.

`OpenClipStep`: OpenCLIP's step as open_clip_train runs it (`train_one_epoch`, `main.py`'s optimizer), on the
model open_clip builds from vlm's export of the same weights: texts tokenized by open_clip and padded to the
context, its `ClipLoss`, torch's AdamW in its default implementation with open_clip's two parameter groups,
gradient clipping at the recipe's norm (open_clip's `--grad-clip-norm`), the logit scale clamped after the step.

`TodaysFusionStep`: vlm's early-fusion step as it was before issue 15, written out from the model's public
methods: texts padded to the full context, ITM over B positive + 2B hard-negative pairs, a second pass over the
masked texts with the MLM head at every position and cross-entropy ignoring -100, torch's default AdamW (a loop
of element-wise ops per parameter on CPU) and per-parameter gradient clipping. Its negatives and masks are drawn
exactly as `FusionTask` draws them (same generator, same order, masks over the batch's own length), so on the
same weights and batch its loss is the trainer's loss.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vlm.losses import mask_tokens, sample_hard_negatives
from vlm.tokenizer import get_tokenizer
from vlm.train.config import TrainConfig
from vlm.train.optim import parameter_groups
from vlm.train.tasks import caption_similarity, same_pairs, step_generator


class OpenClipStep:
    """One OpenCLIP training step per call on a fixed batch; `loss(batch)` without a step."""

    def __init__(self, model: nn.Module, config: TrainConfig, folder: Path):
        import open_clip

        from vlm.models.openclip_compat import export_openclip

        export_openclip(model, folder)
        self.model = open_clip.create_model(f"local-dir:{folder}", output_dict=True).train()
        self.loss_fn = open_clip.loss.ClipLoss()
        self.context, self.grad_clip = model.config.text.context_length, config.grad_clip
        exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
             {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": config.weight_decay}],
            lr=config.lr, betas=tuple(config.betas), eps=config.eps)

    def inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        import open_clip

        return batch["images"], open_clip.tokenize(batch["captions"], context_length=self.context)

    def loss(self, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(**self.model(images, texts))

    def step(self, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad()
        loss = self.loss(images, texts)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))
        return loss.detach()


class TodaysFusionStep:
    """vlm's fusion step before issue 15 (ITM + MLM at every position, full context), one per call."""

    def __init__(self, model: nn.Module, config: TrainConfig):
        if model.itm_head is None or model.itm_head.out_features != 2:
            raise ValueError(f"{model.config.name}: today's fusion step trains a 2-way ITM head (match_head: itm)")
        self.model, self.config = model, config
        self.tokenizer = get_tokenizer(model)
        self.optimizer = torch.optim.AdamW(parameter_groups(model, config), lr=config.lr,
                                           betas=tuple(config.betas), eps=config.eps)
        self.step_count = 0

    def fuse(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
        """The joint stack over every text column of the full context (`cut_text=False`: vlm cuts padding columns
        since issue 15)."""
        return self.model.fuse(self.model.embed_image(images), ids, mask, cut_text=False)

    def pad(self, x: torch.Tensor, value: int) -> torch.Tensor:
        return F.pad(x, (0, self.model.config.context_length - x.shape[1]), value=value)

    def loss(self, batch: dict, step: int) -> torch.Tensor:
        images, ids, mask = batch["images"], batch["text"], batch["text_mask"]
        tok, config, B = self.tokenizer, self.config, len(batch["images"])
        generator = step_generator(config.seed, step, 0)
        similarity = caption_similarity(ids, mask, (tok.pad_id, *tok.special_ids),
                                        self.model.config.vocab_size) / config.itm_negative_temperature
        same = same_pairs(batch["image_ids"], batch["captions"], ids.device)
        neg_text = sample_hard_negatives(similarity, same, generator)
        neg_image = sample_hard_negatives(similarity.T, same.T, generator)
        full_ids, full_mask = self.pad(ids, tok.pad_id), self.pad(mask, False)
        pooled = self.fuse(torch.cat([images, images, images[neg_image]]),
                           torch.cat([full_ids, full_ids[neg_text], full_ids]),
                           torch.cat([full_mask, full_mask[neg_text], full_mask])).pooled
        labels = torch.cat([torch.ones(B), torch.zeros(2 * B)]).long()
        loss = F.cross_entropy(self.model.itm_head(pooled), labels)
        if config.mlm_weight == 0:
            return loss
        masked, targets = mask_tokens(ids, mask, tok.mask_id, tok.vocab_size, config.mlm_probability,
                                      special_ids=tok.special_ids, generator=generator)
        logits = self.model.mlm_logits(self.fuse(images, self.pad(masked, tok.pad_id), full_mask).text_hidden)
        mlm = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), self.pad(targets, -100).reshape(-1),
                              ignore_index=-100)
        return loss + config.mlm_weight * mlm

    def step(self, batch: dict) -> torch.Tensor:
        self.model.train()
        loss = self.loss(batch, self.step_count)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        return loss.detach()
