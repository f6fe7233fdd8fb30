"""A run folder is claimed before training: a run already there is continued (`--resume`), replaced
(`--overwrite`), or left alone with a one-line refusal; never silently overwritten.

The default `--out runs/<recipe>/<model>` makes two runs of one recipe meet in one folder; without this check
the second replaced the first's checkpoint and appended its steps to the first's metrics.jsonl.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from vlm.errors import UserError
from vlm.models.checkpoint import CHECKPOINT_NAME

RUN_MARKERS = (CHECKPOINT_NAME, "metrics.jsonl")  # a folder holding either holds a run
RUN_FILES = (*RUN_MARKERS, "config.yaml", "loss.png", "tensorboard")  # what `--overwrite` removes


def holds_run(out_dir: Path) -> bool:
    return any((out_dir / name).exists() for name in RUN_MARKERS)


def claim_run_folder(out_dir: str | Path, resume: str | None, overwrite: bool) -> Path:
    """Check `out_dir` for this run; with `overwrite`, remove the earlier run's files (only those: a folder
    may hold the user's own files too). Under torchrun only rank 0 removes; every rank checks."""
    out_dir = Path(out_dir)
    if resume is not None and overwrite:
        raise UserError(f"{out_dir}: --resume continues the run there and --overwrite deletes it; pass one")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: is a file; --out needs a folder")
    if resume is not None or not holds_run(out_dir):
        return out_dir
    if not overwrite:
        raise UserError(f"{out_dir}: already holds a run; pass --resume auto to continue it, --overwrite to "
                        "replace it, or --out a new folder")
    if os.environ.get("RANK", "0") == "0":
        for name in RUN_FILES:
            path = out_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    return out_dir
