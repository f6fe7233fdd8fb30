"""The models behind the service: a late-fusion encoder that embeds, an early-fusion model that re-ranks.

An `EarlyFusionModel` cannot embed one side alone, so it never builds the index; it only re-scores the top
candidates of a text query (ALBEF's pattern: rank everything with cheap embeddings, fuse only the top k).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlm.eval.pair_scoring import encode_texts
from vlm.models import DualEncoder, EarlyFusionModel, load_model
from vlm.models.dual_encoder import MAX_LOGIT_SCALE
from vlm.models.precision import compiles_by_default, with_precision
from vlm.models.preprocess import model_transform
from vlm.tokenizer import get_tokenizer, padding_mask

TEXT_BATCH = 16  # captions per text-tower call: sorted by length, small batches pad little, and a few hundred
# token rows per call keep the matmuls about as efficient per FLOP as larger batches on a CPU


class Encoder:
    """Texts and images -> L2-normalised float32 embeddings of a `DualEncoder`, run at `precision` (fp32|int8)."""

    def __init__(self, model: DualEncoder, precision: str = "fp32"):
        self.model = with_precision(model.eval(), precision)
        self.precision = precision
        self.tokenizer = get_tokenizer(model)
        self.transform = model_transform(model)
        self.dim = model.config.embed_dim
        self.name = model.config.name
        self.weights: str | None = None  # weights_fingerprint, when load_encoder was asked for it
        self.compiles = precision == "int8" and compiles_by_default(model)

    def warm_up(self) -> None:
        """Compile now, not in the first request: a compiled int8 image tower compiles at its first call (minutes
        on 2 cores) and once more at its second batch shape, so both shapes are run here on a blank image."""
        if self.compiles:
            blank = self.preprocess([Image.new("RGB", (32, 32))])
            for batch in (1, 2):
                self.encode_pixels(blank.expand(batch, -1, -1, -1).contiguous())

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Batched by caption length (see `encode_texts` in vlm/eval/pair_scoring.py), in the order given."""
        return encode_texts(self.model, self.tokenizer(texts), TEXT_BATCH).float().numpy()

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.stack([self.transform(image) for image in images])  # (B, 3, H, W)

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        return self.model.encode_image(pixels).float().numpy()

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        return self.encode_pixels(self.preprocess(images))

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp().clamp(max=MAX_LOGIT_SCALE))


class Reranker:
    """Scores (text, image) pairs with an early-fusion model's ITM head."""

    def __init__(self, model: EarlyFusionModel, batch_size: int = 32, precision: str = "fp32"):
        self.model = with_precision(model.eval(), precision, compile=False)  # batch shapes follow each request
        self.precision = precision
        self.tokenizer = get_tokenizer(model)
        self.transform = model_transform(model)
        self.batch_size = batch_size

    @torch.inference_mode()
    def score(self, text: str, images: list[Image.Image]) -> np.ndarray:
        """ITM log-odds of `text` against each image, higher is a better match."""
        ids = self.tokenizer([text])
        scores = []
        for start in range(0, len(images), self.batch_size):
            pixels = torch.stack([self.transform(im) for im in images[start : start + self.batch_size]])
            batch_ids = ids.expand(len(pixels), -1)
            mask = padding_mask(batch_ids, self.tokenizer.pad_id)
            scores.append(self.model.score(pixels, batch_ids, mask).float().numpy())
        return np.concatenate(scores) if scores else np.zeros(0, np.float32)


def load_encoder(checkpoint: str | Path, precision: str = "fp32", fingerprint: bool = False) -> Encoder:
    """`fingerprint`: also set `encoder.weights` (`weights_fingerprint` of the weights as loaded, before any
    precision change), which an index build records so that a resume with other weights is refused."""
    model = load_model(checkpoint)
    if not isinstance(model, DualEncoder):
        raise ValueError(f"{checkpoint}: is a {model.config.arch} model; the index needs a late-fusion "
                         "(dual_encoder) checkpoint to embed with (pass an early-fusion one as --rerank-checkpoint)")
    weights = weights_fingerprint(model) if fingerprint else None
    encoder = Encoder(model, precision=precision)
    encoder.weights = weights
    return encoder


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every tensor of the state dict (name, dtype, shape, bytes, in name order): the same for the
    same weights whatever file they came from; two models of one name and shape differ."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # the buffer, not a copy
    return digest.hexdigest()


def load_reranker(checkpoint: str | Path, precision: str = "fp32") -> Reranker:
    model = load_model(checkpoint)
    if not isinstance(model, EarlyFusionModel):
        raise ValueError(f"{checkpoint}: --rerank-checkpoint needs an early-fusion model, this is {model.config.arch}")
    return Reranker(model, precision=precision)
