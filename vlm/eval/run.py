"""One evaluation of one checkpoint on one dataset: what `vlm eval ...` and `vlm compare` call."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from data_pipelines.sources import detect_format
from vlm.eval import data
from vlm.eval.class_lists import resolve_classnames, resolve_templates
from vlm.eval.compositional import evaluate_compositional
from vlm.eval.predictions import write_class_predictions, write_retrieval_predictions, write_vqa_predictions
from vlm.eval.retrieval import evaluate_early, evaluate_hybrid, evaluate_late
from vlm.eval.retrieval_stream import stream_early, stream_hybrid, stream_late
from vlm.eval.stream import StreamOptions
from vlm.eval.vqa import evaluate_vqa, stream_vqa
from vlm.eval.vqa_metric import DEFAULT_VQA_METRIC
from vlm.eval.zeroshot import evaluate_zero_shot, stream_zero_shot
from vlm.models import load_model
from vlm.models.checkpoint import resolve_checkpoint
from vlm.models.precision import model_workload, resolve_precision, run_record, with_precision
from vlm.models.preprocess import model_transform


class EvalSets:
    """Loads each evaluation set once per preprocessing (the two families may differ: size, mean/std, ViLT's)."""

    def __init__(self, path: str | Path, split: str | None = None, max_retrieval_images: int | None = None,
                 options: dict | None = None):
        self.path, self.split, self.max_retrieval_images = Path(path), split, max_retrieval_images
        self.options = options or {}  # a pairs file's columns, for retrieval and compositional
        self._cache: dict[tuple[str, str], object] = {}

    def get(self, task: str, model: nn.Module):
        """The set of `task` as `model` sees it: through its own preprocessing (`model_transform`)."""
        transform = model_transform(model)
        key = (task, repr(transform))
        if key not in self._cache:
            loader = {"retrieval": data.load_retrieval, "vqa": data.load_vqa,
                      "zeroshot": data.load_classification, "compositional": data.load_compositional}[task]
            loaded = loader(self.path, transform, self.split, self.options)
            if task == "retrieval" and self.max_retrieval_images:
                loaded = first_images(loaded, self.max_retrieval_images)
            self._cache[key] = loaded
        return self._cache[key]


def first_images(dataset: data.RetrievalSet, n: int) -> data.RetrievalSet:
    """The first n images and all their captions: exhaustive early fusion is quadratic, so it needs a cap."""
    keep = [t for t, i in enumerate(dataset.text_to_image) if i < n]
    return data.RetrievalSet(dataset.images[:n], [dataset.captions[t] for t in keep],
                             [dataset.text_to_image[t] for t in keep], dataset.skipped)


def _with_data_info(result: dict, dataset) -> dict:
    if dataset.skipped:
        result["skipped_samples"] = dataset.skipped
    return result


@torch.no_grad()
def run_zeroshot(model: nn.Module, sets: EvalSets) -> dict:
    d = sets.get("zeroshot", model)
    return _with_data_info(evaluate_zero_shot(model, d.images, d.labels, d.classnames, d.templates), d)


@torch.no_grad()
def run_retrieval(model: nn.Module, sets: EvalSets, rerank_from: nn.Module | None = None, k: int = 16) -> dict:
    """Late or exhaustive early retrieval; with `rerank_from` (a late model), hybrid re-ranking of its top k."""
    d = sets.get("retrieval", model)
    if rerank_from is not None:
        if model.config.arch != "early_fusion" or rerank_from.config.arch != "dual_encoder":
            raise ValueError("hybrid retrieval re-ranks a late-fusion model's candidates with an early-fusion "
                             "model: --checkpoint must be early fusion and --rerank-from late fusion")
        late_d = sets.get("retrieval", rerank_from)
        result = evaluate_hybrid(rerank_from, model, late_d.images, d.images, d.captions, d.text_to_image, k)
    elif model.config.arch == "dual_encoder":
        result = evaluate_late(model, d.images, d.captions, d.text_to_image)
    else:
        result = evaluate_early(model, d.images, d.captions, d.text_to_image)
    return _with_data_info(result, d)


@torch.no_grad()
def run_vqa(model: nn.Module, sets: EvalSets, zero_images: bool = False, metric: str = DEFAULT_VQA_METRIC) -> dict:
    """`zero_images`: the blind baseline of the same model and head, every image replaced by zeros
    (the dataset's mean colour after normalisation), so what it scores comes from the question alone."""
    d = sets.get("vqa", model)
    images = torch.zeros_like(d.images) if zero_images else d.images
    return _with_data_info(evaluate_vqa(model, images, d.questions, d.answers, d.answer_types,
                                        d.question_families, metric), d)


@torch.no_grad()
def run_compositional(model: nn.Module, sets: EvalSets) -> dict:
    d = sets.get("compositional", model)
    return _with_data_info(evaluate_compositional(model, d.images, d.captions, d.negatives, d.negative_types), d)


TASKS = {"zeroshot": run_zeroshot, "retrieval": run_retrieval, "vqa": run_vqa, "compositional": run_compositional}


def stream_zeroshot(model: nn.Module, path, split, options: StreamOptions, classnames=None,
                    templates=None) -> tuple[dict, Callable]:
    """`classnames` / `templates` replace the folder's (see class_lists.py: "imagenet", a file, a list)."""
    # Names given for a class-folder tree keep every folder, empty ones too, in the names' order.
    keep_empty = {"keep_empty": True} if classnames and detect_format(path) == "imagefolder" else None
    dataset = data.open_eval_source(path, "classify", split, model_transform(model), keep_empty)
    classnames = resolve_classnames(classnames, "--classnames") if classnames else list(dataset.info["classnames"])
    templates = resolve_templates(templates) if templates else list(dataset.info["templates"])
    if len(classnames) != len(dataset.info["classnames"]):
        raise ValueError(f"{path}: {len(dataset.info['classnames'])} class folders but {len(classnames)} class names")
    result, predictions = stream_zero_shot(model, dataset, classnames, templates, options)
    return result, lambda out: write_class_predictions(out, predictions, classnames)


def stream_retrieval(model: nn.Module, path, split, options: StreamOptions, rerank_from: nn.Module | None,
                     k: int, source_options: dict | None = None) -> tuple[dict, Callable]:
    """Late or exhaustive early retrieval; with `rerank_from` (a late model), hybrid re-ranking of its top k."""
    dataset = data.open_eval_source(path, "pairs", split, model_transform(model), source_options)
    if rerank_from is not None:
        if model.config.arch != "early_fusion" or rerank_from.config.arch != "dual_encoder":
            raise ValueError("hybrid retrieval re-ranks a late-fusion model's candidates with an early-fusion "
                             "model: --checkpoint must be early fusion and --rerank-from late fusion")
        late_dataset = data.open_eval_source(path, "pairs", split, model_transform(rerank_from), source_options)
        result, pairs, t2i, i2t = stream_hybrid(rerank_from, model, late_dataset, dataset, options, k)
    elif model.config.arch == "dual_encoder":
        result, pairs, t2i, i2t = stream_late(model, dataset, options)
    else:
        result, pairs, t2i, i2t = stream_early(model, dataset, options)
    return result, lambda out: write_retrieval_predictions(out, pairs.image_ids, pairs.captions, t2i, i2t)


def stream_vqa_task(model: nn.Module, path, split, options: StreamOptions, metric: str,
                    predictions_wanted: bool) -> tuple[dict, Callable]:
    """Without annotations (VQAv2 test-dev) the answers can still be written for a submission."""
    dataset = data.open_eval_source(path, "vqa", split, model_transform(model))
    result, predictions = stream_vqa(model, dataset, options, metric, require_answers=not predictions_wanted)
    return result, lambda out: write_vqa_predictions(out, predictions)


def evaluate(task: str, checkpoint: str | Path, data_path: str | Path, split: str | None = None,
             rerank_from: str | Path | None = None, k: int = 16, vqa_metric: str = DEFAULT_VQA_METRIC,
             options: StreamOptions | None = None, predictions: str | Path | None = None,
             classnames: str | list[str] | None = None, templates: str | list[str] | None = None,
             source_options: dict | None = None, precision: str = "fp32") -> dict:
    """`vlm eval TASK`: one checkpoint on one dataset (a shapes-world folder at `split`, or a file/folder).

    Zero-shot, retrieval and VQA stream the images (memory independent of the set's size) and can write
    their predictions (`predictions`: a path); the compositional test reads its set into memory.
    `source_options`: a pairs file's columns (`data_pipelines.options.pairs_options`). `precision` (fp32, bf16,
    int8, auto) runs the model(s) as `vlm index build --precision` and `vlm serve` would (vlm.models.precision)."""
    if task not in TASKS:
        raise ValueError(f"unknown evaluation {task!r}; one of {', '.join(TASKS)}")
    model = load_model(checkpoint)
    precision = resolve_precision(precision, model_workload(model))  # auto: what this CPU runs it at
    model = with_precision(model, precision)
    options = options or StreamOptions()
    write = None
    if task == "zeroshot":
        result, write = stream_zeroshot(model, data_path, split, options, classnames, templates)
    elif task == "retrieval":
        late = with_precision(load_model(rerank_from), precision) if rerank_from else None
        result, write = stream_retrieval(model, data_path, split, options, late, k, source_options)
    elif task == "vqa":
        result, write = stream_vqa_task(model, data_path, split, options, vqa_metric, predictions is not None)
    else:
        if predictions is not None:
            raise ValueError("--predictions is written by zeroshot, retrieval and vqa, not compositional")
        result = run_compositional(model, EvalSets(data_path, split, options=source_options))
    if predictions is not None:
        write(predictions)
    return {"task": task, "checkpoint": str(resolve_checkpoint(checkpoint)), "model": model.config.name,
            "arch": model.config.arch, **run_record(precision), "data": str(data_path),
            "split": data.eval_split(data_path, split), **result}
