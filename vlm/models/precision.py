"""Inference at lower precision: the approximate saving for CPUs whose float32 matmul is already near its ceiling.

On AVX2 CPUs without VNNI/AMX (the machines this project runs on) float32 encoding of ViT-B/32 runs close to the
matmul peak, so only fewer bits can go faster: int8 weights and activations through fbgemm's AVX2 kernels.
bfloat16 is no option there (about 300x slower than float32 on such a CPU).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

PRECISIONS = ("fp32", "int8")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


def with_precision(model: nn.Module, precision: str) -> nn.Module:
    """`model` for inference at `precision`: "fp32" returns it unchanged, "int8" an inference copy whose Linear
    layers run dynamically quantized int8 matmuls (weights int8 per channel, activations quantized per batch);
    the original is left untouched."""
    if check_precision(precision) == "fp32":
        return model
    return int8_dynamic(model)


def int8_dynamic(model: nn.Module) -> nn.Module:
    copied = copy.deepcopy(model).eval()
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao, not installed here
        warnings.simplefilter("ignore")
        torch.backends.quantized.engine = "fbgemm" if "fbgemm" in torch.backends.quantized.supported_engines \
            else torch.backends.quantized.engine
        return torch.ao.quantization.quantize_dynamic(copied, {nn.Linear}, dtype=torch.qint8, inplace=True)
