"""The one item type every source yields, and the bookkeeping of samples skipped as bad.

Bad images cannot be skipped inside a map-style `__getitem__` (it must return something for every index),
so an item whose image failed to decode comes back with `image=None`, `meta["skip_reason"]` and
`meta["skip_id"]` (its index, or its shard key); the Collator drops it and lists it in `batch["bad"]`, which
`SkipStats.add_batch` accumulates in the main process (worker processes hold their own copies of the
dataset, so its `.stats` only sees what was decoded in-process).

Bad samples are counted once each, by id, however many epochs visit them: a run of many epochs over a set
with a few bad files must not add them up until it fails. The ids found bad go back to the dataset
(`stats.bad`), which then skips them without decoding them again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_pipelines.worker_errors import reraise_worker_errors

DEFAULT_MAX_BAD_FRACTION = 0.01
# Below this many samples seen a few bad files say little about the whole set; the final check still runs.
MIN_SAMPLES_FOR_EARLY_CHECK = 200
SKIP_REPORT_COLUMNS = ("item", "reason", "detail")


@dataclass
class BadFileRule:
    """The process's one bad-file rule: every command that reads images stops past the same fraction
    (`--max-bad-fraction`), and every skipped item lands in one list, written as a report file at the end."""

    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION
    skipped: dict = field(default_factory=dict)  # (item, reason) -> detail, once each however often seen


RULE = BadFileRule()


@contextmanager
def bad_file_rule(max_bad_fraction: float | None = None) -> Iterator[BadFileRule]:
    """The rule while a command runs: a fresh list of skipped items, and the limit given (None: the default)."""
    if max_bad_fraction is not None and not 0 <= max_bad_fraction <= 1:
        raise ValueError(f"--max-bad-fraction must be between 0 and 1, got {max_bad_fraction:g}")
    saved = (RULE.max_bad_fraction, RULE.skipped)
    RULE.max_bad_fraction = DEFAULT_MAX_BAD_FRACTION if max_bad_fraction is None else max_bad_fraction
    RULE.skipped = {}
    try:
        yield RULE
    finally:
        RULE.max_bad_fraction, RULE.skipped = saved


def write_skip_report(path: str | Path, skipped: dict | None = None) -> Path | None:
    """Write the skipped items (item, reason, detail) as TSV to `path`; None when nothing was skipped."""
    skipped = RULE.skipped if skipped is None else skipped
    if not skipped:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = str.maketrans("\t\r\n", "   ")
    lines = ["\t".join(SKIP_REPORT_COLUMNS)]
    lines += ["\t".join(str(v).translate(clean) for v in (item, reason, detail))
              for (item, reason), detail in skipped.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogateescape")
    return path


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
    max_bad_fraction: float | None = None  # None: the command's rule (`bad_file_rule`, 0.01 by default)
    seen: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    bad: dict = field(default_factory=dict)  # sample id (index or shard key) -> reason, for ids found at decode time

    def __post_init__(self) -> None:
        if self.max_bad_fraction is None:
            self.max_bad_fraction = RULE.max_bad_fraction

    def ok(self, n: int = 1) -> None:
        self.seen += n

    def skip(self, reason: str, detail: str = "", count_seen: bool = True, item: str | None = None) -> None:
        """Count one bad sample; `count_seen=False` when it was already counted as seen (validated, then
        failed to decode). `item` names it for the report file (default: `detail` up to its first ': ')."""
        self.seen += count_seen
        self.skipped[reason] += 1
        if detail and len(self.examples) < 5:
            self.examples.append(detail)
        item = item if item is not None else detail.split(": ", 1)[0]
        RULE.skipped.setdefault((item or self.source, reason), detail)

    def mark_bad(self, sample_id, reason: str, detail: str = "", count_seen: bool = False) -> bool:
        """Count sample `sample_id` as bad unless it already was; True when it is new.

        `count_seen=False` when it was already counted as seen (indexed, then failed to decode)."""
        if sample_id is not None and sample_id in self.bad:
            return False
        if sample_id is not None:
            self.bad[sample_id] = reason
        self.skip(reason, detail, count_seen=count_seen)
        return True

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

    def add_batch(self, batch: dict, count_seen: bool = True) -> list[tuple]:
        """Account for one collated batch: the kept samples (as seen, when `count_seen`) and each dropped
        one not already known bad. `count_seen=False` when the samples were counted before (an index read
        up front, or a stream's later epochs). Returns the (id, reason, detail) of the samples new to the count."""
        if count_seen:
            self.seen += len(batch["image_ids"])
        bad = batch.get("bad")
        if bad is None:  # a batch from a collate_fn that does not list ids: count by reason
            bad = [(None, reason, "") for reason, n in batch.get("skipped", {}).items() for _ in range(n)]
        new = [(i, reason, detail) for i, reason, detail in bad if self.mark_bad(i, reason, detail, count_seen)]
        self.check(final=False)
        return new

    def watch(self, batches: Iterable[dict]) -> Iterator[dict]:
        """Yield the non-empty batches of a DataLoader while counting what was dropped; check at the end."""
        for batch in reraise_worker_errors(batches):
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

    def state(self) -> dict:
        """Plain data for a checkpoint (a resumed run must not rediscover the bad samples)."""
        return {**self.as_dict(), "bad": dict(self.bad)}

    def load_state(self, state: dict) -> None:
        self.seen = int(state["seen"])
        self.skipped = Counter(state["skipped"])
        self.examples = list(state["examples"])
        self.bad.clear()  # in place: a sampler may hold this dict to leave known bad samples out
        self.bad.update(state["bad"])

    def _reasons(self) -> str:
        return ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items()))
