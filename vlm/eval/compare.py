"""`vlm compare`: late against early fusion on every evaluation, with blind baselines and cost, in one report.

Every figure in report.md comes from report.json (the markdown is rendered from it), so the two never
disagree. Blind baselines say how much of a score needs the image at all: chance for zero-shot and
retrieval, the question-only prior for VQA, a text-only language model for the compositional test.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from vlm.atomic_io import atomic_write
from vlm.eval import data
from vlm.eval.compositional import evaluate_text_only
from vlm.eval.cost import model_cost, query_latency
from vlm.eval.report import format_summary_table, render_markdown
from vlm.eval.retrieval import evaluate_early, evaluate_late, hybrid_from_exhaustive
from vlm.eval.retrieval_metric import chance_retrieval_metrics
from vlm.eval.run import EvalSets, run_compositional, run_vqa, run_zeroshot
from vlm.eval.vqa import evaluate_question_only
from vlm.eval.vqa_metric import DEFAULT_VQA_METRIC
from vlm.eval.zeroshot import chance_classification_metrics
from vlm.models import load_model
from vlm.models.checkpoint import CHECKPOINT_NAME, resolve_checkpoint
from vlm.models.cpu import cpu_class
from vlm.models.precision import model_workload, resolve_precision, with_precision

__all__ = ["compare", "format_summary_table", "write_report"]

log = logging.getLogger(__name__)

DEFAULT_HYBRID_KS = (1, 4, 16, 64)
# Enough images that k = 16 is a small share of exhaustive scoring (16 / 200 of the text->image pairs), few
# enough that exhaustive early fusion (200 x 3 captions x 200 pairs) stays minutes on a CPU.
DEFAULT_MAX_RETRIEVAL_IMAGES = 200
HEADLINE_K = 16  # the k the acceptance figure is stated for, when it is among the ks asked for


def find_vqa_checkpoint(run: str | Path, model: nn.Module, given: str | Path | None) -> Path | None:
    """The VQA model of a family: `given`, else the run itself (`model`) when it has a VQA head, else `<run>-vqa/`."""
    if given is not None:
        return resolve_checkpoint(given)
    path = resolve_checkpoint(run)
    if model.config.vqa_answers:
        return path
    run_dir = Path(run) if Path(run).is_dir() else path.parent
    sibling = run_dir.with_name(run_dir.name + "-vqa") / CHECKPOINT_NAME
    return sibling if sibling.is_file() else None


def compare_retrieval(late: nn.Module, early: nn.Module, sets: EvalSets, ks: tuple[int, ...]) -> dict:
    """Late, exhaustive early, and hybrid at each k, whose scores come from the exhaustive run."""
    late_set, early_set = sets.get("retrieval", late), sets.get("retrieval", early)
    n_images, text_to_image = len(late_set.images), late_set.text_to_image
    late_result, late_scores = evaluate_late(late, late_set.images, late_set.captions, text_to_image,
                                             return_scores=True)
    early_result, early_scores = evaluate_early(early, early_set.images, early_set.captions, text_to_image,
                                                return_scores=True)
    hybrid = {str(k): hybrid_from_exhaustive(late_scores, early_scores, text_to_image, k) for k in ks}
    return {"late": late_result, "early": early_result, "hybrid": hybrid,
            "random": chance_retrieval_metrics(text_to_image, n_images)}


def headline_k(ks: tuple[int, ...]) -> int | None:
    """The k the report's headline states: HEADLINE_K when it was run, else the largest k run."""
    return HEADLINE_K if HEADLINE_K in ks else max(ks, default=None)


def hybrid_vs_early(retrieval: dict, k: int | None = HEADLINE_K) -> dict | None:
    """How much of exhaustive early fusion's R@1 hybrid re-ranking at k keeps, and at what share of its passes."""
    hybrid, early = retrieval["hybrid"].get(str(k)), retrieval["early"]
    if hybrid is None:
        return None
    exhaustive = early["fusion_passes"]
    result = {"k": k, "fusion_passes_percent": 100 * hybrid["fusion_passes"] / exhaustive,
              "text_to_image_fusion_passes_percent": 100 * hybrid["fusion_passes_text_to_image"] / exhaustive,
              "image_to_text_fusion_passes_percent": 100 * hybrid["fusion_passes_image_to_text"] / exhaustive}
    for direction in ("image_retrieval", "text_retrieval"):
        r1 = early[f"{direction}_recall@1"]
        result[f"{direction}_recall@1_kept_percent"] = 100 * hybrid[f"{direction}_recall@1"] / r1 if r1 else None
    return result


def compare_vqa(late_vqa: nn.Module | None, early_vqa: nn.Module | None, sets: EvalSets,
                training_questions: tuple[list, list, list], metric: str = DEFAULT_VQA_METRIC) -> dict:
    result = {}
    for name, model in (("late", late_vqa), ("early", early_vqa)):
        if model is not None:
            result[name] = run_vqa(model, sets, metric=metric)
            result[f"{name}_image_zeroed"] = run_vqa(model, sets, zero_images=True, metric=metric)
    if result:
        any_model = late_vqa if late_vqa is not None else early_vqa
        d = sets.get("vqa", any_model)
        result["question_only"] = evaluate_question_only(*training_questions, d.questions,
                                                         d.answers, d.answer_types, d.question_families, metric)
    return result


def compare_compositional(late: nn.Module, early: nn.Module, sets: EvalSets, training_captions: list[str]) -> dict:
    result = {"late": run_compositional(late, sets), "early": run_compositional(early, sets)}
    d = sets.get("compositional", late)
    result["text_only"] = evaluate_text_only(training_captions, d.captions, d.negatives,
                                             d.negative_types)
    return result


def compare_heldout(late: nn.Module, early: nn.Module, vqa_models: list[nn.Module | None], data_dir: Path,
                    split: str, training_questions: tuple[list, list, list],
                    training_captions: list[str], vqa_metric: str = DEFAULT_VQA_METRIC) -> dict | None:
    """VQA and compositional accuracy on the split of unseen colour-shape combinations, if there is one."""
    if not (data_dir / f"compositional_{split}.jsonl").is_file():
        return None
    sets = EvalSets(data_dir, split)
    return {"split": split, "vqa": compare_vqa(*vqa_models, sets, training_questions, vqa_metric),
            "compositional": compare_compositional(late, early, sets, training_captions)}


def compare_cost(late: nn.Module, early: nn.Module, sets: EvalSets, ks: tuple[int, ...],
                 latency_queries: int, throughput_batch: int) -> dict:
    late_set = sets.get("retrieval", late)
    early_set = sets.get("retrieval", early)
    queries = late_set.captions[:latency_queries]
    return {
        "late": model_cost(late, throughput_batch),
        "early": model_cost(early, throughput_batch),
        "latency": query_latency(late, early, late_set.images, early_set.images, queries, ks),
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
    }


def compare_zeroshot(late: nn.Module, early: nn.Module, sets: EvalSets) -> dict:
    result = {"late": run_zeroshot(late, sets), "early": run_zeroshot(early, sets)}
    classes = sets.get("zeroshot", late)
    result["chance"] = chance_classification_metrics(len(classes.classnames))
    return result


def load_families(late_ckpt: str | Path, early_ckpt: str | Path) -> tuple[nn.Module, nn.Module]:
    late, early = load_model(late_ckpt), load_model(early_ckpt)
    if late.config.arch != "dual_encoder" or early.config.arch != "early_fusion":
        raise ValueError(f"--late must be a late-fusion (dual_encoder) model and --early an early-fusion model; "
                         f"got {late.config.arch} and {early.config.arch}")
    return late, early


def compare(late_ckpt: str | Path, early_ckpt: str | Path, data_dir: str | Path, out_dir: str | Path, *,
            split: str = "val", late_vqa_ckpt: str | Path | None = None,
            early_vqa_ckpt: str | Path | None = None, hybrid_ks: tuple[int, ...] = DEFAULT_HYBRID_KS,
            max_retrieval_images: int | None = DEFAULT_MAX_RETRIEVAL_IMAGES, latency_queries: int = 20,
            throughput_batch: int = 64, heldout_split: str | None = "heldout", plots: bool = True,
            vqa_metric: str = DEFAULT_VQA_METRIC, precision: str = "fp32") -> dict:
    """Evaluate both families (and the blind baselines) on a shapes-world folder; write report.{json,md} + PNGs.

    `late_ckpt` / `early_ckpt` are checkpoint files or run folders. VQA uses `*_vqa_ckpt`, else the model
    itself if it has a VQA head, else a sibling run folder named `<run>-vqa`. Exhaustive early-fusion
    retrieval is quadratic, so retrieval uses the first `max_retrieval_images` images (None: all).
    VQA and the compositional test are repeated on `heldout_split` (colour-shape pairs never seen in
    training) when the folder has it. Every model runs at `precision` (vlm.models.precision; auto per family).
    Returns the report dict.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not data.is_shapes_world(data_dir):
        raise ValueError(f"{data_dir}: vlm compare needs a shapes-world folder (with world.json and its splits)")
    late, early = load_families(late_ckpt, early_ckpt)
    vqa_paths = (find_vqa_checkpoint(late_ckpt, late, late_vqa_ckpt),
                 find_vqa_checkpoint(early_ckpt, early, early_vqa_ckpt))
    loaded = {resolve_checkpoint(late_ckpt): late, resolve_checkpoint(early_ckpt): early}
    vqa_models = [(loaded.get(p) or load_model(p)) if p else None for p in vqa_paths]
    precisions = {"late": resolve_precision(precision, "encode"), "early": resolve_precision(precision, "score")}
    late, early = with_precision(late, precisions["late"]), with_precision(early, precisions["early"])
    vqa_models = [with_precision(m, resolve_precision(precision, model_workload(m))) if m is not None else None
                  for m in vqa_models]
    training_questions, training_captions = data.training_questions(data_dir), data.training_captions(data_dir)
    sets = EvalSets(data_dir, split, max_retrieval_images)
    n_images = len(sets.get("retrieval", late).images)
    hybrid_ks = tuple(k for k in sorted(set(hybrid_ks)) if k < n_images)
    log.info("compare: zero-shot")
    zeroshot = compare_zeroshot(late, early, sets)
    log.info("compare: retrieval")
    retrieval = compare_retrieval(late, early, sets, hybrid_ks)
    log.info("compare: VQA")
    vqa = compare_vqa(*vqa_models, sets, training_questions, vqa_metric)
    log.info("compare: compositional")
    compositional = compare_compositional(late, early, sets, training_captions)
    heldout = (compare_heldout(late, early, vqa_models, data_dir, heldout_split, training_questions,
                               training_captions, vqa_metric) if heldout_split else None)
    log.info("compare: cost")
    cost = compare_cost(late, early, sets, hybrid_ks, latency_queries, throughput_batch)
    report = {
        "setup": {"late_checkpoint": str(resolve_checkpoint(late_ckpt)), "late_model": late.config.name,
                  "early_checkpoint": str(resolve_checkpoint(early_ckpt)), "early_model": early.config.name,
                  "late_vqa_checkpoint": str(vqa_paths[0]) if vqa_paths[0] else None,
                  "early_vqa_checkpoint": str(vqa_paths[1]) if vqa_paths[1] else None,
                  "data": str(data_dir), "split": split, "max_retrieval_images": max_retrieval_images,
                  "vqa_metric": vqa_metric, "precision": precisions, "cpu_class": cpu_class()},
        "zeroshot": zeroshot, "retrieval": retrieval,
        "hybrid_vs_early": hybrid_vs_early(retrieval, headline_k(hybrid_ks)),
        "vqa": vqa, "compositional": compositional, "heldout": heldout, "cost": cost,
    }
    write_report(report, out_dir, plots)
    return report


def write_report(report: dict, out_dir: Path, plots: bool = True) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_dir / "report.json", "w") as f:
        json.dump(report, f, indent=2)
    images = []
    if plots:
        from vlm.eval.plots import write_plots
        images = write_plots(report, out_dir)
    with atomic_write(out_dir / "report.md", "w") as f:
        f.write(render_markdown(report, [p.name for p in images]))
