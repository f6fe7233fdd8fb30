"""Late fusion (CLIP): images and texts are encoded once, apart, and compared by a dot product."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlm.models.checkpoint_file import save_model
from vlm.models.config import DualEncoderConfig
from vlm.models.heads import LateFusionVQAHead
from vlm.models.towers import ImageTower, TextTower

MAX_LOGIT_SCALE = 100.0  # CLIP clamps the temperature so training cannot blow up the logits


class DualEncoder(nn.Module):
    def __init__(self, config: DualEncoderConfig):
        super().__init__()
        self.config = config
        self.image = ImageTower(config.image, config.embed_dim, config.quick_gelu)
        self.text = TextTower(config.text, config.embed_dim, config.quick_gelu)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        bias = config.init_logit_bias
        self.logit_bias = nn.Parameter(torch.tensor(float(bias))) if bias is not None else None
        answers = len(config.vqa_answers)
        self.vqa_head = LateFusionVQAHead(config.embed_dim, answers) if answers else None

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward: less memory for larger batches."""
        self.image.trunk.set_grad_checkpointing(enable)
        self.text.grad_checkpointing = enable

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.image(images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.text(ids)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """Normalised features of both sides plus the temperature (and bias) the losses need."""
        return {
            "image_features": self.encode_image(images),
            "text_features": self.encode_text(ids),
            "logit_scale": self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE),
            "logit_bias": self.logit_bias,
        }

    def similarity(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every image with every text, (N_images, N_texts)."""
        return self.encode_image(images) @ self.encode_text(ids).T

    def vqa_logits(self, images: torch.Tensor, questions: torch.Tensor,
                   text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`text_mask` is accepted so both families share one call; the causal text tower pools at the
        end-of-text token, which padding after it never reaches, so no mask is needed here."""
        if self.vqa_head is None:
            raise RuntimeError(f"{self.config.name} has no VQA head: set vqa_answers in its config")
        return self.vqa_head(self.encode_image(images), self.encode_text(questions))

    def save(self, path) -> None:
        save_model(self, path)
