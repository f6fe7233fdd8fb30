"""`vlm eval zeroshot|retrieval|vqa|compositional|linear-probe` and `vlm compare`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from data_pipelines.options import add_max_pixels_argument, add_source_arguments, source_options
from vlm.atomic_io import atomic_write
from vlm.eval.vqa_metric import DEFAULT_VQA_METRIC, VQA_METRICS

PREDICTION_HELP = {
    "zeroshot": "write each image's top-5 classes and probabilities to this CSV",
    "retrieval": "write each query's top-10 ids and scores to this JSONL",
    "vqa": "write the answers in VQAv2's results format [{question_id, answer}] to this JSON",
}


def add_stream_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader processes decoding images (default: one per core, at most 8)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per model call")


def stream_options(args: argparse.Namespace, progress: bool = False):
    from vlm.eval.stream import StreamOptions, default_workers

    workers = default_workers() if args.workers is None else args.workers
    return StreamOptions(batch_size=args.batch_size, workers=workers, progress=progress)


def add_precision_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=("fp32", "bf16", "int8", "auto"), default="fp32",
                   help="run the model(s) at this precision, as `vlm index build|serve --precision` do; auto: what "
                        "measured fastest on this CPU class (default fp32)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate one checkpoint: zero-shot, retrieval, VQA or compositional")
    sub = p.add_subparsers(dest="task", required=True, metavar="TASK")
    for task, text in (("zeroshot", "zero-shot classification of an ImageFolder with class names and templates"),
                       ("retrieval", "text->image and image->text Recall@1/5/10"),
                       ("vqa", "VQAv2 accuracy overall, per answer type and per question family"),
                       ("compositional", "two-way accuracy, true caption vs hard negative, per negative type")):
        add_task_parser(sub, task, text)
    add_linear_probe_parser(sub)
    register_classify(subparsers)

    p = subparsers.add_parser("compare", help="late vs early fusion on every evaluation, with blind baselines "
                                              "and cost: report.md, report.json, plots")
    p.add_argument("--late", required=True, help="late-fusion checkpoint or run folder")
    p.add_argument("--early", required=True, help="early-fusion checkpoint or run folder")
    p.add_argument("--data", required=True, help="shapes-world folder")
    p.add_argument("--out", required=True, type=Path, help="folder for report.md, report.json and PNGs")
    p.add_argument("--split", default="val")
    p.add_argument("--heldout-split", default="heldout",
                   help="also run VQA and compositional on this split when it exists ('' to skip)")
    p.add_argument("--late-vqa", default=None, help="late-fusion VQA model (default: the run's `-vqa` sibling)")
    p.add_argument("--early-vqa", default=None, help="early-fusion VQA model (default: the run's `-vqa` sibling)")
    p.add_argument("--k", type=int, nargs="+", default=None,
                   help="hybrid re-ranking depths (default 1 4 16 64); the headline is k=16, else the largest given")
    p.add_argument("--max-retrieval-images", type=int, default=200,
                   help="retrieval on the first N images (exhaustive early fusion is quadratic); 0: all")
    p.add_argument("--latency-queries", type=int, default=20, help="text queries timed for the p50/p99 latency")
    p.add_argument("--no-plots", action="store_true")
    add_precision_argument(p)
    p.add_argument("--vqa-metric", choices=VQA_METRICS, default=DEFAULT_VQA_METRIC,
                   help="revision of the official VQA evaluator: 2021 (current) or 2016 (older papers)")
    p.set_defaults(func=cmd_compare)


def add_task_parser(sub: argparse._SubParsersAction, task: str, text: str) -> None:
    t = sub.add_parser(task, help=text)
    t.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    t.add_argument("--data", required=True, help="a shapes-world folder, or a dataset file/folder")
    t.add_argument("--split", default=None, help="split of a shapes-world folder (default: val)")
    t.add_argument("--json", type=Path, default=None, help="also write the result to this JSON file")
    add_precision_argument(t)
    if task in ("retrieval", "compositional"):  # the evaluations that read pairs files
        add_source_arguments(t)
    else:
        add_max_pixels_argument(t)
    if task != "compositional":
        t.add_argument("--predictions", type=Path, default=None, help=PREDICTION_HELP[task])
        add_stream_options(t)
    if task == "retrieval":
        t.add_argument("--rerank-from", default=None, metavar="LATE_CKPT",
                       help="hybrid: rank with this late-fusion model, re-score its top k with --checkpoint")
        t.add_argument("--k", type=int, default=16, help="candidates re-scored per query (hybrid)")
    if task == "zeroshot":
        t.add_argument("--classnames", default=None, metavar="NAMES",
                       help='class names in class-folder order instead of the folder\'s: "imagenet" (OpenAI\'s '
                            'ImageNet-1k names), a file with one per line, or "cat,dog,car"')
        t.add_argument("--templates", default=None, metavar="TEMPLATES",
                       help='prompt templates with {}: "imagenet" (OpenAI\'s 80), a file, or one template')
    if task == "vqa":
        t.add_argument("--vqa-metric", choices=VQA_METRICS, default=DEFAULT_VQA_METRIC,
                       help="revision of the official evaluator: 2021 (current) or 2016 (older papers)")
    t.set_defaults(func=cmd_eval)


def add_linear_probe_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("linear-probe", help="logistic regression on frozen image features, k-shot, C chosen on val")
    t.add_argument("--checkpoint", required=True, help="late-fusion checkpoint or run folder")
    t.add_argument("--data", required=True,
                   help="a shapes-world folder (fit on its classify_train, choose C on val, score --split), "
                        "DIR/{train,val,test}/<class> folders, or a plain DIR/<class> tree (split per class, "
                        "seeded, 60/20/20)")
    t.add_argument("--split", default="test", help="the split scored (default: test); C is never chosen on it")
    t.add_argument("--shots", default="1,2,4,8,16", help="training images per class, comma-separated (0: all)")
    t.add_argument("--seed", type=int, default=0, help="which k images of each class")
    t.add_argument("--split-seed", type=int, default=0,
                   help="the seeded split of data without split folders (and of a val part carved from train)")
    t.add_argument("--json", type=Path, default=None, help="also write the result to this JSON file")
    add_max_pixels_argument(t)
    t.set_defaults(func=cmd_linear_probe)


def register_classify(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("classify", help="zero-shot labels for images or folders: top labels and probabilities")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER",
                   help="image files, folders (recursive) and/or pairs files (CSV/TSV/JSONL: the images they list)")
    p.add_argument("--checkpoint", required=True, help="checkpoint file or run folder (either family)")
    labels = p.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", help='comma-separated labels, "cat,dog,car", or "imagenet"')
    labels.add_argument("--labels-file", type=Path, help="a file with one label per line")
    p.add_argument("--templates", default=None,
                   help='prompt templates with {}: a file, one template, or "imagenet" (default "a photo of a {}.")')
    p.add_argument("--top", type=int, default=5, help="labels per image")
    p.add_argument("--out", type=Path, default=None, help="write a CSV: image, label, top1, p1, ... (else print)")
    p.add_argument("--no-progress", action="store_true")
    add_precision_argument(p)
    add_stream_options(p)
    add_source_arguments(p)
    p.set_defaults(func=cmd_classify)


def cmd_eval(args: argparse.Namespace) -> int:
    from vlm.eval.run import evaluate

    options = source_options(args) if hasattr(args, "image_column") else None
    result = evaluate(args.task, args.checkpoint, args.data, args.split,
                      getattr(args, "rerank_from", None), getattr(args, "k", 16),
                      getattr(args, "vqa_metric", DEFAULT_VQA_METRIC),
                      stream_options(args, progress=sys.stderr.isatty()) if args.task != "compositional" else None,
                      getattr(args, "predictions", None), getattr(args, "classnames", None),
                      getattr(args, "templates", None), source_options=options, precision=args.precision)
    text = json.dumps(result, indent=2)
    print(text)
    if getattr(args, "predictions", None) is not None:
        print(f"wrote {args.predictions}")
    if args.json is not None:
        with atomic_write(args.json, "w") as f:
            f.write(text + "\n")
    return 0


def cmd_linear_probe(args: argparse.Namespace) -> int:
    from vlm.eval.linear_probe import linear_probe
    from vlm.models import load_model

    try:
        shots = tuple(int(k) for k in args.shots.split(","))
    except ValueError:
        raise ValueError(f"--shots: expected whole numbers separated by commas, got {args.shots!r}") from None
    splits = ("train", "val", args.split)
    result = linear_probe(load_model(args.checkpoint), args.data, shots, args.seed, splits, split_seed=args.split_seed)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        with atomic_write(args.json, "w") as f:
            f.write(text + "\n")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from vlm.eval.classify import classify

    labels = args.labels if args.labels is not None else args.labels_file
    predictions, summary = classify(args.checkpoint, args.inputs, labels, args.templates, args.out,
                                    stream_options(args, progress=not args.no_progress), args.top,
                                    source_options(args), args.precision)
    if args.out is None:
        for p in predictions:
            print_name_line("\t".join([p["image"], *(f"{c} {prob:.3f}" for c, prob in
                                                     zip(p["labels"], p["probabilities"], strict=True))]))
    reasons = ", ".join(f"{r}: {n}" for r, n in sorted(summary["skipped_reasons"].items()))
    skipped = f"; skipped {summary['skipped']} unreadable ({reasons})" if summary["skipped"] else "; skipped 0"
    print(f"classified {summary['images']} images{skipped}; {summary['precision']} on {summary['cpu_class']}"
          + (f"; wrote {args.out}" if args.out else ""),
          file=sys.stderr)
    return 0


def print_name_line(line: str) -> None:
    """Print a line naming a file; a name that is not UTF-8 goes out as its bytes on disk (surrogateescape), as
    `ls` prints it, instead of failing after the work is done."""
    try:
        print(line)
    except UnicodeEncodeError:
        sys.stdout.flush()
        sys.stdout.buffer.write(line.encode("utf-8", "surrogateescape") + b"\n")
        sys.stdout.buffer.flush()


def cmd_compare(args: argparse.Namespace) -> int:
    from vlm.eval.compare import DEFAULT_HYBRID_KS, compare
    from vlm.eval.report import format_summary_table

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = compare(args.late, args.early, args.data, args.out, split=args.split, late_vqa_ckpt=args.late_vqa,
                     early_vqa_ckpt=args.early_vqa, hybrid_ks=tuple(args.k or DEFAULT_HYBRID_KS),
                     max_retrieval_images=args.max_retrieval_images or None,
                     latency_queries=args.latency_queries, heldout_split=args.heldout_split or None,
                     plots=not args.no_plots, vqa_metric=args.vqa_metric, precision=args.precision)
    print(format_summary_table(report))
    print(f"wrote {args.out / 'report.md'} and {args.out / 'report.json'}")
    return 0
