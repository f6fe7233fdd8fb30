"""Training batches from WebDataset shards that a resumed run continues at the sample it had reached.

A stream cannot seek, so its place is kept per share of the shards: DataLoader worker i reads share i
in an order fixed by the epoch (the shard order and the shuffle buffer are seeded by it), batches what it
reads, and the DataLoader takes one batch from each worker in turn. The checkpoint records how many items
each share has given this epoch and which share gave the last batch; a resumed run skips that many raw
items in each share (read, not decoded) and starts the turn at the next share, so it gets the batches the
run that was not stopped would have got, in the same order (with the same `num_workers`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, get_worker_info

from data_pipelines import ShardDataset, SkipStats
from data_pipelines.worker_errors import reraise_worker_errors


class ShareCollate:
    """The run's collate, plus which share of the shards the batch came from (it runs in the worker)."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, samples: list) -> dict:
        batch = self.collate(samples)
        info = get_worker_info()
        batch["share"] = info.dataset.worker_slot()[0] if info is not None else 0
        return batch


class ShardStream:
    """Endless batches over `dataset`, epoch after epoch; `state()` is its place for the checkpoint.

    Before each epoch the dataset gets the ids `stats` knows to be bad (found by any worker, or in the
    run before a resume), so the new workers skip them without decoding them.
    """

    def __init__(self, dataset: ShardDataset, collate, batch_size: int, num_workers: int, seed: int,
                 stats: SkipStats, state: dict | None = None):
        self.dataset, self.collate, self.batch_size = dataset, ShareCollate(collate), batch_size
        self.num_workers, self.seed, self.stats = num_workers, seed, stats
        self.shares = max(num_workers, 1)
        state = dict(state or {})
        if state and len(state["consumed"]) != self.shares:
            warnings.warn(f"resuming a shard stream read by {len(state['consumed'])} DataLoader worker(s) with "
                          f"{self.shares}: epoch {state['epoch']} starts again from its beginning", stacklevel=2)
            state = {"epoch": state["epoch"]}
        self.epoch = int(state.get("epoch", 0))
        self.consumed = list(state.get("consumed", [0] * self.shares))
        self.last = int(state.get("last", -1))

    def state(self) -> dict:
        return {"epoch": self.epoch, "consumed": list(self.consumed), "last": self.last}

    def __iter__(self) -> Iterator[dict]:
        while True:
            resumed = any(self.consumed)
            got_batch = False
            for batch in reraise_worker_errors(self._epoch_loader()):
                share = batch.pop("share")
                self.consumed[share] += len(batch["image_ids"]) + len(batch["bad"])
                self.last, got_batch = share, True
                yield batch
            if not got_batch and not resumed:
                raise ValueError(f"{self.dataset.urls[0]}: the shards hold no full batch of {self.batch_size} "
                                 f"samples for {self.shares} DataLoader worker(s); lower batch_size or num_workers")
            self.epoch, self.consumed, self.last = self.epoch + 1, [0] * self.shares, -1

    def _epoch_loader(self) -> DataLoader:
        self.dataset.set_epoch(self.epoch)
        self.dataset.stats.bad.update(self.stats.bad)
        self.dataset.resume_skip = dict(enumerate(self.consumed))
        self.dataset.worker_offset = (self.last + 1) % self.shares
        return DataLoader(self.dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                          collate_fn=self.collate, drop_last=True, persistent_workers=False,
                          generator=torch.Generator().manual_seed(self.seed + self.epoch),
                          pin_memory=torch.cuda.is_available())
