"""Objective `distill`: a small student learns from a frozen teacher of either family (issue 26).

Late-fusion teacher (a vlm checkpoint or an OpenCLIP import): the student copies its image-text similarity matrix
(MobileCLIP) and its embeddings through a learned projection (CLIP-KD). Early-fusion teacher: it cannot embed one
side alone, so it scores the student's own top-k candidates per query and the student learns that ranking (CPRD).
The teacher sees the student's batch resized to its own image size and context, runs in eval mode without
gradients, and is never saved; with `distill.precomputed` it does not run at all (vlm/train/teacher_parts.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vlm.config import ConfigError
from vlm.losses import ClipLoss, feature_mse, ranking_kl, similarity_kl
from vlm.models.dual_encoder import MAX_LOGIT_SCALE
from vlm.models.registry import image_size
from vlm.train.distill_config import DistillConfig


def load_teacher(config: DistillConfig) -> nn.Module:
    """The teacher, frozen: a vlm checkpoint or run folder, or an OpenCLIP export folder or weights file."""
    from vlm.models.checkpoint import load_model
    from vlm.models.openclip_compat import CONFIG_NAME, import_openclip

    path = Path(config.teacher)
    if config.teacher_openclip or (path.is_dir() and (path / CONFIG_NAME).is_file()):
        teacher = import_openclip(path, model=config.teacher_openclip)
    else:
        teacher = load_model(path)
    teacher.eval().requires_grad_(False)
    return teacher


def fit_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """The student's batch at the teacher's resolution (both take CLIP's normalisation)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False)


def fit_context(ids: torch.Tensor, length: int) -> torch.Tensor:
    """Token ids (or a mask) padded with zeros or cut to the teacher's context length."""
    if ids.shape[1] >= length:
        return ids[:, :length]
    return F.pad(ids, (0, length - ids.shape[1]))


@torch.no_grad()
def teacher_embeddings(teacher: nn.Module, images: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """A late-fusion teacher's normalised embeddings of a student batch, and its logit scale."""
    return {"image": teacher.encode_image(fit_images(images, image_size(teacher))),
            "text": teacher.encode_text(fit_context(ids, teacher.config.context_length)),
            "logit_scale": teacher.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)}


def positive_first_topk(similarity: torch.Tensor, k: int) -> torch.Tensor:
    """(Q, k) candidate columns per row: the row's own positive (column = row) first, then the student's k-1 most
    similar others, its hard negatives."""
    scores = similarity.detach().clone()
    scores.fill_diagonal_(float("inf"))
    return scores.topk(min(k, scores.shape[1]), dim=1).indices


class DistillTask(nn.Module):
    """Student + frozen teacher -> one weighted loss; `projections` are the only extra weights that learn."""

    def __init__(self, model: nn.Module, config: DistillConfig, teacher: nn.Module | None = None,
                 table=None):
        super().__init__()
        self.model, self.config, self.table = model, config, table
        self.teacher = teacher  # a submodule so that it follows .to(device); train() keeps it in eval mode
        self.teacher_arch = teacher.config.arch if teacher is not None else "dual_encoder"
        check_fits_teacher(config, self.teacher_arch)
        self.clip_loss = ClipLoss()
        self.projections = nn.ModuleDict()
        if config.feature_weight:
            dim = table.dim if table is not None else teacher.config.embed_dim
            for side in ("image", "text"):  # identity where the widths agree, as CLIP-KD
                width = model.config.embed_dim
                self.projections[side] = nn.Identity() if width == dim else nn.Linear(width, dim, bias=False)

    def train(self, mode: bool = True) -> DistillTask:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, batch: dict, step: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.model(batch["images"], batch["text"])
        images, texts, scale = out["image_features"], out["text_features"], out["logit_scale"]
        losses = {}
        if self.config.clip_weight:
            losses["clip_loss"] = self.clip_loss(images, texts, scale)
        if self.config.similarity_weight or self.config.feature_weight:
            target = self.teacher_targets(batch)
            if self.config.similarity_weight:
                teacher_scale = 1 / self.config.teacher_temperature if self.config.teacher_temperature \
                    else target["logit_scale"]
                losses["similarity_kl"] = similarity_kl(scale * images @ texts.T,
                                                        teacher_scale * target["image"] @ target["text"].T)
            if self.config.feature_weight:
                losses["feature_mse"] = (feature_mse(images, target["image"], self.projections["image"])
                                         + feature_mse(texts, target["text"], self.projections["text"])) / 2
        if self.config.ranking_weight:
            losses["ranking_kl"] = self.ranking_loss(batch, scale * images @ texts.T)
        weights = {"clip_loss": self.config.clip_weight, "similarity_kl": self.config.similarity_weight,
                   "feature_mse": self.config.feature_weight, "ranking_kl": self.config.ranking_weight}
        loss = sum(weights[name] * value for name, value in losses.items())
        return loss, {**{k: v.detach() for k, v in losses.items()}, "logit_scale": scale.detach()}

    def teacher_targets(self, batch: dict) -> dict[str, torch.Tensor]:
        if self.table is not None:
            return self.table.lookup(batch["image_ids"], batch["captions"], batch["images"].device)
        return teacher_embeddings(self.teacher, batch["images"], batch["text"])

    def ranking_loss(self, batch: dict, logits: torch.Tensor) -> torch.Tensor:
        """Both directions: each text's k candidate images and each image's k candidate texts."""
        text_to_image = self.ranked(logits.T, batch, texts_are_queries=True)
        image_to_text = self.ranked(logits, batch, texts_are_queries=False)
        return (text_to_image + image_to_text) / 2

    def ranked(self, logits: torch.Tensor, batch: dict, texts_are_queries: bool) -> torch.Tensor:
        """`logits` (Q, N): the student's scores of every candidate of each query."""
        candidates = positive_first_topk(logits, self.config.ranking_k)  # (Q, k)
        Q, k = candidates.shape
        queries = torch.arange(Q, device=logits.device).repeat_interleave(k)
        image_rows, text_rows = (candidates.reshape(-1), queries) if texts_are_queries else \
            (queries, candidates.reshape(-1))
        teacher_scores = self.teacher_scores(batch, image_rows, text_rows).reshape(Q, k)
        return ranking_kl(logits.gather(1, candidates), teacher_scores, self.config.ranking_temperature)

    @torch.no_grad()
    def teacher_scores(self, batch: dict, image_rows: torch.Tensor, text_rows: torch.Tensor) -> torch.Tensor:
        teacher = self.teacher
        length = teacher.config.context_length
        images = fit_images(batch["images"], image_size(teacher))
        tokens = teacher.embed_image(images)[image_rows]  # each image embedded once, scored k times
        return teacher.score_embedded(tokens, fit_context(batch["text"], length)[text_rows],
                                      fit_context(batch["text_mask"], length)[text_rows])


def check_fits_teacher(config: DistillConfig, teacher_arch: str) -> None:
    if teacher_arch == "early_fusion" and (config.similarity_weight or config.feature_weight):
        raise ConfigError("distill: an early-fusion teacher has no similarity matrix or embeddings to copy; set "
                          "similarity_weight=0 and feature_weight=0 and use ranking_weight (and clip_weight)")
    if teacher_arch == "dual_encoder" and config.ranking_weight:
        raise ConfigError("distill.ranking_weight needs an early-fusion teacher (a late-fusion one gives its whole "
                          "similarity matrix: use similarity_weight)")


def build_distill_task(model: nn.Module, config: DistillConfig) -> DistillTask:
    if model.config.arch != "dual_encoder":
        raise ConfigError(f"objective 'distill' trains a late-fusion student; {model.config.name} is "
                          f"{model.config.arch}")
    device = next(model.parameters()).device
    if config.precomputed:
        from vlm.train.teacher_parts import TeacherTable

        return DistillTask(model, config, table=TeacherTable(config.precomputed)).to(device)
    teacher = load_teacher(config)
    if teacher.config.arch == "early_fusion" and (teacher.config.tokenizer, teacher.config.preprocess) != \
            ("openclip", "clip"):
        raise ConfigError(f"distill.teacher {config.teacher}: an early-fusion teacher must read the student's batch "
                          "(OpenCLIP tokens, CLIP preprocessing); a ViLT import reads WordPiece and its own images")
    return DistillTask(model, config, teacher).to(device)
