"""`vlm train` and `vlm quickstart`."""

from __future__ import annotations

import argparse
from pathlib import Path

from data_pipelines.options import add_max_bad_fraction_argument
from vlm.config import resolve_config
from vlm.train.config import load_train_config


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a model from a recipe in configs/train/ (works under torchrun)")
    p.add_argument("--config", required=True,
                   help="recipe: a YAML file, or a shipped recipe's name or path (clip, configs/train/clip.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set steps=200 --set data.train=pairs.csv")
    p.add_argument("--out", help="run folder (default: runs/<recipe>/<model>)")
    p.add_argument("--resume", help="'auto' (this run folder's checkpoint, if any) or a checkpoint path")
    p.add_argument("--overwrite", action="store_true",
                   help="--out holds a run: delete its checkpoint, metrics and plots and start anew")
    p.add_argument("--stop-at", type=int, help="save and stop at this step (the schedule still runs to `steps`)")
    p.add_argument("--precision", choices=("fp32", "bf16", "int8", "auto"),
                   help="the recipe's `precision`: bf16 trains under CPU autocast (float32 loss); auto picks per CPU")
    add_max_bad_fraction_argument(p)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("quickstart", help="the CPU demo: shapes world, train both families, VQA, compare")
    p.add_argument("--config", default="configs/train/quickstart.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_quickstart)


def default_run_dir(recipe: str, model: str) -> Path:
    return Path("runs") / Path(recipe).stem / Path(model).stem


def cmd_train(args: argparse.Namespace) -> int:
    from vlm.train.distributed import shutdown_distributed
    from vlm.train.run import train
    from vlm.train.run_folder import claim_run_folder
    from vlm.train.trainer import TrainingError

    overrides = [*args.overrides, *([f"data.max_bad_fraction={args.max_bad_fraction}"]
                                    if args.max_bad_fraction is not None else []),
                 *([f"precision={args.precision}"] if args.precision else [])]  # the flags over the recipe
    config = load_train_config(resolve_config(args.config, "train"), overrides)
    out = Path(args.out) if args.out else default_run_dir(args.config, config.model)
    args.out = str(out)  # where `vlm.cli.main` writes skipped.tsv
    claim_run_folder(out, args.resume, args.overwrite)
    try:
        checkpoint = train(config, out, resume=args.resume, stop_at_step=args.stop_at)
    except TrainingError as e:
        print(f"vlm train: error: {e}")
        return 1
    finally:
        shutdown_distributed()  # under torchrun: leave the process group cleanly
    print(f"checkpoint: {checkpoint}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from vlm.train.quickstart import load_quickstart_config, run_quickstart

    run_quickstart(load_quickstart_config(resolve_config(args.config, "train"), args.overrides))
    return 0
