"""`vlm export onnx`: a checkpoint as ONNX graphs that ONNX Runtime (or any ONNX runtime) serves without torch.

Late fusion gives two graphs, `image_encoder.onnx` (images -> L2-normalised embeddings) and `text_encoder.onnx`
(token ids -> L2-normalised embeddings), the embeddings `vlm index build` stores; early fusion gives
`pair_scorer.onnx` ((images, token ids, text mask) -> the ITM log-odds `model.score` returns). The batch size is
free in every graph, and so is the text length: ids cut after the batch's longest real token (end-of-text) give
the same outputs as the full context, with less work, as vlm's own encoders cut them. `onnx.json` records what a
caller must do around them: the preprocessing (image size, mean, std), the tokenizer and context, and how far
ONNX Runtime's outputs were from torch's.

Float32 only: on these AVX2 CPUs ONNX Runtime's dynamic int8 was no faster than torch's (docs/BENCHMARKS.md).
The graphs are traced with every column (vlm.models.towers.static_shapes): the cut is the caller's.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from vlm.atomic_io import atomic_write
from vlm.errors import UserError

OPSET = 17
VERIFY_TOLERANCE = 1e-4  # max abs difference of ONNX Runtime's outputs from torch's


class ModelMethod(nn.Module):
    """One method of a model as a module's forward, for the tracer: `encode_image`, `encode_text`, `score`."""

    def __init__(self, model: nn.Module, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.method)(*inputs)


def example_inputs(model: nn.Module, batch: int = 2, cut: bool = False) -> dict[str, torch.Tensor]:
    from vlm.models import image_size
    from vlm.tokenizer import cut_padding, get_tokenizer, padding_mask

    size = image_size(model)
    tokenizer = get_tokenizer(model)
    text = tokenizer((["a small red circle left of a blue square", "two stars"] * batch)[:batch])
    mask = padding_mask(text, getattr(tokenizer, "pad_id", 0))
    if cut:  # to the longest real token: the graphs take any length, and the padding changes nothing
        text, mask = cut_padding(text, mask)
    return {"images": torch.randn(len(text), 3, size, size, generator=torch.Generator().manual_seed(0)),
            "text": text, "text_mask": mask}


def graphs(model: nn.Module) -> dict[str, tuple[nn.Module, list[str]]]:
    """File name -> (module to trace, its input names), per family."""
    if model.config.arch == "dual_encoder":
        return {"image_encoder.onnx": (ModelMethod(model, "encode_image"), ["images"]),
                "text_encoder.onnx": (ModelMethod(model, "encode_text"), ["text"])}
    if getattr(model.config, "layout", "vlm") == "vilt":
        raise UserError("vlm export onnx: ViLT-layout models take images of any size with pixel masks, which these "
                        "fixed-size graphs do not carry; export a vlm-layout early-fusion model")
    if model.itm_head is None:
        raise UserError(f"vlm export onnx: {model.config.name} has no matching head to score pairs with")
    return {"pair_scorer.onnx": (ModelMethod(model, "score"), ["images", "text", "text_mask"])}


def export_graph(module: nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str], path: Path) -> None:
    """Trace `module` to `path` atomically, the batch dimension (and a text's length) free."""
    dynamic = {name: {0: "batch", 1: "length"} if name.startswith("text") else {0: "batch"}
               for name in [*names, "output"]}
    with atomic_write(path) as f, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(module, inputs, f, input_names=names, output_names=["output"], dynamic_axes=dynamic,
                          opset_version=OPSET, dynamo=False)


def verify(path: Path, module: nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    """Max abs difference between ONNX Runtime's output and torch's on `inputs` (a batch other than the traced one)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    theirs = torch.from_numpy(session.run(None, feed)[0])
    with torch.no_grad():
        ours = module(*(inputs[i.name] for i in session.get_inputs()))
    return float((theirs - ours).abs().max())


def export_onnx(model: nn.Module, out_dir: str | Path, check: bool = True) -> dict:
    """Write the family's graphs and onnx.json into `out_dir`; returns what onnx.json holds."""
    from vlm.models import image_size
    from vlm.models.preprocess import config_transform
    from vlm.tokenizer import get_tokenizer

    model = model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    traced, other = example_inputs(model, 2), example_inputs(model, 4, cut=True)
    transform = config_transform(model.config, train=False)
    tokenizer = get_tokenizer(model)
    info = {"model": model.config.name, "arch": model.config.arch, "opset": OPSET, "precision": "fp32",
            "image_size": image_size(model), "preprocess": " ".join(repr(transform).split()),
            "context_length": tokenizer.context_length, "tokenizer": type(tokenizer).__name__, "graphs": {}}
    for name, (module, names) in graphs(model).items():
        export_graph(module, tuple(traced[n] for n in names), names, out / name)
        entry = {"inputs": names, "output": "output"}
        if check:
            entry["max_abs_diff_vs_torch"] = difference = verify(out / name, module, other)
            if not difference <= VERIFY_TOLERANCE:
                raise RuntimeError(f"{out / name}: ONNX Runtime differs from torch by {difference:.2e} "
                                   f"(tolerance {VERIFY_TOLERANCE:g})")
        info["graphs"][name] = entry
    if model.config.arch == "dual_encoder":
        info["logit_scale"] = float(model.logit_scale.detach().exp())
    with atomic_write(out / "onnx.json", "w") as f:
        json.dump(info, f, indent=2)
    return info

