"""What the adaptation report measures: accuracy on the source and target worlds, and a method's cost."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import torch
from torch import nn

from vlm.eval.data import ClassificationSet, VQASet, load_classification, load_vqa
from vlm.models.preprocess import model_transform


def spread(n_items: int, n: int) -> torch.Tensor:
    """n indices spread evenly over n_items: class folders are sorted, so the first n would be a few classes."""
    if n <= 0 or n >= n_items:
        return torch.arange(n_items)
    return torch.linspace(0, n_items - 1, n).round().long().unique()


class WorldSets:
    """The evaluation sets of one shapes world (its test split), loaded once and capped at `max_images`."""

    def __init__(self, path: str | Path, max_images: int, split: str = "test"):
        self.path, self.max_images, self.split = Path(path), max_images, split
        self._cache: dict[tuple[str, str], object] = {}

    def classification(self, model: nn.Module) -> ClassificationSet:
        key = ("classify", repr(model_transform(model)))
        if key not in self._cache:
            full = load_classification(self.path, model_transform(model), self.split)
            keep = spread(len(full.labels), self.max_images)
            self._cache[key] = ClassificationSet(full.images[keep], full.labels[keep], full.classnames,
                                                 full.templates)
        return self._cache[key]

    def vqa(self, model: nn.Module) -> VQASet:
        key = ("vqa", repr(model_transform(model)))
        if key not in self._cache:
            full = load_vqa(self.path, model_transform(model), self.split)
            keep = spread(len(full.questions), self.max_images).tolist()
            self._cache[key] = VQASet(full.images[keep], *([getattr(full, f)[i] for i in keep] for f in
                                                           ("questions", "answers", "answer_types",
                                                            "question_families")))
        return self._cache[key]


@torch.no_grad()
def zero_shot_accuracy(model: nn.Module, sets: WorldSets) -> float:
    """Top-1 percent. Early fusion scores every (image, prompt) pair, so it uses the first template only."""
    from vlm.eval.zeroshot import evaluate_zero_shot

    d = sets.classification(model)
    templates = d.templates[:1] if model.config.arch == "early_fusion" else d.templates
    return evaluate_zero_shot(model.eval(), d.images, d.labels, d.classnames, templates)["acc1"]


@torch.no_grad()
def vqa_accuracy(model: nn.Module, sets: WorldSets) -> float:
    from vlm.eval.vqa import evaluate_vqa

    d = sets.vqa(model)
    return evaluate_vqa(model.eval(), d.images, d.questions, d.answers, d.answer_types, d.question_families)[
        "vqa_accuracy"]


def measure(model: nn.Module, source: WorldSets, target: WorldSets) -> dict[str, float]:
    """Zero-shot top-1 on both worlds; VQA on both too when the model has a VQA head."""
    result = {"target": zero_shot_accuracy(model, target), "source": zero_shot_accuracy(model, source)}
    if model.config.vqa_answers:
        result.update(target_vqa=vqa_accuracy(model, target), source_vqa=vqa_accuracy(model, source))
    return result


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory(contextlib.AbstractContextManager):
    """Peak memory a block adds: CUDA's allocator peak, or on the CPU the resident set sampled every 10 ms
    above where it started (Linux /proc; None elsewhere). A sample can miss a short spike, so it is a floor."""

    def __init__(self, device: torch.device | None = None):
        self.device = device or torch.device("cpu")
        self.peak_mb: float | None = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        self._start, self._peak, self._stop = (_rss_bytes(), 0, threading.Event()) if os.path.exists(
            "/proc/self/statm") else (None, 0, threading.Event())
        if self._start is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_bytes())
            time.sleep(0.01)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20
        elif self._start is not None:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(0, max(self._peak, _rss_bytes()) - self._start) / 2**20
        return False
