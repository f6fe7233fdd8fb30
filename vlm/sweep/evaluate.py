"""Every ability of one grid point, on each split, with the blind baseline beside it.

Abilities (percent): retrieval R@1 both ways (late, exhaustive early, hybrid re-ranking of the late top k),
VQA overall and per question family (through the probe, probe.py), compositional two-way accuracy overall and
per negative type. Blind baselines, as `vlm compare` has them: random ranking for retrieval; for VQA the
stronger of the question-only prior and the same probed model with every image zeroed; the text-only bigram
model for the compositional test. The evaluators are `vlm compare`'s own functions.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from vlm.eval import data
from vlm.eval.compare import compare_compositional, compare_retrieval, compare_vqa
from vlm.eval.run import EvalSets
from vlm.models.preprocess import model_transform
from vlm.sweep.config import SweepConfig
from vlm.sweep.probe import ProbeData, load_probe_data, train_probe

FAMILIES = ("late", "early")


def retrieval_abilities(result: dict) -> dict[str, float]:
    return {"retrieval/t2i_r1": result["image_retrieval_recall@1"],
            "retrieval/i2t_r1": result["text_retrieval_recall@1"]}


def vqa_abilities(result: dict) -> dict[str, float]:
    return {"vqa": result["vqa_accuracy"],
            **{f"vqa/{family}": v for family, v in sorted(result.get("per_question_family", {}).items())}}


def compositional_abilities(result: dict) -> dict[str, float]:
    return {"compositional": result["compositional_accuracy"],
            **{f"compositional/{kind}": v for kind, v in sorted(result["per_negative_type"].items())}}


def stronger(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: max(a[k], b[k]) if k in b else a[k] for k in a}


class PointEvaluator:
    """Loads what every point is evaluated on once per invocation: each split's sets (at each preprocessing),
    the probe's training questions, and the training text the blind baselines learn from."""

    def __init__(self, config: SweepConfig):
        self.config, self.data_dir = config, Path(config.data_dir)
        self.sets = {split: EvalSets(self.data_dir, split, config.max_retrieval_images) for split in config.splits}
        self.training_captions = data.training_captions(self.data_dir)
        self.training_questions = data.training_questions(self.data_dir)
        self._probe_data: dict[str, ProbeData] = {}

    def probe_data(self, model: nn.Module) -> ProbeData:
        key = repr(model_transform(model))
        if key not in self._probe_data:
            self._probe_data[key] = load_probe_data(self.data_dir, model_transform(model), self.config.vqa_probe)
        return self._probe_data[key]

    def evaluate(self, late: nn.Module, early: nn.Module) -> dict[str, dict]:
        """{family: {"metrics": {split: {ability: %}}, "baselines": {split: {ability: %}}}} for late, early and
        hybrid (retrieval only)."""
        probes = {name: train_probe(model, self.probe_data(model), self.config.vqa_probe, self.config.seed)
                  for name, model in (("late", late), ("early", early))}
        out = {name: {"metrics": {}, "baselines": {}} for name in (*FAMILIES, "hybrid")}
        for split, sets in self.sets.items():
            retrieval = compare_retrieval(late, early, sets, (self.config.hybrid_k,))
            hybrid = retrieval["hybrid"][str(self.config.hybrid_k)]
            compositional = compare_compositional(late, early, sets, self.training_captions)
            vqa = compare_vqa(probes["late"], probes["early"], sets, self.training_questions)
            chance = retrieval_abilities(retrieval["random"])
            prior = vqa_abilities(vqa["question_only"])
            for name in FAMILIES:
                out[name]["metrics"][split] = {**retrieval_abilities(retrieval[name]), **vqa_abilities(vqa[name]),
                                               **compositional_abilities(compositional[name])}
                out[name]["baselines"][split] = {
                    **chance, **stronger(prior, vqa_abilities(vqa[f"{name}_image_zeroed"])),
                    **compositional_abilities(compositional["text_only"])}
            out["hybrid"]["metrics"][split] = retrieval_abilities(hybrid)
            out["hybrid"]["baselines"][split] = chance
        return out
