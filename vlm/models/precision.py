"""Inference at lower precision: the approximate saving for CPUs whose float32 matmul is already near its ceiling.

On AVX2 CPUs without VNNI/AMX (the machines this project runs on) float32 encoding of ViT-B/32 runs close to the
matmul peak, so only fewer bits go faster: int8 weights and activations. bfloat16 is no option there (about 300x
slower than float32 on such a CPU).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator

import torch
from torch import nn

PRECISIONS = ("fp32", "int8")
# Rough single-thread timings on the 2-core AVX2 machine (noisy, to choose, not figures): oneDNN's dynamic int8
# Linear beat fbgemm's by about 1.2x on clip-base32 image encoding and fusion-base32 scoring, at the same accuracy.
INT8_ENGINES = ("onednn", "x86", "fbgemm", "qnnpack")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


def with_precision(model: nn.Module, precision: str) -> nn.Module:
    """`model` for inference at `precision`: "fp32" returns it unchanged; "int8" an inference copy whose Linear
    layers run int8 matmuls (weights per output channel, activations quantized as they come: no calibration
    data); the original is left untouched.

    Late fusion quantizes its image tower only, per row: image embeddings are stored in indexes and compared with
    queries encoded alone, so an input's embedding must not depend on its batch. Its text tower stays float32 and
    exact: already 3.5-4.7x OpenCLIP's speed without padding work, and its int8 cost the quickstart model 0.45
    points of zero-shot acc1 and 0.35 of image->text R@1 on 4,000 images, where the image tower's moved them by
    +0.05 and -0.30 (docs/BENCHMARKS.md). Early fusion quantizes its whole stack with one scale per call: its
    pair scores are not stored, and per-row scales cost its scorer a fifth of its int8 speed.

    The patch embedding (a convolution) stays float32: on a flat patch its output is the sum of a filter's
    weights, a small difference of large numbers that int8 weights get wrong. Quantized, it put real images'
    embeddings up to 0.14 off in cosine, for 2-3% of a ViT-B/32's FLOPs."""
    if check_precision(precision) == "fp32":
        return model
    copied = copy.deepcopy(model).eval()
    if getattr(getattr(model, "config", None), "arch", None) == "dual_encoder":
        quantize_linears(copied.image, per_row=True)
    else:
        quantize_linears(copied, per_row=False)
    return copied


def quantize_linears(module: nn.Module, per_row: bool = True) -> None:
    """Make every nn.Linear of `module` (in place) an int8 matmul, its input quantized per row
    (`RowScaledLinear`) or with one scale per call (torch's dynamic quantization); LayerNorm, attention,
    embeddings and the patch embedding stay float32."""
    if per_row:
        rows_scaled(module)
    qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    with warnings.catch_warnings(), quantized_engine():
        warnings.simplefilter("ignore")  # torch.ao.quantization says it moves to torchao; it still works here
        torch.ao.quantization.quantize_dynamic(module, {nn.Linear: qconfig}, dtype=torch.qint8, inplace=True)


@contextlib.contextmanager
def quantized_engine() -> Iterator[str]:
    """Pack weights for the fastest available engine; the packed weights keep it, so the global is restored."""
    supported = torch.backends.quantized.supported_engines
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = next((e for e in INT8_ENGINES if e in supported), before)
    try:
        yield torch.backends.quantized.engine
    finally:
        torch.backends.quantized.engine = before


class RowScaledLinear(nn.Module):
    """A Linear whose input is quantized per row (token) when its inner, bias-free Linear is made int8.

    torch's dynamic int8 Linear quantizes its whole input with one scale taken from that input, so a token's
    rounding, and so an image's embedding, depended on what else was in the batch (by up to 4e-3 on clip-base32),
    and rows far smaller than the batch's largest were rounded coarsely. Each row is divided by its own largest
    magnitude and multiplied back afterwards, and two extra rows of +1 and -1 pin the quantizer's range to [-1, 1]:
    every row is rounded the same way in any batch."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = nn.Linear(linear.in_features, linear.out_features, bias=False, device="meta")
        self.linear.weight = linear.weight
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        # amax and amin: on CPU each is several times faster than aminmax or an infinity norm over rows
        scale = torch.maximum(rows.amax(dim=1, keepdim=True), rows.amin(dim=1, keepdim=True).neg_())
        scale = scale.clamp_min_(torch.finfo(rows.dtype).tiny)
        scaled = rows.new_empty(rows.shape[0] + 2, rows.shape[1])
        torch.div(rows, scale, out=scaled[:-2])
        scaled[-2:] = torch.tensor([[1.0], [-1.0]], dtype=rows.dtype)
        out = self.linear(scaled)[:-2].mul_(scale)  # the linear's own fresh output, scaled in place
        if self.bias is not None:
            out.add_(self.bias)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def rows_scaled(model: nn.Module) -> None:
    """Wrap every nn.Linear of `model` in place in a `RowScaledLinear`."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is nn.Linear:
                setattr(module, name, RowScaledLinear(child))
