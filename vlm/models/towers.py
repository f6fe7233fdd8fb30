"""The two late-fusion towers. Parameter names follow timm, so OpenCLIP weights map one to one."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
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


def block_at(block: Block, x: torch.Tensor, rows: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """A timm `Block` evaluated at one position per sequence, `rows` (B,): `block(x, attn_mask)[arange(B), rows]`.

    A stack read at one token (CLS, end-of-text) needs its last block there only: keys and values still come
    from every position, but the attention output, projection and MLP (9/12 of the block's matmul work) run on
    one row instead of L. `attn_mask` (B, 1, 1, L) says which keys that row sees. Every layer is called as a
    module, so LoRA-wrapped or int8 layers run as in the full block.
    """
    attn, (B, N, _) = block.attn, x.shape
    at = torch.arange(B, device=x.device)
    h = block.norm1(x)
    q, k, v = attn.qkv(h).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q[at, :, rows].unsqueeze(2)), attn.k_norm(k)  # q: (B, heads, 1, head_dim)
    # Written out, and as products and sums rather than matmuls: for one query, CPU's fused attention kernel and
    # its batched matrix-vector products both gave a row results that depend on its place in the batch
    scores = (q * attn.scale * k).sum(dim=-1).unsqueeze(2)  # (B, heads, 1, N)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    out = (attn.attn_drop(scores.softmax(dim=-1)).transpose(-2, -1) * v).sum(dim=-2, keepdim=True)  # (B, heads, 1, d)
    out = attn.norm(out.transpose(1, 2).reshape(B, 1, attn.attn_dim))
    if attn.gate is not None:
        out = out * attn.gate(h[at, rows].unsqueeze(1)).sigmoid()
    y = x[at, rows].unsqueeze(1) + block.drop_path1(block.ls1(attn.proj_drop(attn.proj(out))))
    y = y + block.drop_path2(block.ls2(block.mlp(block.norm2(y))))
    return y[:, 0]  # (B, W)


class PatchConv(nn.Conv2d):
    """A patch embedding's conv (kernel = stride, no padding) computed as one matmul over the flattened patches:
    on these CPUs oneDNN's convolution took ~1.5x as long forward + backward (64 px, width 128). The parameters
    are the conv's, so checkpoints and OpenCLIP/ViLT weights are unchanged."""

    @classmethod
    def like(cls, conv: nn.Conv2d) -> nn.Conv2d:
        if conv.kernel_size != conv.stride or conv.padding != (0, 0) or conv.groups != 1 or conv.dilation != (1, 1):
            return conv
        # built on the meta device (no draw from the RNG: seeded inits stay as they were), then given conv's own
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, bias=conv.bias is not None,
                  device="meta")
        new.weight, new.bias = conv.weight, conv.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (ph, pw), (B, C, H, W) = self.kernel_size, x.shape
        h, w = H // ph, W // pw  # a remainder is dropped, as the strided conv drops it
        patches = x[..., : h * ph, : w * pw].reshape(B, C, h, ph, w, pw).permute(0, 2, 4, 1, 3, 5)
        out = F.linear(patches.reshape(B, h, w, C * ph * pw), self.weight.flatten(1), self.bias)
        return out.permute(0, 3, 1, 2)  # (B, width, h, w), as the conv gives it


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
        self.trunk.patch_embed.proj = PatchConv.like(self.trunk.patch_embed.proj)
        self.proj = nn.Parameter(torch.randn(config.width, embed_dim) * config.width**-0.5)
        init_like_openclip_vision(self.trunk)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        trunk = self.trunk
        if trunk.global_pool != "token":  # mean pooling reads every position
            return trunk(images) @ self.proj
        # timm's forward_features, with the last block run at the CLS position only (what the pooling reads)
        x = trunk.norm_pre(trunk.patch_drop(trunk._pos_embed(trunk.patch_embed(images))))
        for block in trunk.blocks[:-1]:
            x = checkpoint(block, x, use_reentrant=False) if trunk.grad_checkpointing and self.training else block(x)
        cls = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        x = trunk.head(trunk.head_drop(trunk.fc_norm(trunk.norm(block_at(trunk.blocks[-1], x, cls)))))
        return x @ self.proj  # (B, embed_dim)


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
        for block in self.blocks[:-1]:
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, is_causal=True, use_reentrant=False)  # recompute in backward
            else:
                x = block(x, is_causal=True)
        seen = torch.arange(x.shape[1], device=x.device) <= eot[:, None]  # causal: the EOT row sees up to itself
        x = block_at(self.blocks[-1], x, eot, seen[:, None, None, :])  # the pooled row only
        return self.ln_final(x) @ self.text_projection  # (B, embed_dim)


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
