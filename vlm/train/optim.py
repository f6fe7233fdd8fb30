"""AdamW with CLIP's decay rule and a cosine schedule with linear warm-up."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.adam import adam

from vlm.train.config import TrainConfig


def parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """Decay matrices only: norms, biases, embeddings and the logit scale are left alone (as in CLIP).

    Rank decides, as in nanoGPT, with embeddings named explicitly since their weights are matrices.
    The VQA head may learn faster than the pretrained body (`head_lr_scale`).
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or "embedding" in name or "pos" in name or "cls_token" in name or "logit_" in name
        is_head = name.startswith("vqa_head.")
        groups.setdefault((no_decay, is_head), []).append(p)
    return [
        {"params": params, "weight_decay": 0.0 if no_decay else config.weight_decay,
         "lr": config.lr * (config.head_lr_scale if is_head else 1.0)}
        for (no_decay, is_head), params in sorted(groups.items())
    ]


class AdamW(torch.optim.AdamW):
    """torch's AdamW, which also takes the sparse gradients of embedding tables and gives the dense result.

    A batch touches a few hundred of a token table's 49,408 rows, yet a dense gradient is zero-filled, clipped
    and stepped in full: for a small model, 7-10% of a CPU step. Rows whose moments are still zero (never in a
    batch) and that get no weight decay never move under AdamW, so stepping only the rows with a gradient now or
    moments from before, through the same kernel and step counter, is exact. The state keeps AdamW's layout, so
    checkpoints load either way.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.moving_rows: dict[torch.Tensor, torch.Tensor] = {}  # param -> its sorted moving rows; from the state

    @torch.no_grad()
    def step(self, closure=None):
        sparse = [(p, group) for group in self.param_groups for p in group["params"]
                  if p.grad is not None and p.grad.is_sparse]
        if sparse and closure is not None:
            raise ValueError("AdamW: a closure cannot be used with sparse gradients")
        grads = [p.grad for p, _ in sparse]
        for p, _ in sparse:
            p.grad = None  # torch's step skips a parameter without a gradient
        try:
            loss = super().step(closure)
        finally:
            for (p, _), grad in zip(sparse, grads, strict=False):
                p.grad = grad
        for (p, group), grad in zip(sparse, grads, strict=False):
            self.step_rows(p, grad.coalesce(), group)
        return loss

    def step_rows(self, p: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        if group["weight_decay"] or group["amsgrad"] or group["maximize"]:
            raise ValueError("AdamW: sparse gradients are for embeddings without weight decay, amsgrad or maximize")
        state = self.state[p]
        if not state:
            state.update(step=torch.zeros((), dtype=torch.float32, device=p.device),
                         exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        rows = self.moving_rows.get(p)
        if rows is None:
            moving = (state["exp_avg"] != 0).flatten(1).any(1) | (state["exp_avg_sq"] != 0).flatten(1).any(1)
            rows = moving.nonzero().squeeze(1)
        rows = torch.cat([rows, grad.indices()[0]]).unique()  # sorted
        self.moving_rows[p] = rows
        dense_grad = torch.zeros((len(rows), *p.shape[1:]), dtype=p.dtype, device=p.device)
        dense_grad[torch.searchsorted(rows, grad.indices()[0])] = grad.values()
        tensors = [t.index_select(0, rows) for t in (p, state["exp_avg"], state["exp_avg_sq"])]
        beta1, beta2 = group["betas"]
        adam([tensors[0]], [dense_grad], [tensors[1]], [tensors[2]], [], [state["step"]], foreach=group["foreach"],
             fused=group["fused"], decoupled_weight_decay=True, amsgrad=False, beta1=beta1, beta2=beta2,
             lr=group["lr"], weight_decay=0.0, eps=group["eps"], maximize=False)
        for target, values in zip((p, state["exp_avg"], state["exp_avg_sq"]), tensors, strict=False):
            target.index_copy_(0, rows, values)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.moving_rows = {}


def sparse_embedding_gradients(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Let the embedding tables that `optimizer` steps without weight decay produce row (sparse) gradients."""
    undecayed = {p for group in optimizer.param_groups if not group["weight_decay"] for p in group["params"]}
    for module in model.modules():
        if isinstance(module, nn.Embedding) and module.weight in undecayed:
            module.sparse = True


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device,
                    extra: nn.Module | None = None) -> torch.optim.Optimizer:
    """`extra`: weights outside the model that learn with it (a distillation's feature projections)."""
    # One fused kernel per parameter: on CPU, torch's default is a loop of ~10 element-wise ops each over the
    # whole tensor, and the 49,408 x W token embedding makes that a large share of a small model's step.
    fused = device.type in ("cpu", "cuda")
    groups = parameter_groups(model, config)
    if extra is not None and any(True for _ in extra.parameters()):
        groups.append({"params": list(extra.parameters()), "weight_decay": config.weight_decay, "lr": config.lr})
    return AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps, fused=fused or None)


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    """Learning-rate multiplier: linear from 0 to 1 over `warmup`, then cosine down to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_with_warmup(step, config.warmup_steps, config.steps))
