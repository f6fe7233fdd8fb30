"""`vlm lora merge`, `vlm wise-ft` and `vlm adapt-report`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vlm.atomic_io import atomic_write


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("lora", help="LoRA checkpoints: merge the adapters into plain weights")
    sub = p.add_subparsers(dest="lora_command", required=True, metavar="ACTION")
    m = sub.add_parser("merge", help="a LoRA run's checkpoint -> an ordinary checkpoint (eval, serve, OpenCLIP export)")
    m.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="checkpoint file or run folder of a LoRA run")
    m.add_argument("--out", required=True, type=Path, help="the merged checkpoint to write")
    m.set_defaults(func=cmd_lora_merge)

    p = subparsers.add_parser("wise-ft", help="WiSE-FT: interpolate the weights of a zero-shot and a fine-tuned "
                                              "checkpoint (one alpha, or a curve with --alphas and --eval)")
    p.add_argument("--zeroshot", required=True, help="the model before fine-tuning (alpha 0)")
    p.add_argument("--finetuned", required=True, help="the fine-tuned model (alpha 1), same architecture")
    p.add_argument("--alpha", type=float, default=None, help="weight of the fine-tuned model, 0..1")
    p.add_argument("--out", type=Path, default=None, help="checkpoint to write (with --alpha)")
    p.add_argument("--alphas", default=None, help="a curve: e.g. 0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1")
    p.add_argument("--eval", action="append", default=[], metavar="TASK:DATA[:SPLIT]",
                   help="evaluate each alpha of the curve, e.g. zeroshot:data/shapes:test (repeatable)")
    p.add_argument("--json", type=Path, default=None, help="write the curve to this JSON file")
    p.set_defaults(func=cmd_wise_ft)

    p = subparsers.add_parser("adapt-report", help="every adaptation method at 1/4/16 shots on a shifted world: "
                                                   "target and source accuracy, parameters, time, memory")
    p.add_argument("--base", required=True, help="the pretrained checkpoint (late or early fusion)")
    p.add_argument("--source", required=True, help="shapes world the base model was trained on")
    p.add_argument("--target", required=True, help="shapes world in another style (vlm data shapes --style)")
    p.add_argument("--out", required=True, type=Path, help="folder for report.md, report.json, plots, runs")
    p.add_argument("--shots", default="1,4,16", help="training scenes per class, comma-separated")
    p.add_argument("--steps", type=int, default=150, help="training steps of every trained method (same budget)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-images", type=int, default=500, help="evaluate on the first N images of each test set")
    p.add_argument("--methods", default=None, help="comma-separated subset (default: all the family supports)")
    p.add_argument("--alphas", default="0,0.25,0.5,0.75,1", help="WiSE-FT curve between base and full FT")
    p.add_argument("--workers", type=int, default=1, help="data-loading processes of each training run")
    p.add_argument("--recipes", default="configs/train", help="folder of adapt-lora.yaml, adapt-lit.yaml, "
                                                              "adapt-full.yaml")
    p.set_defaults(func=cmd_adapt_report)


def cmd_lora_merge(args: argparse.Namespace) -> int:
    from vlm.models.lora import merge_lora_checkpoint

    print(f"wrote {merge_lora_checkpoint(args.checkpoint, args.out)}")
    return 0


def cmd_wise_ft(args: argparse.Namespace) -> int:
    from vlm.adapt.wise_ft import parse_alphas, wise_ft, wise_ft_curve
    from vlm.errors import UserError

    if (args.alpha is None) == (args.alphas is None):
        raise UserError("give --alpha (with --out) for one checkpoint, or --alphas (with --eval) for a curve")
    if args.alpha is not None:
        if args.out is None:
            raise UserError("--alpha needs --out, the checkpoint to write")
        print(f"wrote {wise_ft(args.zeroshot, args.finetuned, args.alpha, args.out)}")
        return 0
    if not args.eval:
        raise UserError("--alphas needs at least one --eval TASK:DATA[:SPLIT] to evaluate each alpha on")
    rows = wise_ft_curve(args.zeroshot, args.finetuned, parse_alphas(args.alphas), args.eval)
    print("alpha\t" + "\t".join(args.eval))
    for row in rows:
        print(f"{row['alpha']:.2f}\t" + "\t".join(f"{row[e]:.2f}" for e in args.eval))
    if args.json is not None:
        with atomic_write(args.json, "w") as f:
            f.write(json.dumps(rows, indent=2) + "\n")
    return 0


def cmd_adapt_report(args: argparse.Namespace) -> int:
    from vlm.adapt.report import ReportOptions, adapt_report, format_table

    options = ReportOptions(shots=tuple(int(k) for k in args.shots.split(",")), steps=args.steps,
                            batch_size=args.batch_size, eval_images=args.eval_images,
                            methods=tuple(args.methods.split(",")) if args.methods else None,
                            alphas=tuple(float(a) for a in args.alphas.split(",")), recipes=args.recipes,
                            num_workers=args.workers)
    report = adapt_report(args.base, args.source, args.target, args.out, options)
    print(format_table(report))
    print(f"wrote {args.out / 'report.md'} and {args.out / 'report.json'}")
    return 0
