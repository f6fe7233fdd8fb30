"""The `vlm` command. Each stage registers its own subcommands; this file only dispatches.

Every subcommand is a thin layer over a library function the tests call too. Registering a subcommand
imports nothing heavy (torch, timm, open_clip, fastapi load inside the command that runs), so `vlm --help`
answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from vlm.errors import UserError

# Modules with a `register(subparsers)` function, in the order of the data flow.
COMMAND_MODULES = [
    "data_pipelines.cli",
    "vlm.models.cli",
    "vlm.models.vilt_cli",
    "vlm.train.cli",
    "vlm.eval.cli",
    "vlm.adapt.cli",
    "vlm.distill.cli",
    "vlm.sweep.cli",
    "vlm.index.cli",
    "vlm.serve.cli",
    "vlm.bench.cli",
]
# A user's mistake: one line and exit status 2. UserError is raised where vlm detects a mistake; ValueError and
# the missing-path errors are what the readers raise for bad files and values. Anything else is a bug and keeps
# its traceback (as does everything under --debug or VLM_DEBUG=1).
USER_ERRORS = (UserError, ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", default=debug_from_env(),
                        help="show the full traceback of an error (also: VLM_DEBUG=1)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    name_commands(parser)
    return parser


def name_commands(parser: argparse.ArgumentParser) -> None:
    """Each (sub)command stores its own name (`vlm eval retrieval`) for its error messages."""
    for action in parser._actions:  # argparse keeps its subparsers only there
        for sub in (action.choices or {}).values() if isinstance(action, argparse._SubParsersAction) else ():
            sub.set_defaults(command_name=sub.prog)
            name_commands(sub)


def debug_from_env() -> bool:
    return os.environ.get("VLM_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with pixel_limit(getattr(args, "max_pixels", None)), skip_report(args):
            return int(args.func(args) or 0)
    except USER_ERRORS as e:
        if args.debug:
            raise
        message = one_line(str(e)) or type(e).__name__
        print(f"{args.command_name}: error: {message}", file=sys.stderr)
        return 2


def pixel_limit(limit: int | None) -> contextlib.AbstractContextManager:
    """--max-pixels: the process's image pixel limit while the command runs (Pillow imported only if given)."""
    if limit is None:
        return contextlib.nullcontext()
    from data_pipelines.images import max_pixels_set

    return max_pixels_set(limit)


# The output arguments a skip report goes next to, in order: a folder (run, index, shards) or a file.
OUTPUT_ARGUMENTS = ("out", "json", "predictions")


@contextlib.contextmanager
def skip_report(args: argparse.Namespace) -> Iterator[None]:
    """--max-bad-fraction: the one bad-file rule while a command that reads images runs; the items it skipped
    are then written to `skip_report_path` (also when it stops for too many), and the message says where."""
    if not hasattr(args, "max_bad_fraction"):
        yield
        return
    from data_pipelines.sample import bad_file_rule, write_skip_report

    with bad_file_rule(args.max_bad_fraction) as rule:
        try:
            yield
        except USER_ERRORS as e:
            path = _write_report(args, rule.skipped, write_skip_report)
            if path is not None and e.args and isinstance(e.args[0], str):
                e.args = (f"{e.args[0]}; skipped items listed in {path}", *e.args[1:])
            raise
        path = _write_report(args, rule.skipped, write_skip_report)
        if path is not None:
            print(f"{args.command_name}: {len(rule.skipped)} skipped item(s) listed in {path}", file=sys.stderr)


def _write_report(args: argparse.Namespace, skipped: dict, write) -> Path | None:
    path = skip_report_path(args)
    return write(path, skipped) if path is not None and skipped else None


def skip_report_path(args: argparse.Namespace) -> Path | None:
    """`skipped.tsv` in the output folder, or `<name>.skipped.tsv` beside an output file (or a folder not made);
    None for a command that writes only to the terminal."""
    given = (getattr(args, name, None) for name in OUTPUT_ARGUMENTS)
    out = next((value for value in given if isinstance(value, (str, os.PathLike))), None)  # not inspect's --json
    if out is None:
        return None
    out = Path(out)
    return out / "skipped.tsv" if out.is_dir() else out.parent / f"{out.stem}.skipped.tsv"


def one_line(message: str) -> str:
    """The message on one line: each line break (with the indent around it) becomes one space. Other spaces
    stay as they are: a path with two spaces in a row must read as the path."""
    return re.sub(r"[ \t]*[\r\n]+[ \t]*", " ", message).strip()


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()
