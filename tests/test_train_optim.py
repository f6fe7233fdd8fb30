"""The trainer's AdamW steps embedding tables from sparse row gradients; training must come out as with torch's
dense AdamW, and checkpoints must load across the two."""

from __future__ import annotations

import copy

import pytest
import torch

import vlm
from vlm.bench.train import shapes_batch
from vlm.train.config import TrainConfig
from vlm.train.trainer import Trainer


def dense(trainer: Trainer) -> Trainer:
    for module in trainer.model.modules():
        if isinstance(module, torch.nn.Embedding):
            module.sparse = False
    return trainer


@pytest.mark.parametrize("name, objective", [("clip-tiny", "clip"), ("fusion-tiny", "fusion")])
def test_sparse_embedding_steps_equal_dense_adamw(tmp_path, name, objective):
    torch.manual_seed(0)
    model = vlm.create_model(name)
    config = TrainConfig(model=name, objective=objective, batch_size=8, lr=1e-2, warmup_steps=1, steps=6)
    batches = [shapes_batch(model, objective, 8, seed, tmp_path / f"shapes{seed}") for seed in range(3)]
    sparse, reference = Trainer(copy.deepcopy(model), config), dense(Trainer(copy.deepcopy(model), config))
    assert sparse.model.text.token_embedding.sparse if objective == "clip" else sparse.model.token_embedding.sparse
    for step in range(6):  # later batches leave rows that earlier ones moved without a gradient
        a, b = sparse.step([batches[step % 3]]), reference.step([batches[step % 3]])
        assert a["loss"].item() == pytest.approx(b["loss"].item(), rel=1e-5)
        # the norm sums the squares of every gradient, so it carries the parameters' rounding noise (below):
        # up to 1.6e-5 relative after 6 steps here, where a wrongly stepped row would move it by far more
        assert a["grad_norm"].item() == pytest.approx(b["grad_norm"].item(), rel=1e-4)
    # Summation order differs (the clip norm, the coalesced rows), and Adam turns the rounding noise of
    # near-zero gradients (attention key biases) into steps of up to lr: ~2e-5 here. A row stepped wrongly or
    # left behind would be off by ~lr (1e-2).
    for (key, p), q in zip(sparse.model.state_dict().items(), reference.model.state_dict().values(), strict=False):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-4, msg=key)
    if objective == "clip":  # (early fusion's MLM decoder shares the table, so its gradient is dense anyway)
        moved = sparse.model.text.token_embedding.weight != model.text.token_embedding.weight
        assert 0 < moved.any(1).sum() < 1000  # only the rows of the batches' tokens moved

    # a dense optimizer's state resumes on the sparse path and the other way round
    resumed = Trainer(copy.deepcopy(model), config)
    resumed.load_state(reference.state())
    redone = dense(Trainer(copy.deepcopy(model), config))
    redone.load_state(sparse.state())
    resumed.step([batches[0]]), redone.step([batches[0]])
    for p, q in zip(resumed.model.parameters(), redone.model.parameters(), strict=False):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-4)
