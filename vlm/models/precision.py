"""Precision for the CPU you have: float32, bfloat16 under CPU autocast, int8 through torchao, or `auto`.

bf16 trains and infers under `torch.autocast("cpu", dtype=torch.bfloat16)`; losses, the logit scale, similarity
logits and optimizer state stay float32 (as OpenCLIP's amp_bf16). int8 is for inference only. `auto` picks, per
workload (train, encode, score) and CPU class (vlm.models.cpu), what was measured faster at equal accuracy.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import os
from collections.abc import Callable

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16", "int8", "auto")
WORKLOADS = ("train", "encode", "score")
# Image towers at least this large compile int8 by default (with_precision): measured at clip-base32 (88M); clip-small
# (0.9M) and the test models (33k) stay eager.
COMPILE_MIN_PARAMETERS = 10_000_000
# Per CPU class and workload, what measured faster than float32 at equal accuracy (docs/BENCHMARKS.md, "Precision
# for the CPU you have"); bf16 / fp32 speed, each within one run of interleaved rounds:
# AVX-512 BF16 (AMD EPYC, 2 cores, under heavy load, 2026-12-06): image encoding clip-small 1.45x, clip-base32
# 1.85x (texts stay float32 at bf16: they ran 0.39-0.76x at clip-small); fusion-base32 pair scoring 1.30x: bf16.
# Training steps clip-small b64 1.48x and fusion-small b32 1.39x, but clip-base32 b16 0.78x: float32, so that
# auto is never slower than float32 on a bench row.
# AMX (not measured here; issue 27's 2-core Xeon, under load): clip-base32 image encoding 1.66x and fusion-small's
# step 1.17x, so bf16 encodes and scores; clip-small's quickstart step 0.45x, so training stays float32.
# AVX2 and AVX-512 VNNI have no bf16 dot product: bf16 is emulated there and never picked.
AUTO = {
    "AMX": {"train": "fp32", "encode": "bf16", "score": "bf16"},
    "AVX-512 BF16": {"train": "fp32", "encode": "bf16", "score": "bf16"},
}
# The methods an early-fusion bf16 copy runs under autocast (EarlyFusionModel's entry points).
INFERENCE_METHODS = ("forward", "encode_image", "encode_text", "similarity", "vqa_logits", "itm_logits", "score",
                     "score_embedded", "embed_image", "embed_text", "fuse", "mlm_logits")


def check_precision(precision: str, workload: str | None = None) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "int8" and workload == "train":
        raise ValueError("precision int8 is for inference; train at fp32, bf16 or auto")
    return precision


def auto_precision(workload: str, cpu: str) -> str:
    """What `auto` runs `workload` at on a CPU of class `cpu`: only bf16 or fp32, and bf16 only where the CPU has
    bf16 dot products and it measured faster (AUTO); float32 everywhere else, AVX2 included."""
    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}; got {workload!r}")
    return AUTO.get(cpu, {}).get(workload, "fp32")


def resolve_precision(precision: str, workload: str, cpu: str | None = None) -> str:
    """`precision` with `auto` replaced by its choice for `workload` on this CPU (or class `cpu`)."""
    from vlm.models.cpu import cpu_class

    if check_precision(precision, workload) != "auto":
        return precision
    return auto_precision(workload, cpu or cpu_class())


def run_record(precision: str) -> dict:
    """What an output that records a run says of its precision: the one run at (never "auto") and the CPU class."""
    from vlm.models.cpu import cpu_class

    return {"precision": precision, "cpu_class": cpu_class()}


def model_workload(model: nn.Module) -> str:
    """Inference with a late-fusion model encodes; with an early-fusion one it scores pairs."""
    return "encode" if getattr(getattr(model, "config", None), "arch", None) == "dual_encoder" else "score"


def autocast(precision: str) -> contextlib.AbstractContextManager:
    """The context a forward pass runs in: CPU autocast to bfloat16 for bf16, nothing otherwise."""
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def with_precision(model: nn.Module, precision: str, compile: bool | None = None) -> nn.Module:
    """`model` for inference at `precision` ("auto": resolved for the model's workload): "fp32" returns it
    unchanged; "bf16" and "int8" an inference copy (the original is left untouched).

    int8 (`int8_copy`): late fusion quantizes its image tower only, each row (token) on its own: image embeddings
    are stored in indexes and compared with queries encoded alone, so an input's embedding must not depend on its
    batch. Its text tower stays float32 and exact: already 3.5-4.7x OpenCLIP's speed without padding work, and its
    int8 cost the quickstart model 0.45 points of zero-shot acc1 and 0.35 of image->text R@1 on 4,000 images,
    where the image tower's moved them by +0.05 and -0.30 (docs/BENCHMARKS.md). Early fusion quantizes its whole
    stack with one activation scale per call: its pair scores are not stored, and per-row scales cost its scorer
    a fifth of its int8 speed.

    The patch embedding (a convolution) stays float32 at int8: on a flat patch its output is the sum of a filter's
    weights, a small difference of large numbers that int8 weights get wrong. Quantized, it put real images'
    embeddings up to 0.14 off in cosine, for 2-3% of a ViT-B/32's FLOPs.

    `compile`: torch.compile (inductor, weights frozen) the copy's heavy part. torchao's CPU int8 is written for
    inductor to fuse: eager, clip-base32 image encoding ran 0.75x float32, compiled 2.18x, the removed torch.ao
    path 1.62x; fusion-base32's pair scoring ran 1.2-1.35x eager and 2.72x compiled (`vlm bench score`, batches
    of one shape, 2026-12-07; docs/BENCHMARKS.md). So None (the default) compiles int8 copies of real models
    (`compiles_by_default`). The compile happens at the first call (a static graph for that shape, then one
    dynamic graph for every other) and costs half a minute to minutes on 2 cores: repaid by serve, index build
    and eval over many batches (the pair scorer's batches all have one shape). `compile=False` (the re-ranker,
    whose batch shapes follow each request), or VLM_INT8_COMPILE=0 for the commands, keeps it eager."""
    precision = resolve_precision(precision, model_workload(model))
    if precision == "fp32":
        return model
    copied = bf16_copy(model) if precision == "bf16" else int8_copy(model)
    if compile is None:
        compile = precision == "int8" and compiles_by_default(copied)
    return compiled(copied) if compile else copied


def compiles_by_default(model: nn.Module) -> bool:
    """Whether an int8 copy compiles unless told: not where VLM_INT8_COMPILE=0, nor under COMPILE_MIN_PARAMETERS
    in its int8 part (the tiny test models and the quickstart's, where a compile's minutes buy nothing)."""
    if os.environ.get("VLM_INT8_COMPILE", "1") == "0":
        return False
    heavy = model.image if model_workload(model) == "encode" else model
    return sum(p.numel() for p in heavy.parameters()) >= COMPILE_MIN_PARAMETERS


def compiled(model: nn.Module) -> nn.Module:
    """`model` (an inference copy) with the late-fusion image tower, or early fusion's fusion stack, compiled."""
    # freezing: inductor folds the frozen weights, int8 scales and torchao's weight sums into the graph. The first
    # shape compiles static (the full batches: fastest), a second one a dynamic graph for all later shapes (a
    # server's micro-batches of 1 to N); compiled dynamic from the start, fusion-base32's scoring ran 0.86x float32.
    compiler = functools.partial(torch.compile, options={"freezing": True})
    if model_workload(model) == "encode":
        model.image = compiler(model.image)
    else:
        object.__setattr__(model, "fuse", compiler(model.fuse))
    return model


def int8_copy(model: nn.Module) -> nn.Module:
    """An inference copy whose Linear layers run torchao's int8 dynamic-activation, int8-weight matmuls."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, PerRow, PerTensor, quantize_

    copied = copy.deepcopy(model).eval()
    late = model_workload(model) == "encode"
    activations = PerRow() if late else PerTensor()  # PerRow: per token, so an image's rows ignore its batch
    config = Int8DynamicActivationInt8WeightConfig(granularity=[activations, PerRow()], set_inductor_config=False)
    quantize_(copied.image if late else copied, config)  # nn.Linear only: the patch convolution stays float32
    return copied


def bf16_copy(model: nn.Module) -> nn.Module:
    """An inference copy that runs under bf16 autocast and returns float32 tensors.

    Late fusion runs its image tower in bf16 and keeps its text tower float32 and exact, as int8 does: text
    batches are small and cut to their length, and at those shapes bf16 measured slower than float32 (clip-small
    texts 0.39x and 0.76x, images 1.45x; clip-base32 images 1.85x; docs/BENCHMARKS.md). Early fusion runs its
    entry points (INFERENCE_METHODS) in bf16. Linear weights are cast to bfloat16 once here (autocast would cast
    every weight again on every call); LayerNorm, softmax and the embeddings keep float32 parameters, as
    autocast's fused CPU kernels take them."""
    copied = copy.deepcopy(model).eval()
    late = model_workload(model) == "encode"
    for module in (copied.image if late else copied).modules():
        if isinstance(module, nn.Linear):
            module.to(torch.bfloat16)
    owners = [(copied.image, ("forward",))] if late else [(copied, INFERENCE_METHODS)]
    for owner, names in owners:
        for name in names:
            method = getattr(owner, name, None)
            if callable(method):
                object.__setattr__(owner, name, in_bf16(method))  # an instance attribute shadows the method
    return copied


def in_bf16(method: Callable) -> Callable:
    @functools.wraps(method)
    def run(*args, **kwargs):
        with autocast("bf16"):
            return as_float32(method(*args, **kwargs))
    return run


def as_float32(out):
    """`out` (a tensor, or a dict, sequence or dataclass of them) with its bfloat16 tensors made float32."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.dtype == torch.bfloat16 else out
    if isinstance(out, dict):
        return {k: as_float32(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)) and not hasattr(out, "_fields"):
        return type(out)(as_float32(v) for v in out)
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return dataclasses.replace(out, **{f.name: as_float32(getattr(out, f.name)) for f in dataclasses.fields(out)
                                           if f.init})
    return out
