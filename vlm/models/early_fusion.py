"""Early fusion (ViLT): one transformer over text tokens and image patches together.

It reasons over both inputs at once, so it can bind attributes to objects, but every image-text pair
costs a full pass: it scores pairs, it cannot embed one side alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from vlm.models.checkpoint import save_model
from vlm.models.config import EarlyFusionConfig
from vlm.models.heads import MLMHead, VQAHead
from vlm.models.towers import init_like_openclip_blocks
from vlm.tokenizer import padding_mask

TEXT, IMAGE = 0, 1  # modality-type ids


@dataclass
class FusionOutput:
    pooled: torch.Tensor  # (B, W) pooled CLS, input of the ITM and VQA heads
    text_hidden: torch.Tensor  # (B, T, W) final text-token states, input of the MLM head


class EarlyFusionModel(nn.Module):
    def __init__(self, config: EarlyFusionConfig):
        super().__init__()
        self.config = config
        width = config.width
        self.patch_embed = PatchEmbed(config.image_size, config.patch_size, 3, width)
        self.image_pos = nn.Parameter(torch.randn(1, self.patch_embed.num_patches, width) * 0.02)
        self.token_embedding = nn.Embedding(config.vocab_size, width)
        self.text_pos = nn.Parameter(torch.randn(1, config.context_length, width) * 0.02)
        self.modality_embedding = nn.Embedding(2, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.blocks = nn.ModuleList(
            Block(width, config.heads, config.mlp_ratio, qkv_bias=True) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.pooler = nn.Sequential(nn.Linear(width, width), nn.Tanh())
        self.itm_head = nn.Linear(width, 2)
        self.mlm_head = MLMHead(width, config.vocab_size)
        answers = len(config.vqa_answers)
        self.vqa_head = VQAHead(width, answers) if answers else None
        self.grad_checkpointing = False
        self._init_weights()

    def _init_weights(self) -> None:
        """OpenCLIP's vision-tower initialisation, scaled by width (see towers.py): timm's std 0.02 leaves
        the blocks of a narrow model near the identity and ITM stalls at the class prior."""
        scale = self.config.width**-0.5
        for p in (self.image_pos, self.text_pos, self.cls_token, self.token_embedding.weight,
                  self.modality_embedding.weight):
            nn.init.normal_(p, std=scale)
        init_like_openclip_blocks(self.blocks)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward: less memory for larger batches."""
        self.grad_checkpointing = enable

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens with position and modality added; computed once per image for exhaustive scoring."""
        x = self.patch_embed(images) + self.image_pos  # (B, P, W)
        return x + self.modality_embedding.weight[IMAGE]

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > self.config.context_length:
            raise ValueError(f"text has {ids.shape[1]} tokens, the model's context is {self.config.context_length}")
        x = self.token_embedding(ids) + self.text_pos[:, : ids.shape[1]]  # (B, T, W)
        return x + self.modality_embedding.weight[TEXT]

    def fuse(self, image_tokens: torch.Tensor, ids: torch.Tensor,
             text_mask: torch.Tensor | None = None) -> FusionOutput:
        """Run the joint stack over [CLS, text, patches]; padding tokens are hidden from attention."""
        if text_mask is None:
            text_mask = padding_mask(ids)
        B, T = ids.shape
        text_tokens = self.embed_text(ids)
        x = torch.cat([self.cls_token.expand(B, -1, -1), text_tokens, image_tokens], dim=1)  # (B, 1+T+P, W)
        visible = torch.ones(B, x.shape[1], dtype=torch.bool, device=x.device)
        visible[:, 1 : 1 + T] = text_mask.bool()
        attn_mask = visible[:, None, None, :]  # (B, 1, 1, L): every query sees the same keys
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, attn_mask=attn_mask, use_reentrant=False)
            else:
                x = block(x, attn_mask=attn_mask)
        x = self.norm(x)
        text_hidden = x[:, 1 : 1 + T] * text_mask[..., None].to(x.dtype)
        return FusionOutput(pooled=self.pooler(x[:, 0]), text_hidden=text_hidden)

    def forward(self, images: torch.Tensor, ids: torch.Tensor,
                text_mask: torch.Tensor | None = None) -> FusionOutput:
        return self.fuse(self.embed_image(images), ids, text_mask)

    def itm_logits(self, images: torch.Tensor, ids: torch.Tensor,
                   text_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.itm_head(self(images, ids, text_mask).pooled)  # (B, 2): [no match, match]

    def score(self, images: torch.Tensor, ids: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Match score of each (image, text) pair: the ITM log-odds, higher means a better match."""
        logits = self.itm_logits(images, ids, text_mask)
        return logits[:, 1] - logits[:, 0]

    def score_embedded(self, image_tokens: torch.Tensor, ids: torch.Tensor,
                       text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`score` for patch tokens from `embed_image`, so retrieval embeds each image once."""
        logits = self.itm_head(self.fuse(image_tokens, ids, text_mask).pooled)
        return logits[:, 1] - logits[:, 0]

    def mlm_logits(self, text_hidden: torch.Tensor) -> torch.Tensor:
        return self.mlm_head(text_hidden, self.token_embedding.weight)  # (..., vocab)

    def vqa_logits(self, images: torch.Tensor, questions: torch.Tensor,
                   text_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.vqa_head is None:
            raise RuntimeError(f"{self.config.name} has no VQA head: set vqa_answers in its config")
        return self.vqa_head(self(images, questions, text_mask).pooled)

    def save(self, path) -> None:
        save_model(self, path)
