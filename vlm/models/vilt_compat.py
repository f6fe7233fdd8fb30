"""Hugging Face ViLT interchange: `save_pretrained` folders of transformers' ViLT classes.

`import_vilt` reads a folder (or a hub name transformers resolves) of ViltModel, ViltForMaskedLM,
ViltForImageAndTextRetrieval or ViltForQuestionAnswering into an EarlyFusionModel with layout "vilt"; its
outputs equal transformers' (see tests/test_vilt_interchange.py). `export_vilt` writes such a folder back.
transformers' own classes load and save the weights, so every file variant they accept is accepted here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from vlm.models.checkpoint import CheckpointError, model_from_weights
from vlm.models.config import EarlyFusionConfig
from vlm.models.early_fusion import EarlyFusionModel

# Which head each transformers class carries, and the class vlm exports for each head.
CLASS_HEADS = {"ViltModel": None, "ViltForMaskedLM": "mlm", "ViltForImageAndTextRetrieval": "rank",
               "ViltForQuestionAnswering": "vqa"}
HEAD_CLASSES = {head: cls for cls, head in CLASS_HEADS.items()}

# vlm (timm) block names -> transformers' ViltLayer names; q/k/v are fused into timm's qkv.
BLOCK_KEYS = {
    "norm1": "layernorm_before", "attn.proj": "attention.output.dense", "norm2": "layernorm_after",
    "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense",
}
QKV = ("attention.attention.query", "attention.attention.key", "attention.attention.value")
TOP_KEYS = {
    "token_embedding.weight": "embeddings.text_embeddings.word_embeddings.weight",
    "token_type_embedding.weight": "embeddings.text_embeddings.token_type_embeddings.weight",
    "text_norm.weight": "embeddings.text_embeddings.LayerNorm.weight",
    "text_norm.bias": "embeddings.text_embeddings.LayerNorm.bias",
    "cls_token": "embeddings.cls_token", "image_pos": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "modality_embedding.weight": "embeddings.token_type_embeddings.weight",
    "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias",
    "pooler.0.weight": "pooler.dense.weight", "pooler.0.bias": "pooler.dense.bias",
}
HEAD_KEYS = {
    "rank": {"itm_head.weight": "rank_output.weight", "itm_head.bias": "rank_output.bias"},
    "mlm": {"mlm_head.transform.0.weight": "mlm_score.transform.dense.weight",
            "mlm_head.transform.0.bias": "mlm_score.transform.dense.bias",
            "mlm_head.transform.2.weight": "mlm_score.transform.LayerNorm.weight",
            "mlm_head.transform.2.bias": "mlm_score.transform.LayerNorm.bias",
            "mlm_head.bias": "mlm_score.decoder.bias"},
    "vqa": {f"vqa_head.mlp.{i}.{p}": f"classifier.{i}.{p}" for i in (0, 1, 3) for p in ("weight", "bias")},
}


def config_from_vilt(hf, head: str | None, vocab: tuple[str, ...], lowercase: bool, name: str) -> EarlyFusionConfig:
    """The EarlyFusionConfig computing what a transformers ViltConfig computes, or a refusal naming the field."""
    unsupported = {"hidden_act": (hf.hidden_act, "gelu"), "qkv_bias": (hf.qkv_bias, True),
                   "modality_type_vocab_size": (hf.modality_type_vocab_size, 2), "num_channels": (hf.num_channels, 3)}
    for field, (value, needed) in unsupported.items():
        if value != needed:
            raise CheckpointError(f"{name}: ViLT config {field}={value!r} is not supported (vlm needs {needed!r})")
    if not isinstance(hf.image_size, int) or not isinstance(hf.patch_size, int):
        raise CheckpointError(f"{name}: only square image_size and patch_size are supported")
    answers = ()
    if head == "vqa":
        answers = tuple(hf.id2label[i] for i in range(hf.num_labels))
    return EarlyFusionConfig(
        name=name, image_size=hf.image_size, patch_size=hf.patch_size, context_length=hf.max_position_embeddings,
        vocab_size=hf.vocab_size, width=hf.hidden_size, depth=hf.num_hidden_layers, heads=hf.num_attention_heads,
        mlp_ratio=hf.intermediate_size / hf.hidden_size, vqa_answers=answers, layout="vilt",
        norm_eps=hf.layer_norm_eps, match_head="rank" if head == "rank" else "none", mlm_head=head == "mlm",
        type_vocab_size=hf.type_vocab_size, tokenizer="wordpiece", vocab=vocab, lowercase=lowercase,
        preprocess="vilt")


def _block_key(key: str) -> tuple[int, str] | None:
    if not key.startswith("blocks."):
        return None
    index, rest = key[len("blocks."):].split(".", 1)
    return int(index), rest


def from_vilt_state_dict(sd: dict[str, torch.Tensor], config: EarlyFusionConfig) -> dict[str, torch.Tensor]:
    """transformers' ViLT weights (the `vilt.` prefix stripped) -> vlm names; q, k, v stacked into qkv."""
    heads = [h for h, on in (("rank", config.match_head == "rank"), ("mlm", config.mlm_head),
                             ("vqa", bool(config.vqa_answers))) if on]
    table = dict(TOP_KEYS)
    for head in heads:
        table.update(HEAD_KEYS[head])
    out = {ours: sd[theirs] for ours, theirs in table.items()}
    out["text_pos"] = sd["embeddings.text_embeddings.position_embeddings.weight"][None]
    for i in range(config.depth):
        layer = f"encoder.layer.{i}."
        for ours, theirs in BLOCK_KEYS.items():
            for p in ("weight", "bias"):
                out[f"blocks.{i}.{ours}.{p}"] = sd[f"{layer}{theirs}.{p}"]
        for p in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{p}"] = torch.cat([sd[f"{layer}{q}.{p}"] for q in QKV])
    return out


def to_vilt_state_dict(model: EarlyFusionModel, head: str | None) -> dict[str, torch.Tensor]:
    """vlm weights -> transformers' names for the class carrying `head` (qkv split back into q, k, v)."""
    sd = model.state_dict()
    prefix = "" if head is None else "vilt."
    out = {prefix + theirs: sd[ours] for ours, theirs in TOP_KEYS.items()}
    out[prefix + "embeddings.text_embeddings.position_embeddings.weight"] = sd["text_pos"][0]
    for key, value in sd.items():
        block = _block_key(key)
        if block is None:
            continue
        i, rest = block
        layer = f"{prefix}encoder.layer.{i}."
        if rest.startswith("attn.qkv."):
            for name, part in zip(QKV, value.chunk(3), strict=True):
                out[f"{layer}{name}.{rest.rsplit('.', 1)[1]}"] = part
        else:
            ours, p = rest.rsplit(".", 1)
            out[f"{layer}{BLOCK_KEYS[ours]}.{p}"] = value
    if head is not None:
        out.update({theirs: sd[ours] for ours, theirs in HEAD_KEYS[head].items()})
    if head == "mlm":  # tied to the word embeddings, as transformers forces
        out["mlm_score.decoder.weight"] = sd["token_embedding.weight"]
    return {k: v.clone().contiguous() for k, v in out.items()}


def _load_transformers(source: str):
    """The transformers model and tokenizer of a folder or hub name (transformers' own loading code)."""
    import transformers

    if not Path(source).is_dir() and (source.startswith(("/", ".", "~")) or source.count("/") > 1):
        raise CheckpointError(f"{source}: no such folder (give a save_pretrained folder or a hub name)")
    transformers.utils.logging.disable_progress_bar()
    try:
        hf_config = transformers.AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{source}: not a Hugging Face model folder or hub name ({str(e).splitlines()[0]})") \
            from None
    if hf_config.model_type != "vilt":
        raise CheckpointError(f"{source}: a {hf_config.model_type!r} model, not ViLT")
    names = [a for a in (hf_config.architectures or ["ViltModel"]) if a in CLASS_HEADS]
    if not names:
        raise CheckpointError(f"{source}: architecture {hf_config.architectures} cannot be imported "
                              f"(supported: {', '.join(CLASS_HEADS)})")
    model = getattr(transformers, names[0]).from_pretrained(source).eval()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{source}: no readable tokenizer files (vocab.txt): {str(e).splitlines()[0]}") from None
    return names[0], model, tokenizer


def _wordpiece_vocab(tokenizer, source: str) -> tuple[tuple[str, ...], bool]:
    vocab = tokenizer.get_vocab()
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise CheckpointError(f"{source}: tokenizer vocabulary ids are not 0..{len(vocab) - 1}")
    tokens = tuple(sorted(vocab, key=vocab.get))
    lowercase = bool(getattr(tokenizer, "do_lower_case", True))
    return tokens, lowercase


def import_vilt(source: str | Path, name: str | None = None) -> EarlyFusionModel:
    """An EarlyFusionModel (layout "vilt", WordPiece tokenizer, ViLT preprocessing) from a transformers ViLT."""
    source = str(source)
    class_name, hf_model, tokenizer = _load_transformers(source)
    head = CLASS_HEADS[class_name]
    vocab, lowercase = _wordpiece_vocab(tokenizer, source)
    name = name or Path(source.rstrip("/")).name
    config = config_from_vilt(hf_model.config, head, vocab, lowercase, name)
    sd = {k.removeprefix("vilt."): v for k, v in hf_model.state_dict().items()}
    return model_from_weights(config, from_vilt_state_dict(sd, config), source).eval()


def vilt_hf_config(config: EarlyFusionConfig, head: str | None):
    import transformers

    extra = {}
    if head == "vqa":
        extra = {"id2label": dict(enumerate(config.vqa_answers)),
                 "label2id": {a: i for i, a in enumerate(config.vqa_answers)}}
    return transformers.ViltConfig(
        vocab_size=config.vocab_size, type_vocab_size=config.type_vocab_size,
        max_position_embeddings=config.context_length, hidden_size=config.width,
        num_hidden_layers=config.depth, num_attention_heads=config.heads,
        intermediate_size=round(config.width * config.mlp_ratio), layer_norm_eps=config.norm_eps,
        image_size=config.image_size, patch_size=config.patch_size, pad_token_id=config.pad_token_id,
        architectures=[HEAD_CLASSES[head]], **extra)


def default_head(config: EarlyFusionConfig) -> str | None:
    """The head an export carries unless told: VQA, else the rank head, else MLM, else none (ViltModel)."""
    if config.vqa_answers:
        return "vqa"
    if config.match_head == "rank":
        return "rank"
    return "mlm" if config.mlm_head else None


def export_vilt(model: EarlyFusionModel, out_dir: str | Path, head: str | None = "default") -> Path:
    """Write a folder transformers' `ViltFor*.from_pretrained(out_dir)` and `ViltProcessor` load."""
    import transformers

    config = getattr(model, "config", None)
    if not isinstance(config, EarlyFusionConfig) or config.layout != "vilt" or config.tokenizer != "wordpiece":
        raise ValueError("only early-fusion models with the ViLT layout and a WordPiece tokenizer export to "
                         "transformers' ViLT (import one with `vlm vilt import`)")
    head = default_head(config) if head == "default" else head
    present = {"vqa": bool(config.vqa_answers), "rank": config.match_head == "rank", "mlm": config.mlm_head}
    if head is not None and not present.get(head, False):
        raise ValueError(f"{config.name} has no {head!r} head to export (it has: "
                         f"{[h for h, on in present.items() if on] or 'none'})")
    transformers.utils.logging.disable_progress_bar()
    hf_model = getattr(transformers, HEAD_CLASSES[head])(vilt_hf_config(config, head)).eval()
    hf_model.load_state_dict(to_vilt_state_dict(model, head), strict=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as tmp:
        hf_model.save_pretrained(tmp)
        _write_tokenizer(config, Path(tmp))
        _write_image_processor(config, Path(tmp))
        for f in Path(tmp).iterdir():  # file by file: a reader never sees a half-written file
            os.replace(f, out_dir / f.name)
    return out_dir


def _write_tokenizer(config: EarlyFusionConfig, folder: Path) -> None:
    from transformers import BertTokenizer

    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(config.vocab) + "\n", encoding="utf-8")
    BertTokenizer(str(vocab), do_lower_case=config.lowercase,
                  model_max_length=config.context_length).save_pretrained(str(folder))


def _write_image_processor(config: EarlyFusionConfig, folder: Path) -> None:
    from transformers import ViltImageProcessor

    ViltImageProcessor(size={"shortest_edge": config.image_size}).save_pretrained(str(folder))

