"""Training batches from any data_pipelines source, in an order that resume can reproduce exactly.

`TrainBatches` also keeps the run's account of bad samples (`stats`): each is counted once, by its id,
whichever worker or rank found it, and the ids go into the checkpoint so a resumed run knows them too.
"""

from __future__ import annotations

import copy
from collections.abc import Container, Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from data_pipelines import Collator, RecordDataset, ShardDataset, SkipStats, detect_format, open_source
from data_pipelines.negatives import HardNegativeCollator, HardNegatives
from data_pipelines.worker_errors import reraise_worker_errors
from vlm.models.preprocess import config_transform
from vlm.train.config import DataConfig, TrainConfig
from vlm.train.distributed import DistributedEnv, all_gather_objects, all_reduce_min
from vlm.train.stream import ShardStream


class ResumableBatchSampler(Sampler[list[int]]):
    """Endless batches: a seeded shuffle per epoch, this rank's share of it, from any batch on.

    Batch b of the run is a pure function of (seed, b, rank), so a resumed run sees exactly the
    batches the uninterrupted run would have seen. Indices in `skip` (known bad) are left out of a batch,
    so no worker decodes them again; the Collator would have dropped them anyway.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start_batch: int = 0, skip: Container[int] = ()):
        self.n, self.batch_size, self.seed, self.skip = n, batch_size, seed, skip
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch
        self.batches_per_epoch = (n // world_size) // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"{n} samples cannot fill one batch of {batch_size} on each of {world_size} rank(s)")

    def __iter__(self) -> Iterator[list[int]]:
        epoch, first = divmod(self.start_batch, self.batches_per_epoch)
        while True:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
            mine = order[: (self.n // self.world_size) * self.world_size][self.rank :: self.world_size]
            for b in range(first, self.batches_per_epoch):
                yield [i for i in mine[b * self.batch_size : (b + 1) * self.batch_size].tolist() if i not in self.skip]
            epoch, first = epoch + 1, 0


def open_split(path: str, split: str, objective: str, model_config, augment: bool,
               options: dict | None = None, cache_mb: float = 0) -> Dataset:
    """A training or validation source read through the model's own preprocessing (vlm/models/preprocess.py);
    shards are streamed in a new shuffled order every epoch. `options`: a pairs file's columns
    (`DataConfig.train_source_options()`); `cache_mb`: `DataConfig.cache_mb` (files only, not with augment)."""
    transform = config_transform(model_config, train=augment)
    task = "vqa" if objective == "vqa" else "pairs"
    options = dict(options or {})
    if detect_format(path) == "webdataset" and split == "train":
        options["shuffle"] = True
    dataset = open_source(path, split=split, transform=transform, task=task, **options)
    if cache_mb and not augment and isinstance(dataset, RecordDataset):
        dataset.cache_images(cache_mb)
    return dataset


def check_fits_objective(dataset: Dataset, objective: str, path: str) -> None:
    """Say before the first step when a source lacks what the objective trains on (an ImageFolder's labels
    are not captions)."""
    records = getattr(dataset, "records", None)
    need = "question" if objective == "vqa" else "caption"
    if records and getattr(records[0], need) is None:
        hint = " (an ImageFolder is for `vlm eval zeroshot`)" if getattr(dataset, "format", "") == "imagefolder" else ""
        raise ValueError(f"{path}: its items have no {need}, which objective {objective!r} trains on{hint}")


def cut_captions_note(dataset: Dataset, tokenizer, source: str) -> str | None:
    """One line saying how many training captions are longer than the model's context, so cut to it (open_clip
    cuts them without a word: a tiny model's 32 tokens cut many real captions); None when none is, or for a
    stream (shards), whose captions are not known before training. Over CUT_CHECK_LIMIT captions, a sample."""
    records = getattr(dataset, "records", None)
    if not records or records[0].caption is None:
        return None
    step = max(1, len(records) // CUT_CHECK_LIMIT)
    picked = range(0, len(records), step)
    flags = tokenizer.too_long([records[i].caption or "" for i in picked])
    cut = [i for i, too_long in zip(picked, flags, strict=True) if too_long]
    if not cut:
        return None
    rows = getattr(dataset, "rows", None)
    checked = f"{len(flags):,}" + ("" if step == 1 else f" sampled of {len(records):,}")
    return (f"data: {len(cut):,} of {checked} captions in {source} are longer than the model's "
            f"{tokenizer.context_length}-token context and are cut to it (first: {rows[cut[0]] if rows else cut[0]}); "
            "shorten them, or use a model with a longer context")


CUT_CHECK_LIMIT = 5000  # captions tokenised by `cut_captions_note`: BPE over millions would delay the first step


def first_samples(dataset: Dataset, n: int) -> list:
    """The first `n` items (fewer if the source is shorter), by index or, for a stream, by iterating it."""
    if isinstance(dataset, IterableDataset):
        samples = []
        for sample in dataset:
            if len(samples) == n:
                break
            samples.append(sample)
        return samples
    return [dataset[i] for i in range(min(len(dataset), n))]


def make_collator(tokenizer, answers: tuple[str, ...] = (), pad_to_longest: bool = True) -> Collator:
    """Batches with the model's token ids (cut to the longest caption when asked) and, for VQA, soft answer
    targets; `tokenizer` is `vlm.get_tokenizer(model)`."""
    return Collator(tokenizer, pad_to_longest=pad_to_longest, answer_vocab=list(answers) or None)


def with_hard_negatives(collate: Collator, config: TrainConfig):
    """The training collator, plus each caption's compositional hard negatives when the recipe asks for them:
    from the scenes of a shapes world's training split, else from the word-swap heuristic."""
    wanted = config.hard_negatives
    if not wanted.enabled:
        return collate
    kwargs = {"types": wanted.types, "per_caption": wanted.per_caption, "seed": config.seed}
    path = Path(config.data.train)
    if path.is_dir() and detect_format(path) == "shapes":
        negatives = HardNegatives.for_shapes_world(path, config.data.train_split, **kwargs)
    else:
        negatives = HardNegatives(**kwargs)
    return HardNegativeCollator(collate, negatives)


class TrainBatches:
    """Endless non-empty training batches, their place in the data and the run's bad-sample account.

    Map-style sources resume at the batch the sampler had reached; shards at each worker's place in the
    epoch's stream (vlm/train/stream.py). `state()` holds both places and the bad ids for the checkpoint.
    """

    def __init__(self, dataset: Dataset, collate, batch_size: int, config: DataConfig, seed: int,
                 env: DistributedEnv, state: dict | None = None, start_batch: int = 0):
        self.env = env
        own = getattr(dataset, "stats", None)
        self.stats = copy.deepcopy(own) if isinstance(own, SkipStats) else SkipStats(source="training data")
        self.indexed = isinstance(own, SkipStats) and not isinstance(dataset, IterableDataset)  # all rows counted
        state = state or {}
        if "bad_samples" in state:
            self.stats.load_state(state["bad_samples"])
        self.batches = int(state.get("batches", start_batch))
        self._unsynced: tuple[int, list] = (0, [])
        if isinstance(dataset, IterableDataset) and not isinstance(dataset, ShardDataset):
            raise TypeError(f"cannot train from {type(dataset).__name__}: a stream must be a ShardDataset, which "
                            "can resume where it stopped; any other source must be map-style (len + index)")
        if isinstance(dataset, ShardDataset):
            places = state.get("stream") or []  # one per rank
            place = places[env.rank] if len(places) == env.world_size else None
            self.stream = ShardStream(dataset, collate, batch_size, config.num_workers, seed, self.stats, place)
            self.loader = self.stream
        else:
            self.stream = None
            self.sampler = ResumableBatchSampler(len(dataset), batch_size, seed, env.rank, env.world_size,
                                                 self.batches, skip=self.stats.bad)
            self.loader = DataLoader(dataset, batch_sampler=self.sampler, num_workers=config.num_workers,
                                     collate_fn=collate, persistent_workers=config.num_workers > 0,
                                     pin_memory=torch.cuda.is_available())

    def __iter__(self) -> Iterator[dict]:
        for batch in reraise_worker_errors(self.loader):
            self.batches += 1
            self._account(batch)
            batch.pop("bad", None), batch.pop("skip_examples", None)  # counted; the rest is per kept sample
            # Under torchrun every rank steps on the same number of samples (the contrastive loss gathers
            # equal shapes): a batch that lost bad samples on one rank trims the others to its size.
            n = all_reduce_min(len(batch["image_ids"]), self.env.device)
            if n:
                yield trim_batch(batch, n)

    def _account(self, batch: dict) -> None:
        """Count the batch's bad samples once each; the first pass also counts what a stream has shown."""
        first_pass = self.stream.epoch == 0 if self.stream else self.batches <= self.sampler.batches_per_epoch
        count_seen = first_pass and not self.indexed
        seen_before = self.stats.seen
        new = self.stats.add_batch(batch, count_seen=count_seen)
        if self.env.is_distributed:  # for the next sync
            seen, bad = self._unsynced
            self._unsynced = (seen + self.stats.seen - seen_before, bad + new)
        at_epoch_end = self.stream is None and self.batches % self.sampler.batches_per_epoch == 0
        if at_epoch_end and not self.env.is_distributed:
            self.stats.check(final=True)  # the count only grows: a small set over the limit stops here too

    def sync(self) -> None:
        """Share what each rank found since the last sync, so every rank (and the checkpoint) knows it all.
        Every rank calls this at the same steps."""
        if not self.env.is_distributed:
            return
        mine, self._unsynced = self._unsynced, (0, [])
        for rank, (seen, bad) in enumerate(all_gather_objects(mine)):
            if rank != self.env.rank:
                self.stats.seen += seen
                for sample_id, reason, detail in bad:
                    self.stats.mark_bad(sample_id, reason, detail)
        self.stats.check(final=False)

    def state(self) -> dict:
        """The checkpoint's data state; under torchrun every rank calls it (the stream places are gathered)."""
        state = {"batches": self.batches, "bad_samples": self.stats.state()}
        if self.stream is not None:
            state["stream"] = all_gather_objects(self.stream.state()) if self.env.is_distributed \
                else [self.stream.state()]
        return state

    def summary(self) -> str:
        return self.stats.report()


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def trim_batch(batch: dict, n: int) -> dict:
    """The first `n` samples of a batch (tensors and per-sample lists cut alike)."""
    size = len(batch["image_ids"])
    if n == size:
        return batch
    cut = lambda v: v[:n] if (torch.is_tensor(v) or isinstance(v, list)) and len(v) == size else v  # noqa: E731
    return {k: cut(v) for k, v in batch.items()}


def split_batch(batch: dict, parts: int) -> list[dict]:
    """Micro-batches for gradient accumulation (tensors and lists sliced alike)."""
    if parts == 1:
        return [batch]
    n = len(batch["images"])
    size = -(-n // parts)

    def part(value, i):
        sliceable = torch.is_tensor(value) or isinstance(value, list)
        return value[i : i + size] if sliceable and len(value) == n else value

    return [{k: part(v, i) for k, v in batch.items()} for i in range(0, n, size)]
