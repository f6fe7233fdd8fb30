"""`vlm data inspect`: what a dataset is, how big, what its captions look like, and what is wrong with it."""

from __future__ import annotations

import itertools
import statistics
from collections import Counter
from pathlib import Path

from data_pipelines.images import BadImage, decode_image
from data_pipelines.records import RecordDataset
from data_pipelines.sample import Sample
from data_pipelines.sources import detect_format, open_source, shapes_splits

TOKEN_SAMPLE = 5000  # BPE-tokenising millions of captions would dominate; a sample shows the length spread


def inspect_source(path: str | Path, split: str | None = None, samples: int = 3, check_images: int = 200,
                   limit: int = 100_000, **options) -> dict:
    """A report dict: format, counts, example items, caption length statistics, problems found.

    Never refuses a source for having many bad samples (that is what it reports); `check_images` decodes
    that many images spread over a map-style source (0: all); shards are streamed up to `limit` samples.
    """
    if split is None and Path(path).is_dir() and detect_format(path) == "shapes":
        splits = shapes_splits(path)
        return {"format": "shapes", "path": str(path),
                "splits": {s: inspect_source(path, s, samples, check_images, limit, **options) for s in splits}}
    source = open_source(path, split=split, max_bad_fraction=1.0, **options)
    if isinstance(source, RecordDataset):
        items = source.records
        checked = _check_images(source, check_images)
    else:  # shards: every streamed image is decoded, up to `limit` samples
        streamed = list(itertools.islice(source, limit))
        items = [s for s in streamed if s.image is not None]
        checked = {"decoded": len(streamed), "of": None if len(streamed) == limit else len(streamed),
                   "sampled": len(streamed) == limit}
    report = {"format": source.format, "path": str(path), "split": split, "items": len(items),
              "images": len({s.image_id for s in items}), "images_checked": checked}
    report.update(_content_counts(items, source))
    report["examples"] = [_describe(s) for s in items[:samples]]
    report["problems"] = _problems(source)
    if getattr(source, "info", {}).get("separator") not in (None, ",", "\t"):
        report["separator"] = source.info["separator"]  # detected from the header (`pairs.detect_separator`)
    return report


def _problems(source) -> dict:
    """Skipped items by reason, and the rows of a pairs file whose field spans many lines or thousands of
    characters: an unclosed quote swallows the rows below it without any item being skipped."""
    problems = {"skipped": dict(source.stats.skipped), "examples": list(source.stats.examples)}
    long_fields = getattr(source, "info", {}).get("long_fields") or {}
    if long_fields.get("count"):
        problems["long_fields"] = long_fields["count"]
        problems["examples"] += long_fields["examples"]
    return problems


def _check_images(source: RecordDataset, n: int) -> dict:
    """Decode `n` images spread evenly over the source; failures land in `source.stats`.

    Returns how many distinct images were decoded, of how many, and whether that was a sample: a corrupt
    image outside the sample is not found, and the report must say so."""
    records = source.records
    step = 1 if n <= 0 or n >= len(records) else len(records) / n
    indices = sorted({int(i * step) for i in range(len(records) if step == 1 else n)})
    failures: dict = {}  # image -> BadImage or None: an image with five captions is decoded once
    for i in indices:
        image = records[i].image
        if image not in failures:
            try:
                decode_image(image, source.max_pixels)
                failures[image] = None
            except BadImage as e:
                failures[image] = e
        if failures[image] is not None:  # counted per record, as before
            source.stats.skip(failures[image].reason, failures[image].detail, count_seen=False)
    total = len({r.image for r in records})
    return {"decoded": len(failures), "of": total, "sampled": len(failures) < total}


def _content_counts(items: list[Sample], source) -> dict:
    report = {}
    captions = [s.caption for s in items if s.caption is not None]
    if captions:
        report["captions"] = _length_stats(captions)
    questions = [s for s in items if s.question is not None]
    if questions:
        report["questions"] = len(questions)
        report["answer_types"] = dict(Counter(s.answer_type for s in questions))
        families = Counter(s.question_family for s in questions if s.question_family)
        if families:
            report["question_families"] = dict(families)
    labels = Counter(s.label for s in items if s.label is not None)
    if labels:
        names = getattr(source, "info", {}).get("classnames", [])
        report["classes"] = len(names) or len(labels)
        report["classes_with_images"] = len(labels)
        report["templates"] = len(getattr(source, "info", {}).get("templates", []))
    return report


def _length_stats(captions: list[str]) -> dict:
    from data_pipelines.bpe_count import bpe_token_count  # open_clip's counts, without torch

    words = sorted(len(c.split()) for c in captions)
    sample = captions[:: max(1, len(captions) // TOKEN_SAMPLE)]
    tokens = sorted(min(bpe_token_count(c) + 2, 512) for c in sample)  # + start/end of text, in a 512 context
    return {
        "count": len(captions),
        "words": {"min": words[0], "median": statistics.median(words), "mean": round(statistics.fmean(words), 2),
                  "p95": words[int(0.95 * (len(words) - 1))], "max": words[-1]},
        "tokens_with_sot_eot": {"sampled": len(sample), "median": statistics.median(tokens),
                                "p95": tokens[int(0.95 * (len(tokens) - 1))], "max": tokens[-1],
                                "over_77": sum(t > 77 for t in tokens)},
    }


def _describe(sample: Sample) -> dict:
    fields = {"image_id": sample.image_id, "image": str(sample.image) if not hasattr(sample.image, "size") else
              f"<{sample.image.size[0]}x{sample.image.size[1]} image>"}
    for name in ("caption", "label", "question", "answers", "answer_type", "question_family"):
        value = getattr(sample, name)
        if value is not None:
            fields[name] = value
    fields.update({k: v for k, v in sample.meta.items() if k in ("negative_caption", "negative_type", "classname")})
    return fields


def format_report(report: dict, indent: str = "") -> str:
    """Human-readable lines for `vlm data inspect`."""
    if "splits" in report:
        lines = [f"{indent}format: shapes world ({report['path']})"]
        for split, sub in report["splits"].items():
            lines += [f"{indent}split {split}:", format_report(sub, indent + "  ")]
        return "\n".join(lines)
    separator = f" (separator {report['separator']!r})" if "separator" in report else ""
    lines = [f"{indent}format: {report['format']}{separator}",
             f"{indent}items: {report['items']}  images: {report['images']}"]
    for key in ("questions", "answer_types", "question_families", "classes", "classes_with_images", "templates"):
        if key in report:
            lines.append(f"{indent}{key.replace('_', ' ')}: {report[key]}")
    if "captions" in report:
        c = report["captions"]
        lines.append(f"{indent}caption words: {c['words']}")
        lines.append(f"{indent}caption tokens: {c['tokens_with_sot_eot']}")
    lines.append(f"{indent}examples:")
    lines += [f"{indent}  {example}" for example in report["examples"]]
    lines.append(f"{indent}{_checked_line(report['images_checked'])}")
    problems = report["problems"]
    if problems["skipped"] or problems.get("long_fields"):
        if problems["skipped"]:
            lines.append(f"{indent}problems: {problems['skipped']}")
        if problems.get("long_fields"):
            lines.append(f"{indent}problems: {problems['long_fields']} row(s) with a field spanning many lines or "
                         "thousands of characters (an unclosed quote?)")
        lines += [f"{indent}  {e}" for e in problems["examples"]]
    else:
        sampled = report["images_checked"]["sampled"]
        lines.append(f"{indent}problems: none found" + (" in the images decoded" if sampled else ""))
    return "\n".join(lines)


def _checked_line(checked: dict) -> str:
    if not checked["sampled"]:
        return f"images decoded: all {checked['decoded']}"
    if checked["of"] is None:  # shards, streamed up to the limit
        return f"images decoded: the first {checked['decoded']} streamed (a sample: the rest was not read)"
    return (f"images decoded: a sample of {checked['decoded']} of {checked['of']}, spread over the dataset "
            "(--check-images 0 decodes all)")
