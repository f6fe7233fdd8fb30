"""`vlm vilt import|export`: Hugging Face ViLT folders (transformers' `save_pretrained`) to and from vlm."""

from __future__ import annotations

import argparse

HEADS = ("vqa", "rank", "mlm", "none")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("vilt", help="move early-fusion weights to or from Hugging Face transformers' ViLT")
    sub = p.add_subparsers(dest="direction", required=True)
    i = sub.add_parser("import", help="transformers ViLT folder (or hub name, with internet) -> vlm checkpoint",
                       description="SRC: a save_pretrained folder of ViltModel, ViltForMaskedLM, "
                                   "ViltForImageAndTextRetrieval or ViltForQuestionAnswering (config.json, "
                                   "model.safetensors or pytorch_model.bin, vocab.txt), or a hub name such as "
                                   "dandelin/vilt-b32-finetuned-coco that transformers downloads.")
    i.add_argument("source", metavar="SRC")
    i.add_argument("out", metavar="OUT")
    i.add_argument("--name", help="the model's name in its config (default: the folder name)")
    i.set_defaults(func=cmd_import)
    e = sub.add_parser("export", help="vlm checkpoint (ViLT layout) -> folder transformers' from_pretrained loads")
    e.add_argument("checkpoint", metavar="CKPT")
    e.add_argument("out_dir", metavar="DIR")
    e.add_argument("--head", choices=HEADS, default=None,
                   help="which head's transformers class to write (default: vqa, else rank, else mlm, else none)")
    e.set_defaults(func=cmd_export)


def cmd_import(args: argparse.Namespace) -> int:
    from vlm.models.registry import count_parameters
    from vlm.models.vilt_compat import import_vilt

    model = import_vilt(args.source, name=args.name)
    model.save(args.out)
    c = model.config
    heads = [h for h, on in (("rank", c.match_head == "rank"), ("mlm", c.mlm_head), ("vqa", bool(c.vqa_answers))) if on]
    print(f"wrote {args.out}: {c.name}, {count_parameters(model):,} parameters, width {c.width}, depth {c.depth}, "
          f"heads {c.heads}, head(s): {', '.join(heads) or 'none'}"
          + (f" ({len(c.vqa_answers)} answers)" if c.vqa_answers else "") + f", WordPiece vocab {len(c.vocab)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vlm.models.checkpoint import load_model
    from vlm.models.vilt_compat import HEAD_CLASSES, default_head, export_vilt

    model = load_model(args.checkpoint)
    head = "default" if args.head is None else (None if args.head == "none" else args.head)
    out = export_vilt(model, args.out_dir, head)
    chosen = default_head(model.config) if head == "default" else head
    print(f"wrote {out}: load with transformers.{HEAD_CLASSES[chosen]}.from_pretrained('{out}')")
    return 0
