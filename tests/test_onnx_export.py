"""`vlm export onnx`: the graphs ONNX Runtime runs give what the torch model gives, at any batch size."""

from __future__ import annotations

import json

import pytest
import torch

import vlm
from vlm.cli import main
from vlm.tokenizer import padding_mask

onnxruntime = pytest.importorskip("onnxruntime", reason="vlm[onnx] is not installed")


def run(path, **inputs) -> torch.Tensor:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {k: v.numpy() for k, v in inputs.items()})[0])


CAPTIONS = ["a red circle", "two large blue squares left of a small green star", "", "one star", "a cross"]


def test_late_fusion_exports_both_encoders(clip_tiny, tmp_path, capsys):
    checkpoint = tmp_path / "clip.pt"
    clip_tiny.save(checkpoint)
    assert main(["export", "onnx", str(checkpoint), str(tmp_path / "onnx")]) == 0
    assert "ONNX Runtime vs torch max abs" in capsys.readouterr().out
    images, ids = torch.randn(5, 3, 32, 32), vlm.get_tokenizer(clip_tiny)(CAPTIONS)  # not the traced batch size
    with torch.no_grad():
        torch.testing.assert_close(run(tmp_path / "onnx/image_encoder.onnx", images=images),
                                   clip_tiny.encode_image(images), rtol=0, atol=1e-5)
        expected = clip_tiny.encode_text(ids)
        torch.testing.assert_close(run(tmp_path / "onnx/text_encoder.onnx", text=ids), expected, rtol=0, atol=1e-5)
        cut = ids[:, : int(padding_mask(ids).sum(1).max())]  # any length: after the longest caption, as vlm cuts
        torch.testing.assert_close(run(tmp_path / "onnx/text_encoder.onnx", text=cut), expected, rtol=0, atol=1e-5)
    info = json.loads((tmp_path / "onnx/onnx.json").read_text())
    assert info["image_size"] == 32 and info["context_length"] == ids.shape[1] and "ToNormalizedTensor" in info[
        "preprocess"]
    assert info["logit_scale"] == pytest.approx(float(clip_tiny.logit_scale.detach().exp()))
    assert set(info["graphs"]) == {"image_encoder.onnx", "text_encoder.onnx"}


def test_early_fusion_exports_the_pair_scorer(fusion_tiny, tmp_path):
    checkpoint = tmp_path / "fusion.pt"
    fusion_tiny.save(checkpoint)
    assert main(["export", "onnx", str(checkpoint), str(tmp_path / "onnx")]) == 0
    images, ids = torch.randn(5, 3, 32, 32), vlm.get_tokenizer(fusion_tiny)(CAPTIONS)
    mask = padding_mask(ids)
    with torch.no_grad():
        expected = fusion_tiny.score(images, ids, mask)
        torch.testing.assert_close(run(tmp_path / "onnx/pair_scorer.onnx", images=images, text=ids, text_mask=mask),
                                   expected, rtol=0, atol=1e-5)
        n = int(mask.sum(1).max())
        torch.testing.assert_close(run(tmp_path / "onnx/pair_scorer.onnx", images=images, text=ids[:, :n],
                                       text_mask=mask[:, :n]), expected, rtol=0, atol=1e-5)
    assert not list((tmp_path / "onnx").glob(".*.tmp"))  # written through a temp file, nothing left over


def test_a_vilt_layout_model_is_refused_in_one_line(tmp_path, capsys):
    import dataclasses

    config = dataclasses.replace(vlm.get_model_config("fusion-tiny"), layout="vilt", match_head="rank")
    model = vlm.models.registry.build_model(config)
    model.save(tmp_path / "vilt.pt")
    assert main(["export", "onnx", str(tmp_path / "vilt.pt"), str(tmp_path / "onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pixel masks" in err[0]
