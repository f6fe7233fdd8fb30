"""`vlm sweep`: the scale sweep of both families (vlm/sweep/run.py)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sweep", help="both families over model sizes x training steps: abilities against "
                                            "training compute, thresholds, report")
    p.add_argument("--config", default="configs/sweep/shapes.yaml",
                   help="sweep YAML, or a shipped sweep's name (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set steps=[100,200] --set out_dir=runs/sweep2")
    p.add_argument("--max-points", type=int, help="run at most this many new grid points, then stop (rerun to go on)")
    p.add_argument("--report-only", action="store_true", help="only rewrite the report from results.jsonl")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vlm.config import resolve_config
    from vlm.sweep.config import load_sweep_config
    from vlm.sweep.run import run_sweep

    config = load_sweep_config(resolve_config(args.config, "sweep"), args.overrides)
    run_sweep(config, max_new_points=0 if args.report_only else args.max_points)
    print(f"report: {Path(config.out_dir) / 'report.md'}")
    return 0
