"""The training recipe: one frozen dataclass, loaded from configs/train/*.yaml with `--set key=value`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from data_pipelines.options import pairs_options
from vlm.config import ConfigError, apply_overrides, from_dict, read_yaml
from vlm.models.config import LoraConfig  # the `lora:` field; it lives with the model it changes
from vlm.train.distill_config import DistillConfig

OBJECTIVES = ("clip", "siglip", "fusion", "vqa", "distill")


@dataclass(frozen=True)
class DataConfig:
    train: str = "data/shapes"  # a pairs file, a shard pattern, or a shapes-world folder
    train_split: str = "train"
    val: str | None = None  # unset: `train`'s val split (a shapes world, Karpathy JSON), else the training data itself
    val_split: str = "val"
    val_samples: int = 500  # evaluation is on the first N val items, so it stays cheap
    num_workers: int = 2
    augment: bool = False
    # Keep decoded, preprocessed training images in memory (each DataLoader worker its own copy), up to this
    # many MB: a small set read for many epochs decodes each file once. Ignored with augment (random crops).
    cache_mb: float = 0
    pad_to_longest: bool = True  # shorter text tensors on CPU; set false for static shapes (torch.compile, CUDA graphs)
    # Pairs files (CSV/TSV/JSONL): column names and separator, as `vlm eval --image-column ...` takes them.
    # OpenCLIP-style TSV: image_column: filepath, caption_column: title. None: image, caption, tab for .tsv.
    image_column: str | None = None
    caption_column: str | None = None
    separator: str | None = None
    val_image_column: str | None = None  # the same for `val`; None: as for `train`
    val_caption_column: str | None = None
    val_separator: str | None = None
    # The folder image paths are relative to, as --image-root (None: the index file's own folder). COCO's official
    # layout keeps annotations/captions_train2017.json beside train2017/: image_root: coco/train2017.
    image_root: str | None = None
    val_image_root: str | None = None  # the same for `val`; None: as for `train`
    # Stop when more than this share of the items is bad (missing, corrupt, over max_pixels). None: 0.01.
    max_bad_fraction: float | None = None
    # Refuse images over this many pixels (decompression bombs); raise it for large photos, 108 MP and up.
    # None: Pillow's limit, 89,478,485 (or `--max-pixels` where the command has it).
    max_pixels: int | None = None

    def train_source_options(self) -> dict:
        return {**pairs_options(self.image_column, self.caption_column, self.separator, self.image_root),
                **self.decode_options()}

    def val_source_options(self) -> dict:
        return {**pairs_options(self.val_image_column or self.image_column,
                                self.val_caption_column or self.caption_column, self.val_separator or self.separator,
                                self.val_image_root or self.image_root),
                **self.decode_options()}

    def decode_options(self) -> dict:
        """`open_source`'s image-decoding keywords that the recipe sets: the pixel limit, the share of bad items."""
        given = {"max_pixels": self.max_pixels, "max_bad_fraction": self.max_bad_fraction}
        return {key: value for key, value in given.items() if value is not None}


@dataclass(frozen=True)
class HardNegativesConfig:
    """Compositional hard negatives (NegCLIP): swapped captions as extra negatives. Off by default.

    Late fusion (`clip`): extra texts in each image's softmax; early fusion (`fusion`): extra ITM pairs
    (image, its swapped caption). A shapes world's negatives come from its grammar, any other caption's
    from a word-swap heuristic (data_pipelines/negatives.py)."""

    enabled: bool = False
    types: tuple[str, ...] = ("attribute", "object", "relation")
    per_caption: int = 1  # at most this many per caption, of different types


@dataclass(frozen=True)
class TrainConfig:
    model: str  # a model name, a model YAML, or (to fine-tune) a checkpoint
    objective: str = "clip"  # clip | siglip (late fusion), fusion (ITM + MLM), vqa (either family)
    model_overrides: tuple[str, ...] = ()  # `key=value` changes to a named model config, e.g. init_logit_bias=-10
    data: DataConfig = field(default_factory=DataConfig)
    steps: int = 1000
    batch_size: int = 64  # per optimizer step and per rank, before gradient accumulation splits it
    grad_accum: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.1
    betas: tuple[float, ...] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 100
    grad_clip: float = 1.0
    seed: int = 0
    compile: bool = False
    precision: str = "fp32"  # fp32 | bf16 (CPU autocast, float32 loss) | auto (vlm.models.precision); int8 infers only
    grad_checkpointing: bool = False
    save_every: int = 500
    eval_every: int = 500
    log_every: int = 10
    mlm_weight: float = 1.0  # fusion: loss = ITM + mlm_weight * MLM
    mlm_probability: float = 0.15
    # fusion: ITM negatives are drawn with probability softmax(caption similarity / this); lower = harder
    itm_negative_temperature: float = 1.0
    vqa_max_answers: int = 500  # vqa: answer vocabulary = the most frequent training answers
    freeze_towers: bool = False  # vqa with late fusion: train the head only
    head_lr_scale: float = 1.0  # vqa: learning-rate multiplier for the freshly initialised head
    # Adaptation (vlm/train/trainable.py; LoRA itself: vlm/models/lora.py): full fine-tuning unless one of these
    # is set. See configs/train/adapt-*.yaml.
    lora: LoraConfig | None = None  # train low-rank adapters only; `vlm lora merge` folds them into the weights
    lock_image: bool = False  # LiT: the image side is frozen, the text side (or fusion stack) learns
    freeze: tuple[str, ...] = ()  # parameter-name patterns (fnmatch) to freeze, e.g. "text.blocks.0.*"
    hard_negatives: HardNegativesConfig = field(default_factory=HardNegativesConfig)
    distill: DistillConfig | None = None  # objective distill: the teacher and the loss weights (vlm/train/distill.py)

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")
        if self.steps <= 0:
            raise ConfigError(f"steps must be positive, got {self.steps}")
        if self.precision not in ("fp32", "bf16", "auto"):
            raise ConfigError(f"precision must be fp32, bf16 or auto (int8 is for inference), got {self.precision!r}")
        if self.data.max_pixels is not None and self.data.max_pixels < 1:
            raise ConfigError(f"data.max_pixels must be positive, got {self.data.max_pixels}")
        if self.data.max_bad_fraction is not None and not 0 <= self.data.max_bad_fraction <= 1:
            raise ConfigError(f"data.max_bad_fraction must be between 0 and 1, got {self.data.max_bad_fraction}")
        check_hard_negatives(self.hard_negatives, self.objective)
        if (self.objective == "distill") != (self.distill is not None):
            raise ConfigError("objective distill and a `distill:` section (its teacher) go together")
        if self.distill is not None:
            self.distill.check(self.data.augment)


def check_hard_negatives(config: HardNegativesConfig, objective: str) -> None:
    from data_pipelines.negatives import NEGATIVE_TYPES

    if not config.enabled:
        return
    if objective not in ("clip", "fusion"):
        raise ConfigError(f"hard_negatives need objective clip or fusion, not {objective!r}")
    unknown = sorted(set(config.types) - set(NEGATIVE_TYPES))
    if unknown or not config.types:
        raise ConfigError(f"hard_negatives.types must be among {list(NEGATIVE_TYPES)}, got {list(config.types)}")
    if config.per_caption < 1:
        raise ConfigError(f"hard_negatives.per_caption must be at least 1, got {config.per_caption}")


def load_train_config(path: str | Path | None, overrides: list[str] | None = None,
                      base: dict | None = None) -> TrainConfig:
    """A recipe from YAML (or `base`), with `key=value` overrides; unknown keys are rejected by name."""
    data = read_yaml(path) if path else dict(base or {})
    data = apply_overrides(data, overrides or [])
    return from_dict(TrainConfig, data, where=str(path or "train config"))
