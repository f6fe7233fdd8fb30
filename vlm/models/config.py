"""Model configs. The `arch` field, never the name, chooses the model class."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from vlm.config import ConfigError, from_dict
from vlm.tokenizer import VOCAB_SIZE

# OpenAI CLIP's normalisation, the default of OpenCLIP's ViT models (equal to data_pipelines.transforms'
# IMAGE_MEAN / IMAGE_STD, written out so that reading a config imports no image library; a test checks).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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
    # The image preprocessing the weights were trained with (OpenCLIP's preprocess_cfg); see preprocess.py.
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD
    image_interpolation: str = "bicubic"  # or "bilinear"
    image_resize_mode: str = "shortest"  # "shortest": resize + centre crop; "squash": resize to the square

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
    # "vlm": [CLS, text, patches], pooled CLS. "vilt": Hugging Face ViLT's layout: BERT text embeddings,
    # [text, image CLS, patches], pooled text [CLS], position grid resized per image (see early_fusion.py).
    layout: str = "vlm"
    norm_eps: float = 1e-6  # every LayerNorm of the stack (ViLT: 1e-12)
    match_head: str = "itm"  # "itm": 2-way (no match, match); "rank": ViLT's rank_output (one logit); "none"
    mlm_head: bool = True
    type_vocab_size: int = 2  # BERT segment types ("vilt" layout only)
    tokenizer: str = "openclip"  # "openclip" (BPE) or "wordpiece" (BERT, with `vocab` below)
    vocab: tuple[str, ...] = ()  # the WordPiece vocabulary, kept in the checkpoint so it loads offline
    lowercase: bool = True  # WordPiece: lower-case and strip accents (bert-base-uncased)
    preprocess: str = "clip"  # "clip": square resize + crop, CLIP mean/std; "vilt": ViLT's processor

    @property
    def mask_token_id(self) -> int:
        if self.tokenizer == "wordpiece":
            return self.vocab.index("[MASK]")
        return VOCAB_SIZE  # the id right after the BPE vocabulary

    @property
    def pad_token_id(self) -> int:
        return self.vocab.index("[PAD]") if self.tokenizer == "wordpiece" else 0


LORA_TARGETS = ("qkv", "proj", "mlp")  # in every ViT block: attn.qkv, attn.proj, mlp.fc1 + mlp.fc2
LORA_STACKS = ("image", "text", "fusion")  # the late-fusion towers, the early-fusion stack


@dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters (peft) on the blocks' linear layers; everything else is frozen (but a fresh VQA head).
    CLIP-LoRA's defaults are r 2, alpha 1, dropout 0.25 on q/k/v of both towers; these suit a small model.
    A training recipe's `lora:` field, and part of a LoRA run's checkpoint (vlm/models/lora.py rebuilds it)."""
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = LORA_TARGETS
    stacks: tuple[str, ...] = LORA_STACKS  # those the model has: image/text (late fusion) or fusion (early)

    def __post_init__(self):
        for name, given, known in (("targets", self.targets, LORA_TARGETS), ("stacks", self.stacks, LORA_STACKS)):
            bad = [t for t in given if t not in known]
            if bad or not given:
                raise ConfigError(f"lora.{name}: {bad or 'empty'}; choose from {list(known)}")
        if self.r <= 0:
            raise ConfigError(f"lora.r must be positive, got {self.r}")


ModelConfig = DualEncoderConfig | EarlyFusionConfig
ARCHS: dict[str, type] = {"dual_encoder": DualEncoderConfig, "early_fusion": EarlyFusionConfig}


def model_config_from_dict(data: dict, where: str = "model config") -> ModelConfig:
    arch = data.get("arch")
    if arch not in ARCHS:
        raise ConfigError(f"{where}: field 'arch' must be one of {sorted(ARCHS)}, got {arch!r}")
    config = from_dict(ARCHS[arch], data, where)
    if isinstance(config, EarlyFusionConfig):
        check_early_fusion(config, where)
    else:
        check_choice(config, where, "image_interpolation", ("bicubic", "bilinear"))
        check_choice(config, where, "image_resize_mode", ("shortest", "squash"))
    return config


def check_choice(config, where: str, name: str, allowed: tuple[str, ...]) -> None:
    if getattr(config, name) not in allowed:
        raise ConfigError(f"{where}: field {name!r} must be one of {list(allowed)}, got {getattr(config, name)!r}")


def check_early_fusion(config: EarlyFusionConfig, where: str) -> None:
    choices = {"layout": ("vlm", "vilt"), "match_head": ("itm", "rank", "none"),
               "tokenizer": ("openclip", "wordpiece"), "preprocess": ("clip", "vilt")}
    for name, allowed in choices.items():
        check_choice(config, where, name, allowed)
    if config.tokenizer == "openclip" and config.vocab_size <= VOCAB_SIZE:
        raise ConfigError(f"{where}: vocab_size must exceed {VOCAB_SIZE} to leave room for the [MASK] token")
    if config.tokenizer == "wordpiece":
        missing = [t for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]") if t not in config.vocab]
        if missing:
            raise ConfigError(f"{where}: a wordpiece tokenizer needs a vocab with {missing}")
        if len(config.vocab) > config.vocab_size:
            raise ConfigError(f"{where}: vocab has {len(config.vocab)} tokens, vocab_size is {config.vocab_size}")
