"""`vlm distill`, `vlm shrink` and `vlm distill-report`."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from data_pipelines.options import add_max_bad_fraction_argument

    p = subparsers.add_parser("distill", help="distil a teacher into a smaller student: `vlm train` with objective "
                                              "distill (recipes configs/train/distill-*.yaml)")
    p.add_argument("--config", default="distill-clip",
                   help="recipe: distill-clip (late-fusion teacher), distill-fusion (early-fusion teacher) or a YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set distill.teacher=teacher.pt --set model=small.pt")
    p.add_argument("--out", help="run folder (default: runs/<recipe>/<model>)")
    p.add_argument("--resume", help="'auto' (this run folder's checkpoint, if any) or a checkpoint path")
    p.add_argument("--overwrite", action="store_true",
                   help="--out holds a run: delete its checkpoint, metrics and plots and start anew")
    p.add_argument("--stop-at", type=int, help="save and stop at this step (the schedule still runs to `steps`)")
    add_max_bad_fraction_argument(p)
    p.set_defaults(precision=None)  # `vlm train --precision`'s default: the recipe's
    p.add_argument("--precompute", nargs="?", const="", default=None, metavar="PARTS",
                   help="run the teacher once over the training data into embedding parts (default: RUN/teacher_parts, "
                        "reused when written), then train from them without the teacher; augmentation must be off")
    p.set_defaults(func=cmd_distill)

    p = subparsers.add_parser("shrink", help="a smaller model of the same family that inherits the layers, heads "
                                             "and channels of largest weight magnitude")
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file or run folder")
    p.add_argument("--depth", type=int, help="layers per stack, evenly spaced (default: all)")
    p.add_argument("--width", type=int, help="residual channels per stack (default: all)")
    p.add_argument("--heads", type=int, help="attention heads per layer (default: all)")
    p.add_argument("--out", required=True, help="the checkpoint to write")
    p.set_defaults(func=cmd_shrink)

    p = subparsers.add_parser("distill-report", help="teacher, scratch, distilled, shrunk and shrunk-then-distilled "
                                                     "student (early-fusion teacher: ranking loss on/off): accuracy, "
                                                     "size, speed, as %% of the teacher and against scratch")
    p.add_argument("--teacher", required=True,
                   help="the teacher checkpoint: late fusion (distilled and shrunk rows) or early fusion (the "
                        "late-fusion student with and without the ranking loss)")
    p.add_argument("--data", required=True, help="shapes world to train on and evaluate (its --split)")
    p.add_argument("--out", required=True, type=Path, help="folder for report.md, report.json, the plot and runs")
    p.add_argument("--recipe", help="the distillation recipe (default: distill-clip.yaml for a late-fusion "
                                    "teacher, distill-fusion.yaml for an early-fusion one)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field for every trained row")
    p.add_argument("--steps", type=int, help="steps of every trained row (default: the recipe's)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--split", default="test", help="the world's split to evaluate on")
    p.add_argument("--no-half", action="store_true", help="skip shrink-then-distil at half the steps")
    p.add_argument("--workers", type=int, default=1, help="data-loading processes of each training run")
    p.add_argument("--vqa", action="store_true",
                   help="add a VQA column: fine-tune every model (teacher too) with the quickstart's VQA recipe")
    p.add_argument("--vqa-steps", type=int, help="steps of each VQA fine-tune (default: the recipe's 1,000)")
    p.set_defaults(func=cmd_distill_report)


def cmd_distill(args: argparse.Namespace) -> int:
    from vlm.config import resolve_config
    from vlm.distill.precompute import precompute_teacher
    from vlm.train.cli import cmd_train, default_run_dir
    from vlm.train.config import load_train_config

    if args.precompute is not None:
        config = load_train_config(resolve_config(args.config, "train"), args.overrides)
        out = Path(args.out) if args.out else default_run_dir(args.config, config.model)
        parts = Path(args.precompute or out / "teacher_parts")
        if not (parts / "done").is_dir():
            print(f"teacher outputs: writing {precompute_teacher(config, parts)}")
        args.overrides = [*args.overrides, f"distill.precomputed={parts}"]
    return cmd_train(args)


def cmd_shrink(args: argparse.Namespace) -> int:
    from vlm.models.shrink import shrink_checkpoint

    small = shrink_checkpoint(args.checkpoint, args.out, args.depth, args.width, args.heads)
    print(f"wrote {args.out}: {small.config.name}, {sum(p.numel() for p in small.parameters()):,} parameters")
    return 0


def cmd_distill_report(args: argparse.Namespace) -> int:
    from vlm.distill.report import DistillReportOptions, distill_report, format_changes, format_table

    options = DistillReportOptions(recipe=args.recipe, steps=args.steps, batch_size=args.batch_size,
                                   seeds=tuple(int(s) for s in args.seeds.split(",")), split=args.split,
                                   num_workers=args.workers, half=not args.no_half, overrides=tuple(args.overrides),
                                   vqa=args.vqa or args.vqa_steps is not None, vqa_steps=args.vqa_steps)
    report = distill_report(args.teacher, args.data, args.out, options)
    print(format_table(report))
    print(format_changes(report))
    print(f"wrote {args.out / 'report.md'} and {args.out / 'report.json'}")
    return 0
