"""How a pairs file's columns are named: one form for recipes (`data.image_column`) and command lines.

Every command that reads a pairs file takes the same options through `add_source_arguments`, and every
caller, recipe or command line, turns them into `open_source` keywords through `pairs_options`. OpenCLIP's
spellings (`--csv-img-key`, `--csv-caption-key`, `--csv-separator`) are accepted too: its users bring them.
"""

from __future__ import annotations

import argparse

from vlm.errors import UserError

# The `open_source` keywords only CSV/TSV/JSONL pairs files take.
COLUMN_OPTIONS = ("image_column", "caption_column", "sep")


def pairs_options(image_column: str | None = None, caption_column: str | None = None,
                  separator: str | None = None, image_root: str | None = None) -> dict:
    """`open_source` keywords for the options given (None: the reader's default, `image` / `caption`, and a
    tab for .tsv, a comma otherwise). A separator written `\\t` on a command line means a tab."""
    if separator is not None:
        separator = {"\\t": "\t", "tab": "\t"}.get(separator, separator)
        if len(separator) != 1:
            raise UserError(f"separator must be one character (a tab: '\\t'), got {separator!r}")
    given = {"image_column": image_column, "caption_column": caption_column, "sep": separator,
             "image_root": image_root}
    return {k: v for k, v in given.items() if v is not None}


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """--image-column, --caption-column, --separator, --image-root, with OpenCLIP's names as aliases, and
    --max-pixels."""
    group = parser.add_argument_group("pairs file columns (CSV/TSV/JSONL)")
    group.add_argument("--image-column", "--csv-img-key", dest="image_column", metavar="NAME",
                       help="column (JSONL: field) with the image path (default: image)")
    group.add_argument("--caption-column", "--csv-caption-key", dest="caption_column", metavar="NAME",
                       help="column (JSONL: field) with the caption (default: caption)")
    group.add_argument("--separator", "--csv-separator", dest="separator", metavar="CHAR",
                       help="column separator, '\\t' for a tab (default: tab for .tsv, comma otherwise)")
    group.add_argument("--image-root", metavar="DIR",
                       help="folder image paths are relative to (default: the file's folder)")
    add_max_pixels_argument(parser)


def add_max_pixels_argument(parser: argparse.ArgumentParser) -> None:
    """--max-pixels and --max-bad-fraction, on every command that decodes images; `vlm.cli.main` sets them
    for the command's run."""
    add_max_bad_fraction_argument(parser)
    parser.add_argument("--max-pixels", type=positive_int, metavar="N",
                        help="refuse images over N pixels, as a guard against decompression bombs; raise it for "
                             "large photos (default: Pillow's, 89,478,485; the recipe key is data.max_pixels)")


def add_max_bad_fraction_argument(parser: argparse.ArgumentParser) -> None:
    """--max-bad-fraction: the one bad-file rule of every command that reads images (`sample.bad_file_rule`)."""
    parser.add_argument("--max-bad-fraction", type=fraction, metavar="F",
                        help="stop when more than this share of the items is unreadable (missing, corrupt, over "
                             "--max-pixels); skipped items are listed in skipped.tsv next to the output "
                             "(default: 0.01; the recipe key is data.max_bad_fraction)")


def fraction(text: str) -> float:
    """argparse type: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 ("108_000_000" too)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def source_options(args: argparse.Namespace) -> dict:
    """`pairs_options` from the arguments `add_source_arguments` added."""
    return pairs_options(args.image_column, args.caption_column, args.separator, args.image_root)
