"""The one item type every source yields, and the bookkeeping of samples skipped as bad.

Bad images cannot be skipped inside a map-style `__getitem__` (it must return something for every index),
so an item whose image failed to decode comes back with `image=None` and `meta["skip_reason"]`; the
Collator drops it and reports the count in `batch["skipped"]`, which `SkipStats.add_batch` accumulates in
the main process (worker processes hold their own copies of the dataset, so its `.stats` only sees
what was decoded in-process).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MAX_BAD_FRACTION = 0.01
# Below this many samples seen a few bad files say little about the whole set; the final check still runs.
MIN_SAMPLES_FOR_EARLY_CHECK = 200


@dataclass(slots=True)
class Sample:
    """One item: an image with a caption, a label, or a question and its answers.

    Before decoding, `image` holds where the image is (a path, or bytes for shards); after, a PIL image,
    or a tensor once a transform ran. `None` means the image could not be decoded (see `meta`).
    """

    image: Any
    image_id: str
    caption: str | None = None
    label: int | None = None
    question: str | None = None
    question_id: int | None = None
    answers: list[str] | None = None
    answer_type: str | None = None
    question_family: str | None = None
    meta: dict = field(default_factory=dict)


class TooManyBadSamples(ValueError):
    """More than `max_bad_fraction` of a source is unusable: the data, not the code, needs fixing."""


@dataclass
class SkipStats:
    """Counts of skipped samples by reason, with the first few examples, checked against a limit."""

    source: str = "data"
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION
    seen: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def ok(self, n: int = 1) -> None:
        self.seen += n

    def skip(self, reason: str, detail: str = "", count_seen: bool = True) -> None:
        """Count one bad sample; `count_seen=False` when it was already counted as seen (validated, then
        failed to decode)."""
        self.seen += count_seen
        self.skipped[reason] += 1
        if detail and len(self.examples) < 5:
            self.examples.append(detail)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def bad_fraction(self) -> float:
        return self.n_skipped / self.seen if self.seen else 0.0

    def check(self, final: bool = True) -> None:
        """Raise `TooManyBadSamples` when the bad fraction is over the limit (early only with enough seen)."""
        if not final and self.seen < MIN_SAMPLES_FOR_EARLY_CHECK:
            return
        if self.n_skipped and self.bad_fraction > self.max_bad_fraction:
            raise TooManyBadSamples(
                f"{self.source}: {self.n_skipped} of {self.seen} samples are bad ({self._reasons()}), more than "
                f"max_bad_fraction={self.max_bad_fraction:g}; first: {'; '.join(self.examples[:3])}"
            )

    def add_batch(self, batch: dict) -> None:
        """Account for one collated batch (kept samples + the ones the Collator dropped)."""
        dropped = batch.get("skipped", {})
        self.seen += len(batch["image_ids"]) + sum(dropped.values())
        self.skipped.update(dropped)
        self.examples.extend(batch.get("skip_examples", [])[: max(0, 5 - len(self.examples))])
        self.check(final=False)

    def watch(self, batches: Iterable[dict]) -> Iterator[dict]:
        """Yield the non-empty batches of a DataLoader while counting what was dropped; check at the end."""
        for batch in batches:
            self.add_batch(batch)
            if batch["image_ids"]:
                yield batch
        self.check(final=True)

    def report(self) -> str:
        if not self.n_skipped:
            return f"{self.source}: {self.seen} samples, none skipped"
        return f"{self.source}: skipped {self.n_skipped} of {self.seen} samples ({self._reasons()})"

    def as_dict(self) -> dict:
        return {"seen": self.seen, "skipped": dict(self.skipped), "examples": list(self.examples)}

    def _reasons(self) -> str:
        return ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items()))
