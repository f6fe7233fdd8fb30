"""OpenCLIP interchange: its checkpoints are the lingua franca of CLIP weights.

`export_openclip` writes the folder layout `open_clip.create_model("local-dir:DIR")` loads
(open_clip_config.json + open_clip_pytorch_model.bin); `import_openclip` reads that folder, or a bare
OpenCLIP checkpoint file of a ViT model together with its architecture (an OpenCLIP model name such as
ViT-B-32, or its config): the weights alone cannot tell the head count or the activation, and a guess
would change the function silently. `import_openclip_pretrained` goes through open_clip's own
`create_model_and_transforms(name, pretrained=tag_or_file)`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from vlm.atomic_io import atomic_write
from vlm.models.checkpoint import CheckpointError, model_from_weights
from vlm.models.config import DualEncoderConfig, ImageTowerConfig, TextTowerConfig
from vlm.models.dual_encoder import DualEncoder

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_pytorch_model.bin"

# vlm (timm) block names -> OpenCLIP ResidualAttentionBlock names.
BLOCK_KEYS = {
    "norm1": "ln_1", "attn.qkv.weight": "attn.in_proj_weight", "attn.qkv.bias": "attn.in_proj_bias",
    "attn.proj": "attn.out_proj", "norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
}
# Everything outside the blocks, vlm -> OpenCLIP; reshapes are handled in `to_openclip_state_dict`.
TOP_KEYS = {
    "image.trunk.cls_token": "visual.class_embedding",
    "image.trunk.pos_embed": "visual.positional_embedding",
    "image.trunk.patch_embed.proj.weight": "visual.conv1.weight",
    "image.trunk.norm_pre.weight": "visual.ln_pre.weight", "image.trunk.norm_pre.bias": "visual.ln_pre.bias",
    "image.trunk.norm.weight": "visual.ln_post.weight", "image.trunk.norm.bias": "visual.ln_post.bias",
    "image.proj": "visual.proj",
    "text.token_embedding.weight": "token_embedding.weight",
    "text.positional_embedding": "positional_embedding",
    "text.ln_final.weight": "ln_final.weight", "text.ln_final.bias": "ln_final.bias",
    "text.text_projection": "text_projection",
    "logit_scale": "logit_scale", "logit_bias": "logit_bias",
}
BLOCK_PREFIXES = {"image.trunk.blocks.": "visual.transformer.resblocks.", "text.blocks.": "transformer.resblocks."}


def _rename(key: str, table: dict[str, str], prefixes: dict[str, str]) -> str | None:
    if key in table:
        return table[key]
    for src, dst in prefixes.items():
        if key.startswith(src):
            index, rest = key[len(src):].split(".", 1)
            for a, b in BLOCK_KEYS.items():
                if rest.startswith(a):
                    return f"{dst}{index}.{b}{rest[len(a):]}"
    return None


def openclip_model_config(config: DualEncoderConfig) -> dict:
    image, text = config.image, config.text
    cfg = {
        "embed_dim": config.embed_dim,
        "quick_gelu": config.quick_gelu,
        "vision_cfg": {"image_size": image.image_size, "patch_size": image.patch_size, "width": image.width,
                       "layers": image.depth, "head_width": image.width // image.heads,
                       "mlp_ratio": image.mlp_ratio, "pool_type": "tok" if image.pool == "cls" else "avg"},
        "text_cfg": {"context_length": text.context_length, "vocab_size": text.vocab_size, "width": text.width,
                     "heads": text.heads, "layers": text.depth, "mlp_ratio": text.mlp_ratio},
    }
    if config.init_logit_bias is not None:
        cfg["init_logit_bias"] = config.init_logit_bias
    return cfg


def to_openclip_state_dict(model: DualEncoder) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in model.state_dict().items():
        name = _rename(key, TOP_KEYS, BLOCK_PREFIXES)
        if name is None:
            if key.startswith("vqa_head."):
                continue  # OpenCLIP has no VQA head
            raise KeyError(f"no OpenCLIP name for vlm parameter {key!r}")
        if name in ("visual.class_embedding", "visual.positional_embedding"):
            value = value.reshape(value.shape[-2:] if value.ndim == 3 and value.shape[1] > 1 else value.shape[-1:])
        out[name] = value.clone()
    return out


def export_openclip(model: DualEncoder, out_dir: str | Path) -> Path:
    """Write `out_dir` so that `open_clip.create_model("local-dir:" + out_dir)` rebuilds this model."""
    if not isinstance(model, DualEncoder):
        raise TypeError("only late-fusion models (DualEncoder) have an OpenCLIP layout")
    out_dir = Path(out_dir)
    c = model.config
    config = {
        "model_cfg": openclip_model_config(c),
        "preprocess_cfg": {"mean": list(c.image_mean), "std": list(c.image_std),
                           "interpolation": c.image_interpolation, "resize_mode": c.image_resize_mode},
    }
    with atomic_write(out_dir / WEIGHTS_NAME) as f:
        torch.save(to_openclip_state_dict(model), f)
    with atomic_write(out_dir / CONFIG_NAME, "w") as f:
        json.dump(config, f, indent=2)
    return out_dir


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable OpenCLIP checkpoint ({str(e).splitlines()[0]})") from None
    if isinstance(sd, dict) and "state_dict" in sd:  # open_clip_train's epoch checkpoints
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd:
        raise CheckpointError(f"{path}: expected a state dict")
    return {re.sub(r"^module\.", "", k): v for k, v in sd.items()}


def check_openclip_vit(sd: dict[str, torch.Tensor], where: str) -> None:
    if "visual.conv1.weight" not in sd or "token_embedding.weight" not in sd:
        raise CheckpointError(f"{where}: not an OpenCLIP ViT checkpoint (no visual.conv1 / token_embedding)")


def architecture_config(model: str | Path) -> dict:
    """OpenCLIP's model config of a model name in its registry (ViT-B-32, ...) or of a config JSON file."""
    if str(model).endswith(".json"):
        path = Path(model)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such OpenCLIP model config file")
        return _read_model_cfg(path)
    import open_clip

    cfg = open_clip.get_model_config(str(model))
    if cfg is None:
        raise CheckpointError(f"unknown OpenCLIP model {str(model)!r}: give a name open_clip.list_models() has "
                              "(e.g. ViT-B-32, ViT-B-32-quickgelu) or the path of its config JSON")
    return cfg


def preprocess_fields(preprocess_cfg: dict | None, name: str) -> dict:
    """DualEncoderConfig fields from OpenCLIP's preprocess_cfg (its defaults where a key is absent)."""
    cfg = preprocess_cfg or {}
    fields = {"image_interpolation": cfg.get("interpolation", "bicubic"),
              "image_resize_mode": cfg.get("resize_mode", "shortest")}
    if "mean" in cfg:
        fields["image_mean"] = tuple(float(x) for x in cfg["mean"])
    if "std" in cfg:
        fields["image_std"] = tuple(float(x) for x in cfg["std"])
    if fields["image_interpolation"] not in ("bicubic", "bilinear") or \
            fields["image_resize_mode"] not in ("shortest", "squash"):
        raise CheckpointError(f"{name}: OpenCLIP preprocessing {fields['image_interpolation']!r} / "
                              f"{fields['image_resize_mode']!r} is not supported (bicubic or bilinear; shortest or "
                              "squash)")
    return fields


def config_from_openclip(model_cfg: dict, name: str, preprocess_cfg: dict | None = None) -> DualEncoderConfig:
    v, t = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    foreign = sorted(k for k in ("timm_model_name", "hf_model_name") if v.get(k) or t.get(k))
    if foreign:
        raise CheckpointError(f"OpenCLIP config of {name!r} uses {foreign}: only OpenCLIP's own ViT towers import")
    width = v["width"]
    return DualEncoderConfig(
        name=name, embed_dim=model_cfg["embed_dim"], quick_gelu=model_cfg.get("quick_gelu", False),
        image=ImageTowerConfig(image_size=v["image_size"], patch_size=v["patch_size"], width=width,
                               depth=v["layers"], heads=width // v.get("head_width", 64),
                               mlp_ratio=v.get("mlp_ratio", 4.0),
                               pool="mean" if v.get("pool_type") == "avg" else "cls"),
        text=TextTowerConfig(context_length=t.get("context_length", 77), vocab_size=t.get("vocab_size", 49408),
                             width=t["width"], depth=t["layers"], heads=t["heads"], mlp_ratio=t.get("mlp_ratio", 4.0)),
        init_logit_bias=model_cfg.get("init_logit_bias"),
        **preprocess_fields(preprocess_cfg, name),
    )


def from_openclip_state_dict(sd: dict[str, torch.Tensor], config: DualEncoderConfig,
                             where: str = "OpenCLIP checkpoint") -> DualEncoder:
    if config.vqa_answers:
        raise ValueError("OpenCLIP weights have no VQA head: import first, then add vqa_answers and fine-tune")
    with torch.device("meta"):  # only for the parameter names and shapes
        ours = DualEncoder(config).state_dict()
    inverse = {name: key for key in ours if (name := _rename(key, TOP_KEYS, BLOCK_PREFIXES)) is not None}
    converted = {}
    for name, value in sd.items():
        if name == "attn_mask" or name.endswith(".attn_mask"):
            continue  # OpenCLIP's causal mask buffer; ours is implicit
        if name not in inverse:
            raise CheckpointError(f"{where}: OpenCLIP weight {name!r} has no place in a vlm DualEncoder "
                                  "(only standard ViT CLIP models can be imported)")
        key = inverse[name]
        if value.numel() != ours[key].numel():
            raise CheckpointError(f"{where}: {name} has shape {tuple(value.shape)}, the config needs "
                                  f"{tuple(ours[key].shape)}")
        converted[key] = value.reshape(ours[key].shape)
    missing = sorted(set(ours) - set(converted))
    if missing:
        raise CheckpointError(f"{where}: OpenCLIP checkpoint lacks {missing[:3]}{'...' if len(missing) > 3 else ''}")
    return model_from_weights(config, converted, where).eval()


def _read_model_cfg(path: Path) -> dict:
    """OpenCLIP's model config from a hub-style file ({"model_cfg": ...}) or a bare one (model_configs/*.json)."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    model_cfg = data.get("model_cfg", data) if isinstance(data, dict) else None
    if not isinstance(model_cfg, dict) or not {"vision_cfg", "text_cfg", "embed_dim"} <= set(model_cfg):
        raise CheckpointError(f"{path}: expected an OpenCLIP model config (embed_dim, vision_cfg, text_cfg)")
    return model_cfg


def import_openclip(path: str | Path, model_cfg: dict | None = None, quick_gelu: bool = False,
                    model: str | Path | None = None) -> DualEncoder:
    """A DualEncoder from an OpenCLIP export folder or checkpoint file (.bin, .pt, .pth, .safetensors).

    A folder carries its config. A bare file needs its architecture: `model` (an OpenCLIP model name such
    as "ViT-B-32", or the path of its config JSON) or `model_cfg` (that JSON, loaded); the weights cannot
    tell the head count or the activation, so without one the import is refused rather than guessed.
    `quick_gelu` forces QuickGELU, as open_clip's `force_quick_gelu` (OpenAI's weights under a GELU name).
    """
    path = Path(path)
    name = path.stem if path.is_file() else path.name
    preprocess_cfg = None
    if path.is_dir():
        config_path = path / CONFIG_NAME
        if not config_path.is_file():
            raise CheckpointError(f"{path}: no {CONFIG_NAME} in this folder")
        model_cfg = _read_model_cfg(config_path)
        preprocess_cfg = _read_preprocess_cfg(config_path)
        weights = next((path / n for n in (WEIGHTS_NAME, "open_clip_model.safetensors") if (path / n).is_file()), None)
        if weights is None:
            raise CheckpointError(f"{path}: no {WEIGHTS_NAME} or open_clip_model.safetensors in this folder")
        path = weights
    elif not path.is_file():
        raise CheckpointError(f"{path}: no such file or folder")
    sd = _read_state_dict(path)
    if model_cfg is None:
        check_openclip_vit(sd, str(path))
    if model_cfg is None and model is None:
        width = sd["visual.conv1.weight"].shape[0]
        raise CheckpointError(
            f"{path}: a bare OpenCLIP state dict does not record its head count or activation (a guess such as "
            f"heads = width // 64 = {width // 64} changes every embedding when wrong): pass its OpenCLIP model name "
            "(--model ViT-B-32) or its model config JSON (--model FILE.json)")
    if model_cfg is None:
        model_cfg = architecture_config(model)
    if quick_gelu:
        model_cfg = {**model_cfg, "quick_gelu": True}
    try:
        config = config_from_openclip(model_cfg, name, preprocess_cfg)
    except KeyError as e:  # a timm or Hugging Face tower, or a config with parts missing
        raise CheckpointError(f"{path}: not a standard OpenCLIP ViT model (no {e.args[0]!r})") from None
    return from_openclip_state_dict(sd, config, str(path))


def _read_preprocess_cfg(path: Path) -> dict | None:
    data = json.loads(path.read_text())
    return data.get("preprocess_cfg") if isinstance(data, dict) else None


def import_openclip_pretrained(model: str | Path, pretrained: str, quick_gelu: bool = False) -> DualEncoder:
    """open_clip's own `create_model_and_transforms(model, pretrained=...)`, as a DualEncoder with the same
    weights and image preprocessing. `pretrained` is a local file, or a tag (e.g. laion2b_s34b_b79k) that
    open_clip downloads (internet needed). A tag trained with QuickGELU under a GELU architecture (or the
    reverse), which open_clip only warns about, is refused: every embedding would be off."""
    import open_clip

    model_cfg = architecture_config(model)
    name = str(model)
    if name.endswith(".json"):  # open_clip builds models by registry name: register the file
        open_clip.add_model_config(name)
        name = Path(name).stem
    uses_quick_gelu = bool(model_cfg.get("quick_gelu", False)) or quick_gelu
    tag_cfg = {} if Path(pretrained).is_file() else open_clip.get_pretrained_cfg(name, pretrained)
    if tag_cfg and bool(tag_cfg.get("quick_gelu", False)) != uses_quick_gelu:
        fix = f"{name}-quickgelu (or --quick-gelu)" if tag_cfg.get("quick_gelu") else name.removesuffix("-quickgelu")
        raise CheckpointError(f"{name} with pretrained {pretrained!r}: the weights were trained with "
                              f"{'QuickGELU' if tag_cfg.get('quick_gelu') else 'GELU'} but the architecture uses "
                              f"{'QuickGELU' if uses_quick_gelu else 'GELU'}; use {fix}")
    try:
        theirs, _, _ = open_clip.create_model_and_transforms(name, pretrained=pretrained, force_quick_gelu=quick_gelu)
    except (RuntimeError, ValueError, OSError) as e:
        raise CheckpointError(f"{name} with pretrained {pretrained!r}: {str(e).splitlines()[0]}") from None
    config = config_from_openclip({**model_cfg, "quick_gelu": uses_quick_gelu}, name, theirs.visual.preprocess_cfg)
    return from_openclip_state_dict(theirs.state_dict(), config, f"{name} ({pretrained})")
