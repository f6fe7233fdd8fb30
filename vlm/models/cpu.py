"""The class of CPU a run ran on, for choosing a precision (vlm.models.precision) and recording it with the run."""

from __future__ import annotations

from pathlib import Path

import torch

CPU_CLASSES = ("AVX2", "AVX-512 VNNI", "AVX-512 BF16", "AMX", "other")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The first processor's flags in /proc/cpuinfo; empty where there is none (macOS, Windows)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def classify_cpu(capability: str, flags: set[str]) -> str:
    """One of CPU_CLASSES from torch's dispatch level ("AVX2", "AVX512", ...) and the CPU flags.

    torch reports AVX512 for any AVX-512 part; the flags tell the bf16 and int8 units apart, which decide what
    goes faster: AMX tiles run bf16 and int8 matmuls, AVX-512 BF16 has bf16 dot products, VNNI int8 ones."""
    if {"amx_bf16", "amx_tile"} <= flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX-512 BF16"
    if "avx512_vnni" in flags or capability.startswith("AVX512"):
        return "AVX-512 VNNI"
    if capability.startswith("AVX2") or "avx2" in flags:
        return "AVX2"
    return "other"


def cpu_class() -> str:
    """This machine's CPU class (CPU_CLASSES)."""
    return classify_cpu(torch.backends.cpu.get_cpu_capability(), cpu_flags())
