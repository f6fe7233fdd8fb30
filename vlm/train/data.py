"""Training batches from any data_pipelines source, in an order that resume can reproduce exactly."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from data_pipelines import Collator, open_source
from vlm.models.preprocess import config_transform
from vlm.train.config import DataConfig


class ResumableBatchSampler(Sampler[list[int]]):
    """Endless batches: a seeded shuffle per epoch, this rank's share of it, from any batch on.

    Batch b of the run is a pure function of (seed, b, rank), so a resumed run sees exactly the
    batches the uninterrupted run would have seen.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start_batch: int = 0):
        self.n, self.batch_size, self.seed = n, batch_size, seed
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
                yield mine[b * self.batch_size : (b + 1) * self.batch_size].tolist()
            epoch, first = epoch + 1, 0


def open_split(path: str, split: str, objective: str, model_config, augment: bool,
               options: dict | None = None) -> Dataset:
    """`path` read through the model's own preprocessing (vlm/models/preprocess.py); `options`: a pairs file's
    columns (`DataConfig.train_source_options()`)."""
    transform = config_transform(model_config, train=augment)
    task = "vqa" if objective == "vqa" else "pairs"
    return open_source(path, split=split, transform=transform, task=task, **(options or {}))


def make_collator(tokenizer, answers: tuple[str, ...] = (), pad_to_longest: bool = True) -> Collator:
    """Batches with the model's token ids (cut to the longest caption when asked) and, for VQA, soft answer
    targets; `tokenizer` is `vlm.get_tokenizer(model)`."""
    return Collator(tokenizer, pad_to_longest=pad_to_longest, answer_vocab=list(answers) or None)


def make_train_loader(dataset: Dataset, collate, batch_size: int, config: DataConfig, seed: int,
                      rank: int, world_size: int, start_batch: int) -> Iterator[dict]:
    """Endless iterator of batches; map-style sources resume at `start_batch` exactly.

    Streaming sources (WebDataset shards) cannot seek: they restart with a shuffle seeded by the step,
    which keeps the data random but not identical to an uninterrupted run.
    """
    workers = config.num_workers
    if isinstance(dataset, IterableDataset):
        def endless() -> Iterator[dict]:
            epoch = start_batch
            while True:
                generator = torch.Generator().manual_seed(seed + epoch)
                yield from DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                                      drop_last=True, generator=generator, persistent_workers=False)
                epoch += 1
        return endless()
    sampler = ResumableBatchSampler(len(dataset), batch_size, seed, rank, world_size, start_batch)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                        persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())
    return iter(loader)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


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
