"""The `distill:` section of a training recipe (objective `distill`, vlm/train/distill.py)."""

from __future__ import annotations

from dataclasses import dataclass

from vlm.config import ConfigError


@dataclass(frozen=True)
class DistillConfig:
    """What the student learns from: the pairs (CLIP loss) and a frozen teacher (the other three losses).

    Defaults are the late-fusion recipe measured in docs/BENCHMARKS.md (issue 26); an early-fusion teacher has no
    similarity matrix or features to copy, only its ranking of the student's top-k (configs/train/distill-fusion.yaml).
    """

    teacher: str = ""  # a checkpoint or run folder of either family, or an OpenCLIP file or export folder
    teacher_openclip: str | None = None  # a bare OpenCLIP weights file's architecture, e.g. ViT-B-32
    clip_weight: float = 1.0  # the student's own contrastive loss on the pairs
    similarity_weight: float = 1.0  # KL between the image-text similarity matrices (MobileCLIP)
    feature_weight: float = 0.0  # MSE of the embeddings through a learned projection (CLIP-KD)
    ranking_weight: float = 0.0  # listwise KL over the student's top-k, scored by an early-fusion teacher (CPRD)
    teacher_temperature: float | None = None  # the teacher's softmax temperature; None: its own logit scale
    ranking_k: int = 4  # candidates per query, the positive and the student's k-1 hardest in the batch
    ranking_temperature: float = 1.0  # of the teacher's softmax over its k scores (ITM log-odds)
    precomputed: str | None = None  # teacher outputs written once by `vlm distill --precompute`: no teacher runs

    def check(self, augment: bool = False) -> None:
        weights = {"clip_weight": self.clip_weight, "similarity_weight": self.similarity_weight,
                   "feature_weight": self.feature_weight, "ranking_weight": self.ranking_weight}
        negative = [name for name, w in weights.items() if w < 0]
        if negative or not any(weights.values()):
            raise ConfigError(f"distill: weights must be >= 0 with one positive, got {weights}")
        if not self.teacher and not self.precomputed:
            raise ConfigError("distill.teacher is empty: give the teacher's checkpoint or OpenCLIP file")
        if self.precomputed and augment:
            raise ConfigError("distill.precomputed holds the teacher's outputs of un-augmented images; set "
                              "data.augment=false or let the teacher run online")
        if self.ranking_k < 2:
            raise ConfigError(f"distill.ranking_k must be at least 2, got {self.ranking_k}")
        if self.teacher_temperature is not None and self.teacher_temperature <= 0:
            raise ConfigError(f"distill.teacher_temperature must be positive, got {self.teacher_temperature}")
