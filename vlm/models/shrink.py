"""`vlm shrink`: a smaller model of the same family that inherits a subset of a trained model's weights (TinyCLIP's
weight inheritance, a structured pruning), the natural starting point of `vlm distill`.

What is kept, and by which measure (weight magnitude: the L1 norm of every weight that reads or writes a unit):
- layers: `depth` of them, evenly spaced from the first to the last (round(linspace(0, D-1, depth)));
- residual channels: per stack (each late-fusion tower, the early-fusion stack), the `width` channels with the
  largest summed |weight| over the qkv and fc1 columns and the proj and fc2 rows of every block;
- attention heads: per block, the `heads` heads with the largest |weight| over their qkv rows and proj columns;
  where the new head width (width / heads) is smaller, each kept head keeps its dims of largest |weight|
  (the same dims for q, k and v). The attention scale follows the new head width;
- MLP channels: per block, the width * mlp_ratio hidden units of largest |fc1 row| + |fc2 column|.
Kept indices stay in their original order, so keeping everything gives the model back bit for bit. The embedding
width (late fusion's embed_dim) is kept, so the result is an ordinary checkpoint that loads, evaluates, serves and
exports like any other of its family.
"""

from __future__ import annotations

import dataclasses
import fnmatch

import torch
from torch import nn

from vlm.config import ConfigError
from vlm.models.checkpoint import model_from_weights
from vlm.models.config import DualEncoderConfig

# Non-block weights and the dimensions of each that run along the residual width ((): copied as they are).
WIDTH_DIMS = {
    "dual_encoder": {"image.proj": (0,), "image.trunk.cls_token": (2,), "image.trunk.pos_embed": (2,),
                     "image.trunk.patch_embed.proj.*": (0,), "image.trunk.norm_pre.*": (0,),
                     "image.trunk.norm.*": (0,), "text.positional_embedding": (1,), "text.token_embedding.weight": (1,),
                     "text.ln_final.*": (0,), "text.text_projection": (0,), "logit_*": (), "vqa_head.*": ()},
    "early_fusion": {"image_pos": (2,), "text_pos": (2,), "cls_token": (2,), "patch_embed.proj.*": (0,),
                     "token_embedding.weight": (1,), "token_type_embedding.weight": (1,), "text_norm.*": (0,),
                     "modality_embedding.weight": (1,), "norm.*": (0,), "pooler.0.weight": (0, 1),
                     "pooler.0.bias": (0,), "itm_head.weight": (1,), "itm_head.bias": (), "mlm_head.bias": (),
                     "mlm_head.transform.0.weight": (0, 1), "mlm_head.transform.0.bias": (0,),
                     "mlm_head.transform.2.*": (0,)},
}
STACKS = {"dual_encoder": {"image.": "image.trunk.blocks", "text.": "text.blocks"}, "early_fusion": {"": "blocks"}}


@dataclasses.dataclass(frozen=True)
class StackShape:
    width: int
    depth: int
    heads: int
    mlp_ratio: float


def evenly_spaced(total: int, keep: int) -> list[int]:
    return torch.linspace(0, total - 1, keep).round().long().tolist() if keep > 1 else [total - 1]


def top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The indices of the k largest scores, in their original order (all of them: 0..n-1, unchanged)."""
    return scores.topk(k).indices.sort().values


def residual_channels(sd: dict, blocks: list[str], width: int) -> torch.Tensor:
    score = sum(sd[f"{b}.attn.qkv.weight"].abs().sum(0) + sd[f"{b}.mlp.fc1.weight"].abs().sum(0)
                + sd[f"{b}.attn.proj.weight"].abs().sum(1) + sd[f"{b}.mlp.fc2.weight"].abs().sum(1) for b in blocks)
    return top(score, width)


def attention_rows(qkv: torch.Tensor, proj: torch.Tensor, old: StackShape, new: StackShape) -> torch.Tensor:
    """Indices into one of q, k, v (0..old.width-1), head by head: the kept heads' kept dims."""
    head_dim, new_head_dim = old.width // old.heads, new.width // new.heads
    if new_head_dim > head_dim:
        raise ConfigError(f"width {new.width} / heads {new.heads} gives heads of {new_head_dim} dims, wider than the "
                          f"model's {head_dim}: keep more heads or less width")
    per_dim = qkv.abs().sum(1).reshape(3, old.width).sum(0) + proj.abs().sum(0)  # (old.width,)
    per_dim = per_dim.reshape(old.heads, head_dim)
    heads = top(per_dim.sum(1), new.heads)
    return torch.cat([h * head_dim + top(per_dim[h], new_head_dim) for h in heads.tolist()])


def shrink_block(sd: dict, old_name: str, channels: torch.Tensor, old: StackShape, new: StackShape) -> dict:
    """One timm Block's weights, cut to the kept residual channels, heads and MLP units."""
    w = {name[len(old_name) + 1:]: t for name, t in sd.items() if name.startswith(old_name + ".")}
    rows = attention_rows(w["attn.qkv.weight"], w["attn.proj.weight"], old, new)
    qkv_rows = torch.cat([rows + i * old.width for i in range(3)])
    hidden = int(new.width * new.mlp_ratio)
    units = top(w["mlp.fc1.weight"].abs().sum(1) + w["mlp.fc2.weight"].abs().sum(0), hidden)
    return {
        "norm1.weight": w["norm1.weight"][channels], "norm1.bias": w["norm1.bias"][channels],
        "attn.qkv.weight": w["attn.qkv.weight"][qkv_rows][:, channels], "attn.qkv.bias": w["attn.qkv.bias"][qkv_rows],
        "attn.proj.weight": w["attn.proj.weight"][channels][:, rows], "attn.proj.bias": w["attn.proj.bias"][channels],
        "norm2.weight": w["norm2.weight"][channels], "norm2.bias": w["norm2.bias"][channels],
        "mlp.fc1.weight": w["mlp.fc1.weight"][units][:, channels], "mlp.fc1.bias": w["mlp.fc1.bias"][units],
        "mlp.fc2.weight": w["mlp.fc2.weight"][channels][:, units], "mlp.fc2.bias": w["mlp.fc2.bias"][channels],
    }


def stack_shapes(config, arch: str) -> dict[str, StackShape]:
    if arch == "dual_encoder":
        return {p: StackShape(t.width, t.depth, t.heads, t.mlp_ratio) for p, t in
                (("image.", config.image), ("text.", config.text))}
    return {"": StackShape(config.width, config.depth, config.heads, config.mlp_ratio)}


def new_config(config, depth: int | None, width: int | None, heads: int | None):
    def tower(t):
        return dataclasses.replace(t, depth=depth or t.depth, width=width or t.width, heads=heads or t.heads)

    name = f"{config.name}-shrunk"
    if isinstance(config, DualEncoderConfig):
        return dataclasses.replace(config, name=name, image=tower(config.image), text=tower(config.text))
    return dataclasses.replace(tower(config), name=name)


def width_dims(arch: str, name: str) -> tuple[int, ...]:
    for pattern, dims in WIDTH_DIMS[arch].items():
        if fnmatch.fnmatchcase(name, pattern):
            return dims
    raise RuntimeError(f"shrink does not know the weight {name!r}: a model change shrink.py must learn about")


def check_shape(config, arch: str, depth: int | None, width: int | None, heads: int | None) -> None:
    for name, value in (("depth", depth), ("width", width), ("heads", heads)):
        biggest = max(getattr(shape, name) for shape in stack_shapes(config, arch).values())
        if value is not None and not 0 < value <= biggest:
            raise ConfigError(f"--{name} {value}: must be between 1 and the model's {biggest}")
    for shape in stack_shapes(new_config(config, depth, width, heads), arch).values():
        if shape.width % shape.heads:
            raise ConfigError(f"width {shape.width} is not divisible by {shape.heads} heads")
    if arch == "early_fusion" and config.vqa_answers and width:
        raise ConfigError("shrink the model before its VQA fine-tune: its VQA head's hidden layer follows the width")


def shrink_model(model: nn.Module, depth: int | None = None, width: int | None = None,
                 heads: int | None = None) -> nn.Module:
    """A model of the same family with `depth` layers, `width` channels and `heads` heads per stack (None: keep),
    holding the kept weights of `model` (see the module's docstring for what is kept)."""
    config, arch = model.config, model.config.arch
    check_shape(config, arch, depth, width, heads)
    target = new_config(config, depth, width, heads)
    sd, out = model.state_dict(), {}
    old_shapes, new_shapes = stack_shapes(config, arch), stack_shapes(target, arch)
    stack_channels = {}
    for prefix, blocks in STACKS[arch].items():
        old, new = old_shapes[prefix], new_shapes[prefix]
        names = [f"{blocks}.{i}" for i in range(old.depth)]
        channels = stack_channels[prefix] = residual_channels(sd, names, new.width)
        for j, i in enumerate(evenly_spaced(old.depth, new.depth)):
            out.update({f"{blocks}.{j}.{k}": v for k, v in shrink_block(sd, names[i], channels, old, new).items()})
    block_prefixes = tuple(f"{blocks}." for blocks in STACKS[arch].values())
    for name, tensor in sd.items():
        if name.startswith(block_prefixes):
            continue
        prefix = next((p for p in stack_channels if p and name.startswith(p)), "")
        for dim in width_dims(arch, name):
            tensor = tensor.index_select(dim, stack_channels[prefix])
        out[name] = tensor
    return model_from_weights(target, out, where=f"{config.name} shrunk").eval()


def shrink_checkpoint(path: str, out: str, depth: int | None = None, width: int | None = None,
                      heads: int | None = None) -> nn.Module:
    """`vlm shrink`: read a checkpoint (a LoRA run's merged), write the shrunk model as an ordinary checkpoint."""
    from vlm.models.checkpoint import load_model

    small = shrink_model(load_model(path), depth, width, heads)
    small.save(out)
    return small
