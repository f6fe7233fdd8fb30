"""WiSE-FT (Wortsman et al. 2022): weight-space interpolation of a zero-shot and a fine-tuned checkpoint.

theta(alpha) = (1 - alpha) * theta_zeroshot + alpha * theta_finetuned. Fine-tuning moves a pretrained model
little enough that the straight line between the two stays in a good basin; on ImageNet and its shifts
(ViT-L/14@336) alpha 0.5 beat both ends (86.8 / 76.9 vs 76.2 / 73.3 zero-shot and 86.2 / 68.6 fine-tuned).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlm.errors import UserError
from vlm.models.checkpoint import model_payload, read_checkpoint, save_checkpoint
from vlm.models.lora import lora_of, merged_model


def plain_payload(path: str | Path) -> dict[str, Any]:
    """A checkpoint's config and weights, a LoRA run's merged first (WiSE-FT needs both in the same names)."""
    payload = read_checkpoint(path)
    if lora_of(payload) is not None:
        payload = model_payload(merged_model(payload, str(path)))
    return {"format": payload["format"], "version": payload["version"], "config": payload["config"],
            "model": payload["model"]}


def check_same_architecture(a: dict, b: dict, names: tuple[str, str]) -> None:
    """Refuse two checkpoints whose weights do not line up, naming the first parameter that differs."""
    wa, wb = a["model"], b["model"]
    for key in list(wa) + [k for k in wb if k not in wa]:
        if key not in wa or key not in wb:
            has, lacks = (names[0], names[1]) if key in wa else (names[1], names[0])
            raise UserError(f"different architectures: parameter {key} is in {has} but not in {lacks}")
        if wa[key].shape != wb[key].shape:
            raise UserError(f"different architectures: parameter {key} has shape {tuple(wa[key].shape)} in "
                            f"{names[0]} and {tuple(wb[key].shape)} in {names[1]}")
    ca = {k: v for k, v in a["config"].items() if k != "name"}
    cb = {k: v for k, v in b["config"].items() if k != "name"}
    for key in ca:
        if ca[key] != cb.get(key):
            raise UserError(f"different architectures: config field {key} is {ca[key]!r} in {names[0]} and "
                            f"{cb.get(key)!r} in {names[1]}")


def interpolate(zeroshot: dict, finetuned: dict, alpha: float) -> dict[str, Any]:
    """The payload at `alpha`; alpha 0 and 1 are the inputs' own tensors, bit for bit."""
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"alpha must be between 0 and 1, got {alpha}")
    end = zeroshot if alpha < 0.5 else finetuned  # the config and any integer buffers of the nearer end
    weights = {}
    for key, a in zeroshot["model"].items():
        b = finetuned["model"][key]
        if alpha in (0.0, 1.0) or not a.is_floating_point():
            weights[key] = (a if alpha < 0.5 else b).clone()
        else:
            weights[key] = torch.lerp(a.float(), b.float(), alpha).to(a.dtype)
    return {"format": end["format"], "version": end["version"], "config": end["config"], "model": weights}


def wise_ft(zeroshot_path: str | Path, finetuned_path: str | Path, alpha: float, out: str | Path) -> Path:
    """`vlm wise-ft --zeroshot A --finetuned B --alpha 0.5 --out C`."""
    a, b = plain_payload(zeroshot_path), plain_payload(finetuned_path)
    check_same_architecture(a, b, (str(zeroshot_path), str(finetuned_path)))
    save_checkpoint(interpolate(a, b, alpha), out)
    return Path(out)


def parse_alphas(text: str) -> list[float]:
    try:
        alphas = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--alphas: expected numbers separated by commas, got {text!r}") from None
    if not alphas or any(not 0 <= a <= 1 for a in alphas):
        raise UserError(f"--alphas: expected numbers between 0 and 1, got {text!r}")
    return alphas


def parse_eval_spec(text: str) -> tuple[str, str, str | None]:
    """`TASK:DATA[:SPLIT]`, e.g. `zeroshot:data/shapes-outline:test`."""
    from vlm.eval.run import TASKS

    task, _, rest = text.partition(":")
    data, _, split = rest.partition(":")
    if task not in TASKS or not data:
        raise UserError(f"--eval {text!r}: expected TASK:DATA[:SPLIT] with TASK one of {', '.join(TASKS)}")
    return task, data, split or None


def headline(task: str, result: dict) -> float:
    """The one number of a task's result that a curve plots."""
    key = {"zeroshot": "acc1", "vqa": "vqa_accuracy", "retrieval": "image_retrieval_recall@1",
           "compositional": "compositional_accuracy"}[task]
    return float(result[key])


def wise_ft_curve(zeroshot_path: str | Path, finetuned_path: str | Path, alphas: list[float],
                  evals: list[str]) -> list[dict]:
    """Each alpha's model, evaluated in memory on every `TASK:DATA[:SPLIT]`: one row per alpha."""
    from vlm.eval.run import TASKS, EvalSets
    from vlm.models.checkpoint import model_from_weights
    from vlm.models.config import model_config_from_dict

    a, b = plain_payload(zeroshot_path), plain_payload(finetuned_path)
    check_same_architecture(a, b, (str(zeroshot_path), str(finetuned_path)))
    specs = [parse_eval_spec(e) for e in evals]
    sets = {(data, split): EvalSets(data, split) for _, data, split in specs}
    rows = []
    for alpha in alphas:
        payload = interpolate(a, b, alpha)
        model = model_from_weights(model_config_from_dict(payload["config"]), payload["model"]).eval()
        row = {"alpha": alpha}
        for (task, data, split), text in zip(specs, evals, strict=True):
            row[text] = headline(task, TASKS[task](model, sets[(data, split)]))
        rows.append(row)
    return rows
