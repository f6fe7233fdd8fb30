"""Scoring (image, text) pairs with either family, counting the work honestly.

Late fusion encodes each side once and compares by a dot product: no fusion pass at all. Early fusion has to
run its joint transformer once per pair (a *fusion pass*); the patch embedding of each image is computed once
and reused. Pairs always go through the joint stack in batches of one fixed shape (the last batch padded
with copies of its first pair, whose scores are dropped), so a pair's score is the same number whichever
other pairs share its batch: that is what makes hybrid re-ranking at k = N equal exhaustive scoring exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from vlm.models.preprocess import pixel_mask_of
from vlm.tokenizer import cut_padding, padding_mask


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
    # a caption's length: up to its last non-padding token, the one the text tower runs to
    lengths = ids.shape[1] - padding_mask(ids).int().flip(1).argmax(dim=1)
    order = torch.sort(lengths, stable=True).indices  # shortest first
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
        # Padding is hidden from attention, so cutting the columns no text uses changes no score, only the
        # cost (short captions in a 32-token context: about a fifth of the joint sequence). One cut for
        # all texts keeps every batch the same shape.
        self.text_ids, self.text_mask = cut_padding(text_ids, padding_mask(text_ids))
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
            # fixed shape: the columns are cut once for all texts above, not per batch
            batch_scores = self.model.score_embedded(self.patch_tokens[img], self.text_ids[txt], self.text_mask[txt],
                                                     image_mask, cut_text=not self.pad_batches)
            scores.append(batch_scores[:real])
            self.passes += real
        return torch.cat(scores) if scores else torch.zeros(0)

    def score_all(self) -> torch.Tensor:
        """(N_images, N_texts): every pair, the exhaustive early-fusion score matrix."""
        img, txt = torch.meshgrid(torch.arange(self.num_images), torch.arange(self.num_texts), indexing="ij")
        return self.score_pairs(img.reshape(-1), txt.reshape(-1)).view(self.num_images, self.num_texts)
