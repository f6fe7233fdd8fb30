"""`vlm bench train`: pairs/s of the trainer's own step against a reference step, the same weights and batch.

vlm runs `Trainer.step` (the task `build_task` makes, the optimizer and gradient clipping the trainer uses) on
one real batch of the shapes world, collated as training collates it, repeated every round. Late fusion is timed
against OpenCLIP's step, early fusion (MLM on) against today's fusion step (vlm/bench/train_reference.py).
Rounds are interleaved and each side reports its median; the float32 matmul ceiling measured in the same run
puts the achieved GFLOP/s (forward + backward, FlopCounterMode) in proportion. Before the first step both sides
compute the loss of the batch on the same weights: they must agree to float tolerance.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

LOSS_TOLERANCE = 1e-4  # relative; float32 sums in a different order
BF16_LOSS_TOLERANCE = 2e-2  # relative, at bf16: each side rounds its own matmuls to 8 bits of mantissa


def register_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="pairs/s of the trainer's step vs OpenCLIP's (late) and today's fusion step")
    p.add_argument("--families", nargs="+", choices=["clip", "fusion"], default=["clip", "fusion"])
    p.add_argument("--against", choices=["openclip"], default="openclip",
                   help="late fusion's reference (early fusion's is today's fusion step)")
    p.add_argument("--clip-model", default="clip-small", help="late-fusion model (random init)")
    p.add_argument("--clip-batch", type=int, default=64)
    p.add_argument("--fusion-model", default="fusion-small", help="early-fusion model (random init)")
    p.add_argument("--fusion-batch", type=int, default=32)
    p.add_argument("--mlm-weight", type=float, default=1.0, help="early fusion: loss = ITM + this x MLM")
    p.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                   help="both sides' step: bf16 under CPU autocast (OpenCLIP as its amp_bf16), each side also timed "
                        "at fp32 for its own speed-up; auto: vlm's choice for training on this CPU")
    p.add_argument("--rounds", type=int, default=25,
                   help="timed steps per side (one step each, and a step is noisy); each side reports its median")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the report to this JSON file")
    p.set_defaults(func=cmd_bench_train)


def shapes_batch(model, objective: str, batch_size: int, seed: int, folder: Path) -> dict:
    """A batch as the trainer gets it: shapes-world pairs at the model's resolution through its preprocessing,
    collated to the batch's longest caption."""
    import torch

    from data_pipelines.shapes import generate_shapes_world
    from vlm.models import image_size
    from vlm.tokenizer import get_tokenizer
    from vlm.train.data import make_collator, open_split

    world = generate_shapes_world(folder, train=batch_size, val=0, test=0, heldout=0,
                                  image_size=image_size(model), seed=seed)
    data = open_split(str(world), "train", objective, model.config, augment=False)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:batch_size].tolist()
    return make_collator(get_tokenizer(model))([data[i] for i in order])


def step_flops(step) -> int:
    """FLOPs of one training step (forward and backward; attention on the math path so it is counted)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def late_runs(args: argparse.Namespace, folder: Path) -> dict:
    """Both sides of the clip step: (vlm step, reference step, vlm loss, reference loss, pairs)."""
    import torch

    import vlm
    from vlm.bench.encode import reference_context
    from vlm.bench.train_reference import OpenClipStep
    from vlm.train.config import TrainConfig
    from vlm.train.trainer import Trainer

    torch.manual_seed(args.seed)
    model = vlm.create_model(args.clip_model)
    config = TrainConfig(model=args.clip_model, objective="clip", batch_size=args.clip_batch, seed=args.seed,
                         precision=args.precision)
    batch = shapes_batch(model, "clip", args.clip_batch, args.seed, folder / "shapes")
    reference = OpenClipStep(model, config, folder / "openclip")
    trainer = Trainer(copy.deepcopy(model), config)
    images, texts = reference.inputs(batch)
    at = reference_context(args.precision)
    with torch.no_grad(), trainer.autocast():
        vlm_loss = float(trainer.task(batch, 0)[0])
    with torch.no_grad(), at:
        losses = (vlm_loss, float(reference.loss(images, texts)))

    def theirs(precision=args.precision):
        with reference_context(precision):
            return reference.step(images, texts)

    runs = {"vlm": lambda: trainer.step([batch]), "reference": theirs, "losses": losses, "pairs": args.clip_batch,
            "name": f"{args.clip_model} step, batch {args.clip_batch}", "reference_name": "OpenCLIP"}
    return with_own_fp32(runs, model, config, batch, lambda: theirs("fp32"))


def with_own_fp32(runs: dict, model, config, batch: dict, reference_fp32) -> dict:
    """`runs` plus each side's fp32 step (vlm32, ref32) when the bench runs at another precision."""
    import dataclasses

    from vlm.train.trainer import Trainer

    if config.precision == "fp32":
        return runs
    trainer = Trainer(copy.deepcopy(model), dataclasses.replace(config, precision="fp32"))
    return {**runs, "vlm32": lambda: trainer.step([batch]), "ref32": reference_fp32}


def early_runs(args: argparse.Namespace, folder: Path) -> dict:
    """Both sides of the fusion step, as `late_runs`."""
    import torch

    import vlm
    from vlm.bench.encode import reference_context
    from vlm.bench.train_reference import TodaysFusionStep
    from vlm.train.config import TrainConfig
    from vlm.train.trainer import Trainer

    torch.manual_seed(args.seed)
    model = vlm.create_model(args.fusion_model)
    config = TrainConfig(model=args.fusion_model, objective="fusion", batch_size=args.fusion_batch,
                         mlm_weight=args.mlm_weight, seed=args.seed, precision=args.precision)
    batch = shapes_batch(model, "fusion", args.fusion_batch, args.seed, folder / "shapes")
    reference = TodaysFusionStep(copy.deepcopy(model), config)
    trainer = Trainer(copy.deepcopy(model), config)
    with torch.no_grad(), trainer.autocast():
        vlm_loss = float(trainer.task(batch, 0)[0])
    with torch.no_grad(), reference_context(args.precision):
        losses = (vlm_loss, float(reference.loss(batch, 0)))

    def theirs(precision=args.precision):
        with reference_context(precision):
            return reference.step(batch)

    runs = {"vlm": lambda: trainer.step([batch]), "reference": theirs, "losses": losses, "pairs": args.fusion_batch,
            "reference_name": "today's fusion step",
            "name": f"{args.fusion_model} step, batch {args.fusion_batch}, MLM weight {args.mlm_weight:g}"}
    return with_own_fp32(runs, model, config, batch, lambda: theirs("fp32"))


def bench_family(runs: dict, rounds: int, tolerance: float = LOSS_TOLERANCE) -> dict:
    """Time both sides interleaved (and each at fp32, when given); one report row."""
    from statistics import median

    from vlm.bench.timing import interleaved_seconds, rate

    flops = {side: step_flops(runs[side]) for side in ("vlm", "reference")}  # also the warm-up step
    sides = [side for side in ("vlm", "reference", "vlm32", "ref32") if side in runs]
    seconds = interleaved_seconds({side: runs[side] for side in sides}, rounds)
    ours, theirs = (rate(runs["pairs"], seconds[side], flops[side]) for side in ("vlm", "reference"))
    vlm_loss, reference_loss = runs["losses"]
    row = {"workload": runs["name"], "reference_name": runs["reference_name"], "vlm": ours, "reference": theirs,
           "ratio": ours["items_per_s"] / theirs["items_per_s"], "vlm_loss": vlm_loss,
           "reference_loss": reference_loss,
           "losses_equal": abs(vlm_loss - reference_loss) <= tolerance * max(1.0, abs(reference_loss))}
    if "vlm32" in runs:
        row["vlm_vs_own_fp32"] = median(seconds["vlm32"]) / median(seconds["vlm"])
        row["reference_vs_own_fp32"] = median(seconds["ref32"]) / median(seconds["reference"])
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| workload | reference | vlm pairs/s | reference pairs/s | ratio | vlm GFLOP/s | reference GFLOP/s | "
             "vlm loss | reference loss |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['reference_name']} | {r['vlm']['items_per_s']:,.1f} | "
                     f"{r['reference']['items_per_s']:,.1f} | {r['ratio']:.2f} | {r['vlm']['gflops_per_s']:.1f} | "
                     f"{r['reference']['gflops_per_s']:.1f} | {r['vlm_loss']:.6f} | {r['reference_loss']:.6f} |")
    return "\n".join(lines)


def cmd_bench_train(args: argparse.Namespace) -> int:
    import json

    from vlm.atomic_io import atomic_write
    from vlm.bench.encode import own_speedups
    from vlm.bench.timing import environment, matmul_ceiling_gflops, peak_rss_mb
    from vlm.models.precision import resolve_precision, run_record

    if min(args.clip_batch, args.fusion_batch, args.rounds) < 1:
        raise ValueError("--clip-batch, --fusion-batch and --rounds must be at least 1")
    args.precision = resolve_precision(args.precision, "train")
    tolerance = BF16_LOSS_TOLERANCE if args.precision == "bf16" else LOSS_TOLERANCE
    report = {"rounds": args.rounds, **run_record(args.precision), **environment(),
              "matmul_ceiling_gflops_per_s": matmul_ceiling_gflops(), "rows": []}
    for family in args.families:
        with tempfile.TemporaryDirectory(prefix=f"vlm-bench-train-{family}-") as tmp:
            runs = (late_runs if family == "clip" else early_runs)(args, Path(tmp))
            report["rows"].append(bench_family(runs, args.rounds, tolerance))
    report["peak_rss_mb"] = peak_rss_mb()
    print(markdown(report["rows"]) + own_speedups(report["rows"], args.precision))
    print(f"\nmedian of {args.rounds} rounds, torch {report['torch']}, {report['threads']} threads, float32 matmul "
          f"ceiling {report['matmul_ceiling_gflops_per_s']:.1f} GFLOP/s, peak RSS {report['peak_rss_mb']:,.0f} MB")
    unequal = [r["workload"] for r in report["rows"] if not r["losses_equal"]]
    if unequal:
        print(f"losses differ beyond {tolerance:g} (relative): {', '.join(unequal)}")
    if args.json is not None:
        with atomic_write(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 1 if unequal else 0
