"""The `vlm` command. Each stage registers its own subcommands; this file only dispatches.

Every subcommand is a thin layer over a library function the tests call too.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from vlm.config import ConfigError
from vlm.models.checkpoint import CheckpointError

# Modules with a `register(subparsers)` function, in the order of the data flow.
COMMAND_MODULES = [
    "data_pipelines.cli",
    "vlm.models.cli",
    "vlm.models.vilt_cli",
    "vlm.train.cli",
    "vlm.eval.cli",
    "vlm.serve.cli",
    "vlm.bench_cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as e:  # bad input: one line, status 2
        print(f"vlm {args.command}: error: {e}", file=sys.stderr)
        return 2


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()
