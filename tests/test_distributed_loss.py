"""Two CPU processes (gloo) train like one: gathered contrastive losses give the global batch's loss and
gradients, with DistributedDataParallel's gradient averaging part of what is checked.

The processes are spawned once for the module; each runs one DDP step per loss on its half of the batch.
Everything runs in float64, so an element-wise rtol of 1e-5 tests the algebra of the gather and the
gradient averaging rather than float32 rounding (which differs by summation order, ~1e-7 of the largest entry).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from open_clip.loss import ClipLoss as OpenClipLoss
from open_clip.loss import SigLipLoss as OpenSigLipLoss
from torch.nn.parallel import DistributedDataParallel

import vlm
from vlm.losses import ClipLoss, SigLipLoss

WORLD_SIZE = 2
GLOBAL_BATCH = 8
LOSSES = {"clip": (ClipLoss, []), "siglip": (SigLipLoss, ["init_logit_bias=-10"])}
CAPTIONS = ["one red circle", "two blue squares", "three green stars", "four yellow triangles",
            "one purple hexagon", "two orange crosses", "three white hearts", "four black moons"]


def make_model(loss_name: str) -> vlm.DualEncoder:
    torch.manual_seed(0)
    return vlm.create_model("clip-tiny", LOSSES[loss_name][1]).double().train()


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return images, vlm.Tokenizer(32)(CAPTIONS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        images, ids = global_batch()
        local = slice(rank * GLOBAL_BATCH // WORLD_SIZE, (rank + 1) * GLOBAL_BATCH // WORLD_SIZE)
        results = {}
        for name, (loss_cls, _) in LOSSES.items():
            model = DistributedDataParallel(make_model(name))
            out = model(images[local], ids[local])
            loss = loss_cls()(**out)
            loss.backward()
            features = {k: v.detach() for k, v in out.items() if v is not None}
            reference = (OpenClipLoss(gather_with_grad=True, rank=rank, world_size=WORLD_SIZE) if name == "clip"
                         else OpenSigLipLoss(rank=rank, world_size=WORLD_SIZE))(**features)
            results[name] = {"loss": loss.detach(), "openclip_loss": reference.detach(),
                             "grads": {n: p.grad.clone() for n, p in model.module.named_parameters()}}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]


def single_process(loss_name: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = make_model(loss_name)
    images, ids = global_batch()
    loss = LOSSES[loss_name][0]()(**model(images, ids))
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("loss_name", list(LOSSES))
def test_two_processes_give_the_single_process_loss_and_gradients(ranks, loss_name):
    expected_loss, expected_grads = single_process(loss_name)
    per_rank = [r[loss_name] for r in ranks]
    if loss_name == "clip":  # every rank sees the whole global batch's logits
        for r in per_rank:
            torch.testing.assert_close(r["loss"], expected_loss, rtol=1e-5, atol=0)
    else:  # SigLIP: each rank scores its own images against all texts; the mean is the global loss
        torch.testing.assert_close(torch.stack([r["loss"] for r in per_rank]).mean(), expected_loss,
                                   rtol=1e-5, atol=0)
    for r in per_rank:
        assert r["grads"].keys() == expected_grads.keys()
        for name, grad in expected_grads.items():
            torch.testing.assert_close(r["grads"][name], grad, rtol=1e-5, atol=1e-12,
                                       msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("loss_name", list(LOSSES))
def test_each_rank_computes_the_loss_openclip_computes_on_it(ranks, loss_name):
    for rank in ranks:
        torch.testing.assert_close(rank[loss_name]["loss"], rank[loss_name]["openclip_loss"], rtol=1e-5, atol=0)
