"""The two late-fusion towers. Parameter names follow timm, so OpenCLIP weights map one to one."""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import QuickGELU
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from vlm.models.config import ImageTowerConfig, TextTowerConfig
from vlm.tokenizer import EOT_ID

# OpenCLIP uses torch's LayerNorm default; timm's ViT default (1e-6) would break weight interchange.
LayerNorm = partial(nn.LayerNorm, eps=1e-5)


def activation(quick_gelu: bool) -> type[nn.Module]:
    return QuickGELU if quick_gelu else nn.GELU


def static_shapes() -> bool:
    """True while torch.compile, torch.export or a tracer records the model: a length read from the data
    would become a recompile per length or a constant baked into the graph, so those run the full length."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


class ImageTower(nn.Module):
    """A timm ViT with CLIP's pre-norm, pooled by its CLS token (or the mean of patches), then projected."""

    def __init__(self, config: ImageTowerConfig, embed_dim: int, quick_gelu: bool = False):
        super().__init__()
        if config.pool not in ("cls", "mean"):
            raise ValueError(f"image.pool must be 'cls' or 'mean', got {config.pool!r}")
        self.trunk = VisionTransformer(
            img_size=config.image_size,
            patch_size=config.patch_size,
            embed_dim=config.width,
            depth=config.depth,
            num_heads=config.heads,
            mlp_ratio=config.mlp_ratio,
            num_classes=0,
            global_pool="token" if config.pool == "cls" else "avg",
            fc_norm=False,
            pre_norm=True,
            norm_layer=LayerNorm,
            act_layer=activation(quick_gelu),
        )
        self.proj = nn.Parameter(torch.randn(config.width, embed_dim) * config.width**-0.5)
        init_like_openclip_vision(self.trunk)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images) @ self.proj  # (B, embed_dim)


class TextTower(nn.Module):
    """CLIP's text transformer: causal pre-norm blocks, pooled at the end-of-text token."""

    def __init__(self, config: TextTowerConfig, embed_dim: int, quick_gelu: bool = False):
        super().__init__()
        self.context_length = config.context_length
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.randn(config.context_length, config.width) * 0.01)
        self.blocks = nn.ModuleList(
            Block(config.width, config.heads, config.mlp_ratio, qkv_bias=True,
                  norm_layer=LayerNorm, act_layer=activation(quick_gelu))
            for _ in range(config.depth)
        )
        self.ln_final = LayerNorm(config.width)
        self.grad_checkpointing = False
        self.text_projection = nn.Parameter(torch.randn(config.width, embed_dim) * config.width**-0.5)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        init_like_openclip_text(self.blocks, config.width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > self.context_length:
            raise ValueError(f"text has {ids.shape[1]} tokens, the model's context is {self.context_length}")
        # The causal mask makes the end-of-text token the one that has seen the whole caption, and nothing after
        # it reaches it: run only up to the batch's last end-of-text (padding is free work otherwise).
        eot = (ids == EOT_ID).int().argmax(dim=-1)  # (B,); 0 where a row has none, as before
        if len(ids) and not static_shapes():
            ids = ids[:, : int(eot.max()) + 1]
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]  # (B, T', W)
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, is_causal=True, use_reentrant=False)  # recompute in backward
            else:
                x = block(x, is_causal=True)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection  # (B, embed_dim)


# Initialisation as OpenCLIP does it. timm's ViT default (std 0.02 everywhere) suits width 768, but at the
# widths a CPU trains it leaves every block near the identity: measured on one 32-pair batch of the shapes
# world, clip-small's contrastive loss fell to 2.2 in 50 steps with it and to 0.01 with this (OpenCLIP: 0.03).
def init_like_openclip_vision(trunk: VisionTransformer) -> None:
    """OpenCLIP's vision tower: width^-0.5 CLS and positions, PyTorch's default layers (xavier for qkv)."""
    scale = trunk.embed_dim**-0.5
    nn.init.normal_(trunk.cls_token, std=scale)
    nn.init.normal_(trunk.pos_embed, std=scale)
    init_like_openclip_blocks(trunk.blocks)


def init_like_openclip_blocks(blocks: nn.Module) -> None:
    """PyTorch's default Linear init, xavier for qkv (as nn.MultiheadAttention's in_proj), zero attention biases."""
    for block in blocks:
        for m in block.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()
        nn.init.xavier_uniform_(block.attn.qkv.weight)  # as nn.MultiheadAttention's in_proj
        nn.init.zeros_(block.attn.qkv.bias)
        nn.init.zeros_(block.attn.proj.bias)


def init_like_openclip_text(blocks: nn.ModuleList, width: int) -> None:
    """OpenCLIP's text tower: attention std width^-0.5, residual outputs scaled down by depth (GPT-2)."""
    attn_std, fc_std = width**-0.5, (2 * width) ** -0.5
    proj_std = attn_std * (2 * len(blocks)) ** -0.5
    for block in blocks:
        nn.init.normal_(block.attn.qkv.weight, std=attn_std)
        nn.init.normal_(block.attn.proj.weight, std=proj_std)
        nn.init.normal_(block.mlp.fc1.weight, std=fc_std)
        nn.init.normal_(block.mlp.fc2.weight, std=proj_std)
        for m in block.modules():
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
