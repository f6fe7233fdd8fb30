"""Prediction files next to the metrics, each in its ecosystem's format, written atomically.

- VQA: VQAv2's results format, `[{"question_id": int, "answer": str}]`: what the official evaluator
  (`VQA.loadRes`) and the EvalAI server read.
- zero-shot / classify: CSV, one row per image: `image`, `label` (the true class, empty when unknown), then
  `top1`, `p1`, ... `topK`, `pK` (class names and probabilities).
- retrieval: JSONL, one line per query: `{"query_type": "text"|"image", "query", "query_index", "ids",
  "scores"}`; a text query's `ids` are image ids, an image query's are caption indices (0-based, in the
  order the evaluation read them) with their `captions`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from vlm.atomic_io import atomic_write


def write_vqa_predictions(path: str | Path, predictions: list[dict]) -> None:
    with atomic_write(path, "w") as f:
        json.dump([{"question_id": int(p["question_id"]), "answer": str(p["answer"])} for p in predictions], f)
        f.write("\n")


def write_class_predictions(path: str | Path, predictions: list[dict], classnames: list[str]) -> None:
    """`predictions`: dicts with `image`, `label`, `classes` (indices, best first) and `probabilities`.

    UTF-8, but a file name that is not (Latin-1 bytes reach Python as surrogate escapes) is written as the
    bytes it has on disk, so the CSV names the very file; such a name never fails the write."""
    top = max((len(p["classes"]) for p in predictions), default=0)
    header = ["image", "label"] + [f"{name}{i}" for i in range(1, top + 1) for name in ("top", "p")]
    with atomic_write(path, "w", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        for p in predictions:
            label = classnames[p["label"]] if p.get("label") is not None else ""
            cells = [c for i, prob in zip(p["classes"], p["probabilities"], strict=True)
                     for c in (classnames[i], f"{prob:.6f}")]
            writer.writerow([p["image"], label, *cells])


def write_retrieval_predictions(path: str | Path, image_ids: list[str], captions: list[str], t2i, i2t,
                                depth: int = 10) -> None:
    """`t2i` / `i2t`: rankings (`.candidates`, `.scores`, best first) of every text and every image query."""
    with atomic_write(path, "w") as f:
        for t, (ids, scores) in enumerate(zip(t2i.candidates[:, :depth].tolist(), t2i.scores[:, :depth].tolist(),
                                              strict=True)):
            line = {"query_type": "text", "query": captions[t], "query_index": t,
                    "ids": [image_ids[i] for i in ids], "scores": scores}
            f.write(json.dumps(line) + "\n")
        for i, (ids, scores) in enumerate(zip(i2t.candidates[:, :depth].tolist(), i2t.scores[:, :depth].tolist(),
                                              strict=True)):
            line = {"query_type": "image", "query": image_ids[i], "query_index": i, "ids": ids,
                    "captions": [captions[t] for t in ids], "scores": scores}
            f.write(json.dumps(line) + "\n")
