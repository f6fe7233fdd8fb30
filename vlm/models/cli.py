"""`vlm models`, `vlm info`, `vlm openclip export|import`, `vlm export onnx`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vlm.config import to_dict
from vlm.errors import UserError
from vlm.models.registry import count_parameters, get_model_config, list_models


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list the named model configs with their parameter counts")
    p.add_argument("--pretrained", action="store_true",
                   help="list the published weights each family imports, their published figures and the command")
    p.set_defaults(func=cmd_models)

    p = subparsers.add_parser("info", help="print a checkpoint's config, size and training state")
    p.add_argument("checkpoint")
    p.set_defaults(func=cmd_info)

    p = subparsers.add_parser("openclip", help="move late-fusion weights to or from OpenCLIP's layout")
    sub = p.add_subparsers(dest="direction", required=True)
    e = sub.add_parser("export", help="vlm checkpoint -> folder for open_clip.create_model('local-dir:DIR')")
    e.add_argument("checkpoint")
    e.add_argument("out_dir")
    e.set_defaults(func=cmd_export)
    i = sub.add_parser("import", help="OpenCLIP model (name + --pretrained), folder or file -> vlm checkpoint",
                       description="vlm openclip import ViT-B-32 --pretrained laion2b_s34b_b79k OUT (open_clip's own "
                                   "loader: a tag downloads, a file path works offline); vlm openclip import FOLDER "
                                   "OUT (an export with open_clip_config.json); vlm openclip import FILE OUT --model "
                                   "NAME_OR_JSON (a bare state dict needs its architecture).")
    i.add_argument("source", help="with --pretrained: an OpenCLIP model name or config JSON; else a folder or file")
    i.add_argument("out")
    i.add_argument("--pretrained", help="a pretrained tag of the model (needs internet) or a local weights file")
    i.add_argument("--model", help="a bare state dict's architecture: an OpenCLIP model name or its config JSON")
    i.add_argument("--quick-gelu", action="store_true",
                   help="force QuickGELU (OpenAI's weights under a GELU architecture name)")
    i.set_defaults(func=cmd_import)

    p = subparsers.add_parser("export", help="write a checkpoint in another runtime's format")
    sub = p.add_subparsers(dest="format", required=True)
    o = sub.add_parser("onnx", help="vlm checkpoint -> ONNX graphs (late: image + text encoders; early: pair scorer)")
    o.add_argument("checkpoint")
    o.add_argument("out_dir")
    o.add_argument("--no-check", action="store_true", help="skip comparing ONNX Runtime's outputs with torch's")
    o.set_defaults(func=cmd_export_onnx)


def cmd_models(args: argparse.Namespace) -> int:
    if getattr(args, "pretrained", False):
        from vlm.models.pretrained import pretrained_table

        print(pretrained_table())
        return 0

    from vlm.models.parameter_count import config_parameter_count  # worked out: building needs timm (seconds)

    print(f"{'name':<16}{'arch':<14}{'parameters':>14}")
    for name in list_models():
        config = get_model_config(name)
        n_params = config_parameter_count(config)
        print(f"{name:<16}{config.arch:<14}{n_params:>14,}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from vlm.models.checkpoint_file import resolve_checkpoint
    from vlm.models.checkpoint_peek import peek_checkpoint  # the config and shapes, without importing torch

    path = resolve_checkpoint(args.checkpoint)  # a run folder's size is its checkpoint's
    payload = peek_checkpoint(path)
    n_params = sum(t.numel() for t in payload["model"].values())
    print(f"checkpoint: {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    print(f"parameters: {n_params:,}")
    if "step" in payload:
        print(f"training step: {payload['step']}")
    config = dict(payload["config"])
    if len(config.get("vocab") or ()) > 20:  # a WordPiece vocabulary: tens of thousands of lines
        config["vocab"] = f"<{len(config['vocab'])} WordPiece tokens>"
    print("config:")
    print(json.dumps(config, indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vlm.models.checkpoint import load_model
    from vlm.models.openclip_compat import export_openclip

    model = load_model(args.checkpoint)
    if model.config.arch != "dual_encoder":
        raise UserError(f"{args.checkpoint}: is a {model.config.arch} model; only late-fusion (dual_encoder) "
                        "models have an OpenCLIP layout")
    out = export_openclip(model, args.out_dir)
    print(f"wrote {out}: load with open_clip.create_model('local-dir:{out}')")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from vlm.models.openclip_compat import import_openclip, import_openclip_pretrained

    if args.pretrained:
        model = import_openclip_pretrained(args.source, args.pretrained, quick_gelu=args.quick_gelu)
    else:
        model = import_openclip(args.source, quick_gelu=args.quick_gelu, model=args.model)
    model.save(args.out)
    print(f"wrote {args.out}: {model.config.name}, {count_parameters(model):,} parameters")
    print(json.dumps(to_dict(model.config), indent=2))
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from vlm.models import load_model
    from vlm.models.onnx_export import export_onnx

    if not args.no_check:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise UserError("vlm export onnx: the check needs onnxruntime (pip install 'vlm[onnx]'), or pass "
                            "--no-check") from e
    info = export_onnx(load_model(args.checkpoint), args.out_dir, check=not args.no_check)
    for name, entry in info["graphs"].items():
        checked = f", ONNX Runtime vs torch max abs {entry['max_abs_diff_vs_torch']:.1e}" \
            if "max_abs_diff_vs_torch" in entry else ""
        print(f"wrote {Path(args.out_dir) / name} (inputs {', '.join(entry['inputs'])}{checked})")
    print(f"wrote {Path(args.out_dir) / 'onnx.json'}")
    return 0
