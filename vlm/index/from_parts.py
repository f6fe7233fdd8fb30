"""`vlm index from-parts`: an index folder from embedding parts written elsewhere (`vlm index embed` on N
machines, or any writer of the layout), without running a model.

The parts are linked into OUT/parts/ (copied where the filesystem cannot link): the folder's table refers to their
rows, so they are part of the index from then on and must not be edited. Like a build, it works in OUT.partial/,
resumes there, and swaps in at the end.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from vlm.errors import UserError
from vlm.index.backends import FaissConfig
from vlm.index.build import finish_build, move_copied_images
from vlm.index.config import CONFIG_NAME, IndexConfig
from vlm.index.folder import ItemIndex
from vlm.index.ingest import ingest_parts
from vlm.index.lock import FolderLock
from vlm.index.part_vectors import PARTS_DIR, finished_parts
from vlm.index.parts import HEADER_NAME, read_header


def build_from_parts(parts: str | Path, out: str | Path, faiss: FaissConfig | None = None,
                     image_root: str | Path | None = None, overwrite: bool = False) -> int:
    """Index every finished part of `parts` into folder `out`; returns the number of items. `image_root` is
    where the parts' relative image paths live (default: none recorded, paths are shown as stored)."""
    parts, out = Path(parts), Path(out)
    header = read_header(parts)
    if not finished_parts(parts):
        raise UserError(f"{parts}: no finished part (no done/*.json); finish `vlm index embed` first")
    if (out / CONFIG_NAME).exists():
        if not overwrite:
            raise UserError(f"{out}: an index is already there (pass --overwrite to replace it)")
        FolderLock(out).release()  # refuse now, not after the whole build, while a server has it open
    staging = out.with_name(out.name + ".partial")
    link_parts(parts, staging / PARTS_DIR)
    move_copied_images(staging / PARTS_DIR, staging)
    index = ItemIndex(staging, IndexConfig(dim=header.dim, model=header.model, precision=header.precision,
                                           faiss=faiss or FaissConfig()))
    try:
        index.store.set_meta({"source": header.source, "weights": header.weights, "parts": str(parts.resolve()),
                              **({"image_root": str(Path(image_root).resolve())} if image_root else {})})
        ingest_parts(index)
        index.store.set_meta({"built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        count = len(index)
    finally:
        index.close()
    finish_build(staging, out)
    return count


def link_parts(source: Path, target: Path) -> None:
    """Every file of the parts folder, hard-linked (same filesystem) or copied; files already there are kept,
    so a resumed run links only what is missing. Data first, then the done markers, then the header: a marker
    present means its part's files are there."""
    files = [p for p in sorted(source.rglob("*")) if p.is_file() and not p.name.startswith(".")]  # not a temp
    done = [p for p in files if p.parent.name == "done"]
    data = [p for p in files if p.parent.name != "done" and p.name != HEADER_NAME]
    for path in [*data, *done, source / HEADER_NAME]:
        _link(path, target / path.relative_to(source))


def _link(path: Path, to: Path) -> None:
    if to.exists():
        return
    to.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(path, to)
    except OSError:  # another filesystem: a copy, written atomically
        partial = to.with_name(to.name + ".partial")
        shutil.copy2(path, partial)
        os.replace(partial, to)
