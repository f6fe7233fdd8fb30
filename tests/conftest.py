"""Shared fixtures: the tiny models every test builds on, and a few captions. Keep this file small."""

from __future__ import annotations

import os

# Before pymilvus imports grpc: the fault tests fork servers with a preexec_fn, and gRPC's fork handlers, with a
# leftover channel's call in flight in this process, aborted the forked child (SIGABRT, "epoll_wait error: Bad file
# descriptor") once in a full run. The child only execs `vlm serve`; it never uses gRPC.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import pytest  # noqa: E402
import torch

import vlm

CAPTIONS = [
    "a small red circle left of a large blue square",
    "two green triangles",
    "a yellow star above a purple hexagon",
    "one large orange square",
]


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same random state, so a failure can be reproduced."""
    torch.manual_seed(0)


@pytest.fixture
def clip_tiny() -> vlm.DualEncoder:
    return vlm.create_model("clip-tiny").eval()


@pytest.fixture
def fusion_tiny() -> vlm.EarlyFusionModel:
    return vlm.create_model("fusion-tiny").eval()


@pytest.fixture
def images() -> torch.Tensor:
    """A batch of 32 px images for the tiny models, one per caption."""
    return torch.randn(len(CAPTIONS), 3, 32, 32)


@pytest.fixture
def captions() -> list[str]:
    return list(CAPTIONS)
