"""`vlm models`, `vlm info`, `vlm openclip export|import`."""

from __future__ import annotations

import argparse
import json

from vlm.config import to_dict
from vlm.errors import UserError
from vlm.models.registry import count_parameters, get_model_config, list_models


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list the named model configs with their parameter counts")
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
    i = sub.add_parser("import", help="OpenCLIP folder or checkpoint file -> vlm checkpoint")
    i.add_argument("source")
    i.add_argument("out")
    i.add_argument("--quick-gelu", action="store_true", help="the weights are OpenAI's (QuickGELU activation)")
    i.set_defaults(func=cmd_import)


def cmd_models(args: argparse.Namespace) -> int:
    from vlm.models.parameter_count import config_parameter_count  # worked out: building needs timm (seconds)

    print(f"{'name':<16}{'arch':<14}{'parameters':>14}")
    for name in list_models():
        config = get_model_config(name)
        n_params = config_parameter_count(config)
        print(f"{name:<16}{config.arch:<14}{n_params:>14,}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from vlm.models.checkpoint import read_checkpoint, resolve_checkpoint

    path = resolve_checkpoint(args.checkpoint)  # a run folder's size is its checkpoint's
    payload = read_checkpoint(path)
    n_params = sum(t.numel() for t in payload["model"].values())
    print(f"checkpoint: {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    print(f"parameters: {n_params:,}")
    if "step" in payload:
        print(f"training step: {payload['step']}")
    print("config:")
    print(json.dumps(payload["config"], indent=2))
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
    from vlm.models.openclip_compat import import_openclip

    model = import_openclip(args.source, quick_gelu=args.quick_gelu)
    model.save(args.out)
    print(f"wrote {args.out}: {model.config.name}, {count_parameters(model):,} parameters")
    print(json.dumps(to_dict(model.config), indent=2))
    return 0
