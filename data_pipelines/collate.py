"""Samples -> a batch of tensors. Runs in DataLoader workers, so tokenisation happens there too.

Samples whose image failed to decode (`image is None`) are dropped here and listed in `batch["bad"]`, the
one place a map-style dataset can leave a sample out; `SkipStats.add_batch` counts those, once per sample
id, in the main process.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from data_pipelines.sample import Sample
from data_pipelines.vqa import answer_targets
from vlm.tokenizer import cut_padding, padding_mask

TOKEN_CACHE_SIZE = 50_000  # texts; at most ~31 MB of ids at a 77-token context


class Collator:
    """`collate_fn` for a DataLoader over any source.

    Keys: `images` (B,3,H,W), `image_ids`, `skipped` {reason: n}, `skip_examples`, `bad` [(sample id, reason,
    detail)] of the dropped samples (what `SkipStats.add_batch` counts once per id), and when the samples have
    them: `text` (B,T) long + `text_mask` (B,T) bool + `captions`; `questions` + `question_mask` +
    `question_text` + `question_ids` + `answers` + `answer_types` + `question_families` (+ `answer_targets`
    (B,A) soft scores when `answer_vocab` is given); `labels` (B,) long; `negative_text` + `negative_mask` +
    `negative_captions` + `negative_types` for compositional items.
    `pad_to_longest` cuts token tensors to the longest sequence in the batch instead of the context length.
    With `tokenizer=None` the texts stay strings (no `text`, `questions`, `negative_text` tensors): for a
    consumer that tokenises at its own model's context length, as evaluation does.
    """

    def __init__(self, tokenizer=None, pad_to_longest: bool = False, answer_vocab: list[str] | None = None):
        self.tokenizer = tokenizer
        self.pad_to_longest = pad_to_longest
        self.answer_vocab = answer_vocab
        # Token ids by text: captions and questions recur every epoch (and a shapes world's often within one),
        # and BPE in Python costs about as much as decoding the image. Bounded, so a huge corpus cannot grow it.
        self.token_cache: dict[str, torch.Tensor] = {}

    def __call__(self, samples: list[Sample]) -> dict:
        kept = [s for s in samples if s.image is not None]
        dropped = [s for s in samples if s.image is None]
        batch = {
            "image_ids": [s.image_id for s in kept],
            "skipped": dict(Counter(s.meta.get("skip_reason", "bad image") for s in dropped)),
            "skip_examples": [s.meta.get("skip_detail", s.image_id) for s in dropped],
            "bad": [(s.meta.get("skip_id"), s.meta.get("skip_reason", "bad image"), s.meta.get("skip_detail", ""))
                    for s in dropped],
            "images": self._stack_images(kept),
        }
        if _all_have(kept, lambda s: s.caption is not None, "caption"):
            batch["captions"] = [s.caption for s in kept]
            if self.tokenizer is not None:
                batch["text"], batch["text_mask"] = self._tokenize(batch["captions"])
        if _all_have(kept, lambda s: s.question is not None, "question"):
            batch["question_text"] = [s.question for s in kept]
            if self.tokenizer is not None:
                batch["questions"], batch["question_mask"] = self._tokenize(batch["question_text"])
            batch["question_ids"] = [s.question_id for s in kept]
            batch["answer_types"] = [s.answer_type for s in kept]
            batch["question_families"] = [s.question_family for s in kept]
            if _all_have(kept, lambda s: s.answers is not None, "answers"):
                batch["answers"] = [s.answers for s in kept]
                if self.answer_vocab is not None:
                    batch["answer_targets"] = answer_targets(batch["answers"], self.answer_vocab)
        if _all_have(kept, lambda s: s.label is not None, "label"):
            batch["labels"] = torch.tensor([s.label for s in kept], dtype=torch.long)
        if _all_have(kept, lambda s: "negative_caption" in s.meta, "negative_caption"):
            batch["negative_captions"] = [s.meta["negative_caption"] for s in kept]
            batch["negative_types"] = [s.meta.get("negative_type") for s in kept]
            if self.tokenizer is not None:
                batch["negative_text"], batch["negative_mask"] = self._tokenize(batch["negative_captions"])
        return batch

    def _tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self._token_ids(texts) if texts else torch.zeros(0, self.tokenizer.context_length, dtype=torch.long)
        mask = padding_mask(ids, getattr(self.tokenizer, "pad_id", 0))
        if self.pad_to_longest and len(texts):
            ids, mask = cut_padding(ids, mask)
        return ids, mask

    def _token_ids(self, texts: list[str]) -> torch.Tensor:
        cache = self.token_cache
        new = [t for t in dict.fromkeys(texts) if t not in cache]
        fresh = dict(zip(new, self.tokenizer(new), strict=False)) if new else {}
        for text, row in fresh.items():
            if len(cache) < TOKEN_CACHE_SIZE:
                cache[text] = row.clone()  # not a view that keeps the whole batch alive
        return torch.stack([fresh[t] if t in fresh else cache[t] for t in texts])

    @staticmethod
    def _stack_images(samples: list[Sample]) -> torch.Tensor:
        if not samples:
            return torch.zeros(0)
        if not isinstance(samples[0].image, torch.Tensor):
            raise TypeError("Collator needs tensor images: open the source with transform=eval_transform(size) "
                            f"or train_transform(size), got {type(samples[0].image).__name__}")
        # numpy's single-threaded copy, not torch.stack: in a main process on busy cores torch's intra-op
        # threads made this 0.7 s per 64 x 224 px batch (measured), numpy takes ~10 ms.
        return torch.from_numpy(np.stack([s.image.numpy() for s in samples]))


def _all_have(samples: list[Sample], has, what: str) -> bool:
    """True when every sample has the field; a batch mixing items with and without it is a caller bug."""
    flags = [has(s) for s in samples]
    if any(flags) and not all(flags):
        raise ValueError(f"batch mixes samples with and without a {what}; batch one kind of source at a time")
    return bool(flags) and all(flags)
