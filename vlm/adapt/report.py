"""`vlm adapt-report`: every adaptation method on a shifted world, at a few shots per class, same step budget.

For a base checkpoint, a source world (what it was trained on) and a target world (the same scenes in another
style, `vlm data shapes --style`): zero-shot, linear probe (late fusion), LoRA, LiT, full fine-tuning and the
WiSE-FT curve between the base and the full fine-tune. Each trained method learns from k target images per class
captioned with the class prompts ("a photo of a red circle."), for the same steps and batch; each is scored by
zero-shot top-1 on both worlds' test images (early fusion by ITM, and VQA when the model has a VQA head). WiSE-FT's
question: how much target accuracy does each method buy, and how much source accuracy does it cost?
"""

from __future__ import annotations

import csv
import io
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from vlm.adapt.measure import PeakMemory, WorldSets, measure
from vlm.adapt.wise_ft import interpolate, plain_payload
from vlm.atomic_io import atomic_write
from vlm.config import shipped_configs, to_dict
from vlm.errors import UserError
from vlm.models.checkpoint import model_from_weights, resolve_checkpoint
from vlm.models.config import model_config_from_dict
from vlm.train.config import TrainConfig, load_train_config
from vlm.train.trainable import apply_adaptation, parameter_counts

RECIPES = {"lora": "adapt-lora.yaml", "lit": "adapt-lit.yaml", "full": "adapt-full.yaml"}
METHODS = {"dual_encoder": ("zeroshot", "linear-probe", "lora", "lit", "full", "wise-ft"),
           "early_fusion": ("zeroshot", "lora", "lit", "full", "wise-ft")}


@dataclass(frozen=True)
class ReportOptions:
    shots: tuple[int, ...] = (1, 4, 16)
    steps: int = 150
    batch_size: int = 32
    eval_images: int = 500  # per world: zero-shot images and VQA questions, spread over the test split
    methods: tuple[str, ...] | None = None
    alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    recipes: str = "configs/train"
    seed: int = 0
    num_workers: int = 1


def kshot_pairs(world: Path, k: int, out: Path, seed: int) -> Path:
    """A pairs CSV of k images per class of the world's classify_train, one row per prompt template."""
    root = world / "classify_train"
    if not root.is_dir():
        raise UserError(f"{world}: no classify_train folder (is it a shapes world? vlm data shapes --out ...)")
    classnames = (root / "classnames.txt").read_text().splitlines()
    templates = (root / "templates.txt").read_text().splitlines()
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    rng = random.Random(f"{seed}-{k}")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "caption"])
    for folder, name in zip(folders, classnames, strict=True):
        images = sorted(folder.glob("*.png"))
        for image in rng.sample(images, min(k, len(images))):
            writer.writerows((str(image.resolve()), t.replace("{}", name)) for t in templates)
    with atomic_write(out, "w") as f:
        f.write(buffer.getvalue())
    return out


def method_recipe(method: str, base: Path, pairs: Path, arch: str, options: ReportOptions) -> TrainConfig:
    """The method's configs/train/adapt-*.yaml, pointed at the base checkpoint and the k-shot pairs."""
    path = Path(options.recipes) / RECIPES[method]
    if not path.is_file() and Path(options.recipes) == Path("configs/train"):  # the default, from anywhere
        path = shipped_configs() / "train" / RECIPES[method]
    if not path.is_file():
        raise UserError(f"{path}: recipe not found; give --recipes, a folder holding {RECIPES[method]}")
    warmup = max(1, options.steps // 10)
    overrides = [f"model={base}", f"data.train={pairs}", "data.val_samples=0",
                 f"data.num_workers={options.num_workers}", f"steps={options.steps}",
                 f"batch_size={options.batch_size}", f"warmup_steps={warmup}", f"save_every={options.steps}",
                 f"eval_every={options.steps}", f"log_every={max(1, options.steps // 5)}", f"seed={options.seed}"]
    if arch == "early_fusion":  # ITM only, as the quickstart trains it
        overrides += ["objective=fusion", "mlm_weight=0", "itm_negative_temperature=0.1"]
    return load_train_config(path, overrides)


def trained_row(method: str, k: int, base: Path, pairs: Path, arch: str, out: Path,
                options: ReportOptions) -> tuple[dict, nn.Module]:
    from vlm.models import load_model
    from vlm.train import train

    config = method_recipe(method, base, pairs, arch, options)
    run_dir = out / "runs" / f"{method}-{k}shot"
    shutil.rmtree(run_dir, ignore_errors=True)
    with PeakMemory() as memory:
        start = time.perf_counter()
        checkpoint = train(config, run_dir)
        seconds = time.perf_counter() - start
    model = load_model(checkpoint)  # a LoRA run's adapters merged
    trainable, total = trainable_of(model, config)
    return {"method": method, "shots": k, "trainable_params": trainable, "total_params": total,
            "train_s": seconds, "peak_mb": memory.peak_mb}, model


def trainable_of(model: nn.Module, config: TrainConfig) -> tuple[int, int]:
    """What the run trained, counted on a fresh copy adapted the same way (adapters included)."""
    from vlm.models.registry import build_model

    return parameter_counts(apply_adaptation(build_model(model.config), config))


def probe_row(base_model: nn.Module, k: int, target: Path, sets: dict, options: ReportOptions) -> dict:
    """Logistic regression on the base model's image features of k target images per class (vlm/eval)."""
    from vlm.eval.data import load_classification
    from vlm.eval.linear_probe import accuracy, fit_probe, image_features, kshot_indices
    from vlm.models.preprocess import model_transform

    with PeakMemory() as memory:
        start = time.perf_counter()
        if "probe_train" not in sets:  # features of the whole train and val splits, once for every k
            transform = model_transform(base_model)
            for split in ("train", "val"):
                d = load_classification(target, transform, split)
                sets[f"probe_{split}"] = (image_features(base_model, d.images), d.labels.numpy())
        (train_x, train_y), (val_x, val_y) = sets["probe_train"], sets["probe_val"]
        rows = kshot_indices(train_y, k, options.seed)
        clf, c = fit_probe(train_x[rows], train_y[rows], val_x, val_y)
        seconds = time.perf_counter() - start
    scores = {}
    for name, world in (("target", sets["target"]), ("source", sets["source"])):
        d = world.classification(base_model)
        scores[name] = accuracy(clf, image_features(base_model, d.images), d.labels.numpy())
    trainable = clf.coef_.size + clf.intercept_.size
    return {"method": "linear-probe", "shots": k, "C": c, **scores, "trainable_params": trainable,
            "total_params": trainable + sum(p.numel() for p in base_model.parameters()),
            "train_s": seconds, "peak_mb": memory.peak_mb}


def wise_ft_rows(base_payload: dict, full_model: nn.Module, k: int, full_row: dict, sets: dict,
                 options: ReportOptions) -> list[dict]:
    finetuned = {**base_payload, "config": to_dict(full_model.config), "model": full_model.state_dict()}
    rows = []
    for alpha in options.alphas:
        payload = interpolate(base_payload, finetuned, alpha)
        model = model_from_weights(model_config_from_dict(payload["config"]), payload["model"]).eval()
        rows.append({"method": "wise-ft", "shots": k, "alpha": alpha, **measure(model, sets["source"],
                                                                               sets["target"]),
                     **{f: full_row[f] for f in ("trainable_params", "total_params", "train_s", "peak_mb")}})
    return rows


def adapt_report(base: str | Path, source: str | Path, target: str | Path, out: str | Path,
                 options: ReportOptions = ReportOptions()) -> dict:
    """Run every method, write report.json, report.md and the two plots to `out`; return the report."""
    from vlm.adapt.report_plots import plot_params, plot_tradeoff
    from vlm.models import load_model

    out, source, target = Path(out), Path(source), Path(target)
    base = resolve_checkpoint(base).resolve()
    base_model, base_payload = load_model(base), plain_payload(base)
    arch = base_model.config.arch
    methods = options.methods or METHODS[arch]
    unknown = [m for m in methods if m not in METHODS[arch]]
    if unknown:
        raise UserError(f"--methods: {unknown} not available for {arch}; choose from {list(METHODS[arch])}")
    sets = {"source": WorldSets(source, options.eval_images), "target": WorldSets(target, options.eval_images)}
    started = time.perf_counter()
    rows = []
    if "zeroshot" in methods:
        rows.append({"method": "zeroshot", "shots": 0, **measure(base_model, sets["source"], sets["target"]),
                     "trainable_params": 0, "total_params": sum(p.numel() for p in base_model.parameters()),
                     "train_s": 0.0, "peak_mb": 0.0})
    for k in options.shots:
        pairs = kshot_pairs(target, k, out / "data" / f"pairs_{k}shot.csv", options.seed)
        if "linear-probe" in methods:
            rows.append(probe_row(base_model, k, target, sets, options))
        for method in ("lora", "lit", "full"):
            if method in methods or (method == "full" and "wise-ft" in methods):
                row, model = trained_row(method, k, base, pairs, arch, out, options)
                row.update(measure(model, sets["source"], sets["target"]))
                if method in methods:
                    rows.append(row)
                if method == "full" and "wise-ft" in methods:
                    rows += wise_ft_rows(base_payload, model, k, row, sets, options)
    report = {"base": str(base), "model": base_model.config.name, "arch": arch, "source": str(source),
              "target": str(target), "options": {**asdict(options), "methods": list(methods)},
              "wall_s": time.perf_counter() - started, "rows": rows}
    write_report(report, out)
    plot_tradeoff(report, out / "adapt_tradeoff.png")
    plot_params(report, out / "adapt_params.png")
    return report


def table_rows(report: dict) -> list[dict]:
    """The table's rows: every method at every shot, WiSE-FT at alpha 0.5 (or its middle alpha)."""
    alphas = sorted({r["alpha"] for r in report["rows"] if r["method"] == "wise-ft"})
    shown = 0.5 if 0.5 in alphas else (alphas[len(alphas) // 2] if alphas else None)
    return [r for r in report["rows"] if r["method"] != "wise-ft" or r["alpha"] == shown]


def format_table(report: dict) -> str:
    vqa = any("target_vqa" in r for r in report["rows"])
    head = ["method", "shots", "target top-1", "source top-1", "mean", *(["target VQA", "source VQA"] if vqa else []),
            "trainable params", "trainable %", "train s", "peak MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table_rows(report):
        name = r["method"] + (f" (alpha {r['alpha']:g})" if "alpha" in r else "")
        cells = [name, str(r["shots"]), f"{r['target']:.1f}", f"{r['source']:.1f}",
                 f"{(r['target'] + r['source']) / 2:.1f}"]
        if vqa:
            cells += [f"{r.get('target_vqa', float('nan')):.1f}", f"{r.get('source_vqa', float('nan')):.1f}"]
        cells += [f"{r['trainable_params']:,}", f"{100 * r['trainable_params'] / r['total_params']:.2f}",
                  f"{r['train_s']:.1f}", "-" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def wise_ft_summary(report: dict) -> str:
    """Per shot count, the alpha with the best mean of source and target against the two ends (chosen on the
    test images themselves: it says whether some alpha beats both ends, not which alpha to ship)."""
    lines = []
    for k in sorted({r["shots"] for r in report["rows"] if r["method"] == "wise-ft"}):
        curve = sorted((r for r in report["rows"] if r["method"] == "wise-ft" and r["shots"] == k),
                       key=lambda r: r["alpha"])
        mean = {r["alpha"]: (r["source"] + r["target"]) / 2 for r in curve}
        best = max(mean, key=mean.get)
        lines.append(f"- {k} shots: best mean {mean[best]:.1f} at alpha {best:g}; alpha {curve[0]['alpha']:g} "
                     f"{mean[curve[0]['alpha']]:.1f}, alpha {curve[-1]['alpha']:g} {mean[curve[-1]['alpha']]:.1f}; "
                     "curve: " + ", ".join(f"{a:g}: {m:.1f}" for a, m in mean.items()))
    return "WiSE-FT, mean of source and target top-1 along the curve:\n\n" + "\n".join(lines) if lines else ""


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "report.json", "w") as f:
        f.write(json.dumps(report, indent=1) + "\n")
    text = (f"# Adaptation report: {report['model']} ({report['arch']})\n\nsource {report['source']}, target "
            f"{report['target']}; {report['options']['steps']} steps of batch {report['options']['batch_size']} "
            f"per trained method; zero-shot top-1 (%) on each world's test images; whole report "
            f"{report['wall_s']:.0f} s.\n\n{format_table(report)}\n\n{wise_ft_summary(report)}\n\n"
            "![target vs source](adapt_tradeoff.png)\n![accuracy vs trainable parameters](adapt_params.png)\n")
    with atomic_write(out / "report.md", "w") as f:
        f.write(text)
