"""Model configs. The `arch` field, never the name, chooses the model class."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from vlm.config import ConfigError, from_dict
from vlm.tokenizer import VOCAB_SIZE


@dataclass(frozen=True)
class ImageTowerConfig:
    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    pool: str = "cls"  # "cls" (CLIP) or "mean"


@dataclass(frozen=True)
class TextTowerConfig:
    context_length: int = 77
    vocab_size: int = VOCAB_SIZE
    width: int = 512
    depth: int = 12
    heads: int = 8
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class DualEncoderConfig:
    """Late fusion: two towers, compared by a dot product of normalised embeddings."""

    name: str
    arch: str = "dual_encoder"
    embed_dim: int = 512
    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    quick_gelu: bool = False  # OpenAI's original CLIP weights use QuickGELU
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None  # set (e.g. -10) for the SigLIP loss
    vqa_answers: tuple[str, ...] = ()  # non-empty: a VQA head over this answer vocabulary

    @property
    def context_length(self) -> int:
        return self.text.context_length


@dataclass(frozen=True)
class EarlyFusionConfig:
    """Early fusion (ViLT): one transformer over image patches and text tokens together."""

    name: str
    arch: str = "early_fusion"
    image_size: int = 224
    patch_size: int = 32
    context_length: int = 40
    vocab_size: int = VOCAB_SIZE + 1  # the BPE vocabulary plus one [MASK] token for MLM
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    vqa_answers: tuple[str, ...] = ()

    @property
    def mask_token_id(self) -> int:
        return VOCAB_SIZE  # the id right after the BPE vocabulary


ModelConfig = DualEncoderConfig | EarlyFusionConfig
ARCHS: dict[str, type] = {"dual_encoder": DualEncoderConfig, "early_fusion": EarlyFusionConfig}


def model_config_from_dict(data: dict, where: str = "model config") -> ModelConfig:
    arch = data.get("arch")
    if arch not in ARCHS:
        raise ConfigError(f"{where}: field 'arch' must be one of {sorted(ARCHS)}, got {arch!r}")
    config = from_dict(ARCHS[arch], data, where)
    if isinstance(config, EarlyFusionConfig) and config.vocab_size <= VOCAB_SIZE:
        raise ConfigError(f"{where}: vocab_size must exceed {VOCAB_SIZE} to leave room for the [MASK] token")
    return config
