"""Parameter counts worked out from a config, without building the model (or importing torch).

`vlm models` lists every named size with its count; building them, even on the meta device, needs timm,
whose import alone takes seconds on a small machine. tests/test_cli_models.py checks every count here
against `count_parameters(create_model(name))`, so a change to a model that is not mirrored here fails.
"""

from __future__ import annotations

from vlm.models.config import DualEncoderConfig, EarlyFusionConfig, ImageTowerConfig, ModelConfig, TextTowerConfig


def config_parameter_count(config: ModelConfig) -> int:
    if isinstance(config, DualEncoderConfig):
        n = (image_tower(config.image, config.embed_dim) + text_tower(config.text, config.embed_dim)
             + 1 + (config.init_logit_bias is not None))  # logit scale, logit bias
        if config.vqa_answers:  # LateFusionVQAHead: MLP 4E -> 2E -> answers over [i, t, i*t, |i-t|]
            n += mlp_head(4 * config.embed_dim, 2 * config.embed_dim, len(config.vqa_answers))
        return n
    if isinstance(config, EarlyFusionConfig):
        return early_fusion(config)
    raise TypeError(f"not a model config: {type(config).__name__}")


def block(width: int, mlp_ratio: float) -> int:
    """timm's pre-norm `Block` with qkv bias: two LayerNorms, qkv + output projection, a two-layer MLP."""
    hidden = int(width * mlp_ratio)
    norms, attention = 2 * 2 * width, (3 * width * width + 3 * width) + (width * width + width)
    return norms + attention + (width * hidden + hidden) + (hidden * width + width)


def mlp_head(in_dim: int, hidden: int, out_dim: int) -> int:
    """`VQAHead`: Linear, LayerNorm, GELU, Linear."""
    return in_dim * hidden + hidden + 2 * hidden + hidden * out_dim + out_dim


def image_tower(c: ImageTowerConfig, embed_dim: int) -> int:
    """timm's ViT as CLIP builds it: bias-free patch conv, CLS, positions, pre and final norms; a projection."""
    patches = (c.image_size // c.patch_size) ** 2
    w = c.width
    return (3 * c.patch_size**2 * w + w + (patches + 1) * w + 2 * w + c.depth * block(w, c.mlp_ratio) + 2 * w
            + w * embed_dim)


def text_tower(c: TextTowerConfig, embed_dim: int) -> int:
    w = c.width
    return c.vocab_size * w + c.context_length * w + c.depth * block(w, c.mlp_ratio) + 2 * w + w * embed_dim


def early_fusion(c: EarlyFusionConfig) -> int:
    w = c.width
    patches = (c.image_size // c.patch_size) ** 2
    embeddings = (3 * c.patch_size**2 * w + w) + patches * w + c.vocab_size * w + c.context_length * w + 2 * w + w
    heads = (w * w + w) + (2 * w + 2) + (w * w + w + 2 * w + c.vocab_size)  # pooler, ITM, MLM (decoder tied)
    if c.vqa_answers:
        heads += mlp_head(w, 2 * w, len(c.vqa_answers))
    return embeddings + c.depth * block(w, c.mlp_ratio) + 2 * w + heads
