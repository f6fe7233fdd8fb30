"""`vlm data shapes | shard | inspect`."""

from __future__ import annotations

import argparse
import json

from data_pipelines.options import add_source_arguments, source_options
from data_pipelines.shapes import ShapesConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="generate, convert and inspect datasets")
    sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    s = sub.add_parser("shapes", help="write the procedural shapes world (no download) in the standard formats")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--train", type=int, default=ShapesConfig.train, help="training scenes")
    s.add_argument("--val", type=int, default=ShapesConfig.val)
    s.add_argument("--test", type=int, default=ShapesConfig.test)
    s.add_argument("--heldout", type=int, default=None, help="scenes with unseen colour-shape pairs (default: --test)")
    s.add_argument("--image-size", type=int, default=ShapesConfig.image_size)
    s.add_argument("--seed", type=int, default=ShapesConfig.seed)
    s.add_argument("--captions-per-image", type=int, default=ShapesConfig.captions_per_image)
    s.add_argument("--style", default="default", choices=("default", "outline", "pastel"),
                   help="the look of the images: the same scenes drawn as outlines on texture, or in pastel shades "
                        "(a shifted domain for vlm adapt-report)")
    s.set_defaults(func=cmd_shapes)

    s = sub.add_parser("shard", help="any pairs source -> WebDataset tar shards (img2dataset layout)")
    s.add_argument("input", help="CSV/TSV/JSONL, COCO or Karpathy JSON, or a shapes-world folder (with --split)")
    s.add_argument("--out", required=True, help="output folder for 00000.tar, 00001.tar, ...")
    s.add_argument("--shard-size", type=int, default=10_000, help="samples per shard")
    s.add_argument("--split", default=None, help="Karpathy or shapes-world split")
    s.add_argument("--overwrite", action="store_true",
                   help="--out may hold files: its old shards are removed once the new ones are written")
    add_source_arguments(s)
    s.set_defaults(func=cmd_shard)

    s = sub.add_parser("inspect", help="format, counts, examples, caption lengths and problems of a dataset")
    s.add_argument("path")
    s.add_argument("--split", default=None)
    s.add_argument("--task", default=None, help="shapes-world view: pairs, vqa, classify, compositional")
    s.add_argument("--samples", type=int, default=3, help="examples to print")
    s.add_argument("--check-images", type=int, default=200,
                   help="images to decode as a check, spread over the dataset (0: all); the report says how many")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    add_source_arguments(s)
    s.set_defaults(func=cmd_inspect)


def _options(args: argparse.Namespace) -> dict:
    return {**source_options(args), **({"task": args.task} if getattr(args, "task", None) else {})}


def cmd_shapes(args: argparse.Namespace) -> int:
    from data_pipelines.shapes import generate_shapes_world

    heldout = args.test if args.heldout is None else args.heldout
    out = generate_shapes_world(args.out, train=args.train, val=args.val, test=args.test, heldout=heldout,
                                image_size=args.image_size, seed=args.seed,
                                captions_per_image=args.captions_per_image, style=args.style)
    print(f"wrote {args.style} shapes world to {out} (train {args.train}, val {args.val}, test {args.test}, "
          f"heldout {heldout} scenes at {args.image_size} px)")
    return 0


def cmd_shard(args: argparse.Namespace) -> int:
    from data_pipelines.shards import write_shards
    from data_pipelines.sources import open_source

    source = open_source(args.input, split=args.split, **_options(args))
    paths, stats = write_shards(source, args.out, args.shard_size, overwrite=args.overwrite)
    print(f"wrote {len(paths)} shard(s) to {args.out}; {stats.report()}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from data_pipelines.inspection import format_report, inspect_source

    report = inspect_source(args.path, args.split, args.samples, args.check_images, **_options(args))
    print(json.dumps(report, indent=1, default=str) if args.json else format_report(report))
    return 0
