"""`vlm classify`: zero-shot labels for any images, with either family, streamed.

The same scoring as `vlm eval zeroshot` (`zeroshot.class_logit_fn`): late fusion compares each image with the
mean prompt embedding of each label, early fusion averages its ITM log-odds over the label's prompts. Images
that cannot be read are skipped, counted and listed, under the one bad-file rule of every command
(`--max-bad-fraction`, 0.01 by default): a folder of user photos has a few, but a folder of unreadable ones is
an error, never "classified 0 images".
"""

from __future__ import annotations

from pathlib import Path

from data_pipelines.images import IMAGE_EXTENSIONS
from data_pipelines.pairs import open_pairs
from data_pipelines.records import RecordDataset
from data_pipelines.sample import Sample, SkipStats
from vlm.eval.class_lists import DEFAULT_TEMPLATES, resolve_classnames, resolve_templates
from vlm.eval.predictions import write_class_predictions
from vlm.eval.stream import StreamOptions
from vlm.eval.zeroshot import stream_zero_shot
from vlm.models import load_model
from vlm.models.precision import model_workload, resolve_precision, run_record, with_precision
from vlm.models.preprocess import model_transform

PAIRS_SUFFIXES = (".csv", ".tsv", ".jsonl")


def image_files(inputs: list[str | Path], source_options: dict | None = None) -> list[Path]:
    """The image files named, those under the folders named (recursively, sorted), and those a pairs file
    (CSV/TSV/JSONL, e.g. OpenCLIP's `filepath`/`title` TSV) lists in its image column, each once."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif item.is_file() and item.suffix.lower() in PAIRS_SUFFIXES:
            listed = open_pairs(item, check_files=False, max_bad_fraction=1.0, **(source_options or {}))
            files += list(dict.fromkeys(Path(r.image) for r in listed.records))  # a file per image, not per caption
        elif item.is_file():
            files.append(item)
        else:
            raise ValueError(f"{item}: no such image file or folder")
    if not files:
        raise ValueError(f"no image files in {', '.join(map(str, inputs))}")
    return files


def image_dataset(files: list[Path], transform, source: str = "classify") -> RecordDataset:
    """Image-only records; a bad file is counted and skipped, up to the command's --max-bad-fraction.
    `transform`: the model's own preprocessing (`model_transform`); `source` names the inputs in messages."""
    stats = SkipStats(source=source)
    records = [Sample(path, str(path)) for path in files]
    return RecordDataset(records, stats, "images", transform)


def classify(checkpoint: str | Path, inputs: list[str | Path], labels: list[str],
             templates: list[str] = DEFAULT_TEMPLATES, out: str | Path | None = None,
             options: StreamOptions | None = None, top: int = 5,
             source_options: dict | None = None, precision: str = "fp32") -> tuple[list[dict], dict]:
    """Per image the `top` labels and probabilities (best first); writes the CSV to `out` when given.
    `source_options`: the columns of a pairs file among `inputs` (`data_pipelines.options.pairs_options`).

    Returns the predictions and a summary (`images`, `skipped`, `skipped_reasons`, `precision`, `cpu_class`)."""
    labels, templates = resolve_classnames(labels), resolve_templates(templates)  # unique, or refused by name
    model = load_model(checkpoint)
    precision = resolve_precision(precision, model_workload(model))
    model = with_precision(model, precision)
    named = ", ".join(map(str, inputs))
    dataset = image_dataset(image_files(inputs, source_options), model_transform(model), named)
    result, predictions = stream_zero_shot(model, dataset, labels, templates, options or StreamOptions(),
                                           min(top, len(labels)), allow_empty=True)
    if not predictions:
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(result.get("skipped_samples", {}).items()))
        raise ValueError(f"{named}: none of the {len(dataset)} images could be read ({reasons}); check the files")
    for p in predictions:
        p["labels"] = [labels[c] for c in p["classes"]]
    if out is not None:
        write_class_predictions(out, predictions, labels)
    skipped = result.get("skipped_samples", {})
    summary = {"images": len(predictions), "skipped": sum(skipped.values()), "skipped_reasons": skipped,
               **run_record(precision)}
    return predictions, summary
