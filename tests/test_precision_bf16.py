"""bf16 (CPU autocast) and `auto`: close to float32, float32 out, never bf16 where the CPU has no bf16 unit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vlm.models.cpu import CPU_CLASSES, classify_cpu, cpu_class
from vlm.models.precision import auto_precision, resolve_precision, with_precision
from vlm.tokenizer import get_tokenizer

# bf16 keeps 8 bits of mantissa: tiny models' embeddings stay within this cosine of float32's
BF16_COSINE = 0.99


@torch.inference_mode()
def test_bf16_embeddings_are_float32_and_close(clip_tiny, images, captions):
    before = {k: v.clone() for k, v in clip_tiny.state_dict().items()}
    bf16 = with_precision(clip_tiny, "bf16")
    ids = get_tokenizer(clip_tiny)(captions)
    fp32_out, bf16_out = clip_tiny.encode_image(images), bf16.encode_image(images)
    assert bf16_out.dtype == torch.float32
    assert F.cosine_similarity(fp32_out, bf16_out).min() > BF16_COSINE
    assert not torch.equal(fp32_out, bf16_out)  # bf16 really ran
    # the text tower stays float32 and exact: bf16 measured slower at text shapes (vlm.models.precision.bf16_copy)
    assert torch.equal(bf16.encode_text(ids), clip_tiny.encode_text(ids))
    assert bf16.similarity(images, ids).dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in clip_tiny.state_dict().items())


@torch.inference_mode()
def test_bf16_fusion_scores_agree(fusion_tiny, images, captions):
    ids = get_tokenizer(fusion_tiny)(captions)
    fp32_scores, bf16_scores = fusion_tiny.score(images, ids), with_precision(fusion_tiny, "bf16").score(images, ids)
    assert bf16_scores.dtype == torch.float32
    assert F.cosine_similarity(fp32_scores, bf16_scores, dim=0) > BF16_COSINE


@pytest.mark.parametrize("cpu", ["AVX2", "AVX-512 VNNI", "other"])
@pytest.mark.parametrize("workload", ["train", "encode", "score"])
def test_auto_never_picks_bf16_without_bf16_units(cpu, workload):
    assert auto_precision(workload, cpu) == "fp32"
    assert resolve_precision("auto", workload, cpu) == "fp32"


def test_auto_picks_only_fp32_or_bf16_and_train_refuses_int8():
    assert {auto_precision(w, c) for w in ("train", "encode", "score") for c in CPU_CLASSES} <= {"fp32", "bf16"}
    assert auto_precision("encode", "AMX") == "bf16"
    with pytest.raises(ValueError, match="int8 is for inference"):
        resolve_precision("int8", "train")


@pytest.mark.parametrize(("capability", "flags", "expected"), [
    ("AVX2", {"avx2", "fma"}, "AVX2"),
    ("AVX512", {"avx2", "avx512f", "avx512_vnni"}, "AVX-512 VNNI"),
    ("AVX512", {"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, "AVX-512 BF16"),
    ("AVX512", {"avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile"}, "AMX"),
    ("DEFAULT", set(), "other"),
])
def test_cpu_class_from_capability_and_flags(capability, flags, expected):
    assert classify_cpu(capability, flags) == expected


def test_this_machine_has_a_class():
    assert cpu_class() in CPU_CLASSES


def test_no_torch_ao_quantization_left_in_vlm():
    """torch.ao.quantization is deprecated with a named removal release; int8 goes through torchao."""
    root = Path(__file__).resolve().parents[1] / "vlm"
    hits = [str(p) for p in root.rglob("*.py") if re.search(r"torch\.ao\.quantization|from torch\.ao import",
                                                            p.read_text())]
    assert hits == []


def test_the_command_lines_offer_every_precision():
    from vlm.index.cli import PRECISIONS as INDEX_PRECISIONS  # kept without torch, for `vlm --help`
    from vlm.models.precision import PRECISIONS

    assert INDEX_PRECISIONS == PRECISIONS
