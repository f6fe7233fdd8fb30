"""Timing shared by the side-by-side benchmarks (`vlm bench encode|score|train`).

Two implementations are timed in one process, interleaved round by round (a burst of load from elsewhere hits
both alike), and each reports the median of its rounds. The float32 matmul ceiling is measured in the same run,
so an achieved GFLOP/s says how close a workload is to what this CPU can do at all; FLOPs come from torch's
FlopCounterMode on one real call (attention on the math path so its matmuls are counted).
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def interleaved_seconds(runs: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of each run per round: every run once per round, in the given order, after `warmup`
    untimed rounds (first calls allocate and pick kernels)."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def median_seconds(seconds: list[float]) -> float:
    return statistics.median(seconds)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of `fn` (a multiply-add counts 2), without gradients. nn.MultiheadAttention's fused
    inference kernel (OpenCLIP's towers use it) is invisible to the counter, so it is off while counting."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.get_total_flops()


def matmul_ceiling_gflops(n: int = 2048, rounds: int = 5) -> float:
    """GFLOP/s of a float32 (n x n) @ (n x n) matmul, the best of `rounds`: what this CPU can do at all."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.matmul(a, b, out=out)  # warm-up
    best = min(_seconds(lambda: torch.matmul(a, b, out=out)) for _ in range(rounds))
    return 2 * n**3 / best / 1e9


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports kilobytes, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def rate(items: int, seconds: list[float], flops: int | None = None) -> dict[str, float]:
    """Items/s and achieved GFLOP/s from the median round (`flops`: the work of one round)."""
    median = median_seconds(seconds)
    row = {"items_per_s": items / median, "median_s": median, "rounds": len(seconds)}
    if flops is not None:
        row["gflops"] = flops / 1e9
        row["gflops_per_s"] = flops / median / 1e9
    return row


def environment() -> dict[str, object]:
    """What a figure depends on: torch version and its thread count."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads()}
