"""Task heads shared by the two families, so both answer the same questions."""

from __future__ import annotations

import torch
from torch import nn


class VQAHead(nn.Module):
    """ViLT's VQA classifier: a two-layer MLP from a pooled feature to the answer vocabulary."""

    def __init__(self, in_dim: int, num_answers: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or 2 * in_dim
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(),
                                 nn.Linear(hidden, num_answers))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features)


class LateFusionVQAHead(nn.Module):
    """VQA from two separate embeddings: an MLP over [img, txt, img*txt, |img-txt|].

    The element-wise terms give the MLP the only interactions late fusion has, so its VQA score
    measures what a dot-product model can answer.
    """

    def __init__(self, embed_dim: int, num_answers: int):
        super().__init__()
        self.head = VQAHead(4 * embed_dim, num_answers, hidden=2 * embed_dim)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        i, t = image_features, text_features
        return self.head(torch.cat([i, t, i * t, (i - t).abs()], dim=-1))


class MLMHead(nn.Module):
    """BERT's masked-token head; the decoder is the token embedding matrix, passed in (weights tied)."""

    def __init__(self, width: int, vocab_size: int, eps: float = 1e-5):
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width, eps=eps))
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor, token_embedding: torch.Tensor) -> torch.Tensor:
        return self.transform(hidden) @ token_embedding.T + self.bias
