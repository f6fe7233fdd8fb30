"""Scoring (image, text) pairs with either family, counting the work honestly.

Late fusion encodes each side once and compares by a dot product: no fusion pass at all. Early fusion has to
run its joint transformer once per pair (a *fusion pass*); the patch embedding of each image is computed once
and reused. Pairs go through the joint stack grouped by their text's width (`text_widths`: its length rounded
up, a function of the text alone), in batches of one fixed shape per width (the last batch padded with copies
of its first pair, whose scores are dropped), so a pair's score is the same number whichever other pairs share
its batch: that is what makes hybrid re-ranking at k = N equal exhaustive scoring exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from vlm.models.preprocess import pixel_mask_of
from vlm.tokenizer import padding_mask

TEXT_WIDTH_STEP = 4  # texts run at their length rounded up to a multiple of this: few shapes, little padding


def text_lengths(ids: torch.Tensor) -> torch.Tensor:
    """Each text's length up to its last non-padding token, the one a causal tower or the fusion stack runs to."""
    return ids.shape[1] - padding_mask(ids).int().flip(1).argmax(dim=1)


def text_widths(ids: torch.Tensor, step: int = TEXT_WIDTH_STEP) -> torch.Tensor:
    """The width each text's pairs run at. Padding is hidden from attention, so the columns after a text's last
    token change no score, only the cost: in a mix of lengths (the shapes world's captions: 6-28 tokens, mean 16)
    running each pair at its own text's width instead of the longest text's cuts the joint sequence by a fifth."""
    widths = (text_lengths(ids).clamp_min(1) + step - 1) // step * step
    return widths.clamp_max(ids.shape[1])


@torch.no_grad()
def _batched(fn, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    if not len(inputs):  # one call on the empty batch: its output has the right trailing shape
        return fn(inputs)
    return torch.cat([fn(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])


def encode_images(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Late fusion: (N, D) normalised image embeddings."""
    return _batched(model.encode_image, images, batch_size)


def encode_texts(model: nn.Module, ids: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Late fusion: (N, D) normalised text embeddings, in the order of `ids`.

    The text tower runs a batch up to its longest caption, so captions are batched by length (sorted, batched,
    put back in order): a mix of lengths does not pay for its longest caption in every batch.
    """
    order = torch.sort(text_lengths(ids), stable=True).indices  # shortest first
    by_length = _batched(model.encode_text, ids[order], batch_size)
    return torch.empty_like(by_length).index_copy_(0, order, by_length)


def embed_images(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Early fusion: (N, P, W) patch tokens, once per image."""
    return _batched(model.embed_image, images, batch_size)


class FusionPairScorer:
    """Early-fusion ITM scores of chosen (image, text) pairs; `passes` counts every pair run through the stack."""

    def __init__(self, model: nn.Module, images: torch.Tensor, text_ids: torch.Tensor, batch_size: int = 128,
                 pad_batches: bool = True):
        if getattr(model.config, "arch", None) != "early_fusion":
            raise ValueError(f"pair scoring needs an early-fusion model, got arch {model.config.arch!r}")
        self.model = model
        self.patch_tokens = embed_images(model, images)  # (N_img, P, W)
        # ViLT images of different sizes are NaN-padded (vlm/models/preprocess.py): hide their padded patches
        self.image_mask = model.image_mask(pixel_mask_of(images)) if len(images) else None
        self.text_ids = text_ids
        self.text_mask = padding_mask(text_ids)
        self.text_widths = text_widths(text_ids)
        self.batch_size = batch_size
        self.pad_batches = pad_batches  # False only where speed matters and exact equality does not (latency)
        self.passes = 0

    @property
    def num_images(self) -> int:
        return self.patch_tokens.shape[0]

    @property
    def num_texts(self) -> int:
        return self.text_ids.shape[0]

    @torch.no_grad()
    def score_pairs(self, image_index: torch.Tensor, text_index: torch.Tensor) -> torch.Tensor:
        """(M,) ITM log-odds of pairs (image_index[m], text_index[m])."""
        scores = torch.empty(len(image_index))
        widths = self.text_widths[text_index]
        for width in widths.unique().tolist():
            at = (widths == width).nonzero().squeeze(1)
            scores[at] = self._score_at_width(image_index[at], text_index[at], width)
        return scores

    def _score_at_width(self, image_index: torch.Tensor, text_index: torch.Tensor, width: int) -> torch.Tensor:
        scores = []
        for start in range(0, len(image_index), self.batch_size):
            img = image_index[start : start + self.batch_size]
            txt = text_index[start : start + self.batch_size]
            real = len(img)
            pad = self.batch_size - real if self.pad_batches else 0
            if pad:  # keep every batch the same shape; see the module docstring
                img = torch.cat([img, img[:1].expand(pad)])
                txt = torch.cat([txt, txt[:1].expand(pad)])
            image_mask = None if self.image_mask is None else self.image_mask[img]
            # fixed shape: the columns are cut to the texts' width, not to this batch's longest text
            batch_scores = self.model.score_embedded(self.patch_tokens[img], self.text_ids[txt, :width],
                                                     self.text_mask[txt, :width], image_mask,
                                                     cut_text=not self.pad_batches)
            scores.append(batch_scores[:real])
            self.passes += real
        return torch.cat(scores)

    def score_all(self) -> torch.Tensor:
        """(N_images, N_texts): every pair, the exhaustive early-fusion score matrix."""
        img, txt = torch.meshgrid(torch.arange(self.num_images), torch.arange(self.num_texts), indexing="ij")
        return self.score_pairs(img.reshape(-1), txt.reshape(-1)).view(self.num_images, self.num_texts)
