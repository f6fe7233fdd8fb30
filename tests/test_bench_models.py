"""`vlm bench encode` and `vlm bench score` on tiny models: they run, report every field, and on the exact
path vlm's embeddings and scores equal the reference implementation's (OpenCLIP, transformers' ViLT)."""

from __future__ import annotations

import json

import pytest
import torch

import vlm
from vlm.bench.inputs import coco_like_captions, shapes_captions
from vlm.cli import main
from vlm.tokenizer import padding_mask

pytest.importorskip("transformers")


def test_coco_like_captions_span_8_to_30_tokens_and_repeat_by_seed():
    captions = coco_like_captions(300, seed=1)
    lengths = padding_mask(vlm.Tokenizer(77)(captions)).sum(dim=1)
    assert int(lengths.min()) == 8 and int(lengths.max()) == 30
    assert captions == coco_like_captions(300, seed=1) != coco_like_captions(300, seed=2)
    assert len(shapes_captions(5)) == 5


def read_report(path, capsys) -> tuple[dict, str]:
    return json.loads(path.read_text()), capsys.readouterr().out


def test_bench_encode_reports_rates_and_embeddings_equal_to_openclips(tmp_path, capsys):
    out = tmp_path / "encode.json"
    assert main(["bench", "encode", "--model", "clip-tiny", "--rounds", "1", "--batch-size", "2", "--texts", "6",
                 "--json", str(out)]) == 0
    report, printed = read_report(out, capsys)
    assert [r["workload"].split(",")[0] for r in report["rows"]] == ["images 32 px", "texts", "texts"]
    for row in report["rows"]:
        for side in ("vlm", "reference"):
            assert row[side]["items_per_s"] > 0 and row[side]["gflops_per_s"] > 0 and row[side]["rounds"] == 1
        assert row["ratio"] == pytest.approx(row["vlm"]["items_per_s"] / row["reference"]["items_per_s"])
        assert row["max_abs_diff"] < 1e-5 and row["min_cosine"] > 1 - 1e-5
    texts = report["rows"][2]
    assert texts["vlm"]["gflops"] < texts["reference"]["gflops"]  # real lengths, not the 32-token context
    assert report["matmul_ceiling_gflops_per_s"] > 0 and report["peak_rss_mb"] > 0 and report["threads"] >= 1
    assert "| OpenCLIP items/s |" in printed and "quality" not in report


def test_bench_encode_with_a_checkpoint_and_a_shapes_world_reports_quality(tmp_path, capsys, clip_tiny):
    from data_pipelines.shapes import generate_shapes_world

    world = generate_shapes_world(tmp_path / "shapes", train=0, val=8, test=0, heldout=0, image_size=32)
    clip_tiny.save(tmp_path / "clip.pt")
    out = tmp_path / "encode.json"
    assert main(["bench", "encode", "--checkpoint", str(tmp_path / "clip.pt"), "--data", str(world),
                 "--rounds", "1", "--batch-size", "2", "--texts", "4", "--json", str(out)]) == 0
    report, printed = read_report(out, capsys)
    fp32 = report["quality"]["fp32"]
    assert set(fp32) == {"zeroshot_acc1", "image_retrieval_recall@1", "text_retrieval_recall@1"}
    assert all(0 <= v <= 100 for v in fp32.values()) and "fp32: zeroshot_acc1" in printed


def test_bench_encode_at_int8_stays_close_to_openclips_fp32_embeddings(tmp_path, capsys):
    pytest.importorskip("vlm.models.precision")
    out = tmp_path / "encode.json"
    assert main(["bench", "encode", "--model", "clip-tiny", "--precision", "int8", "--rounds", "1",
                 "--batch-size", "2", "--texts", "4", "--json", str(out)]) == 0
    report, _ = read_report(out, capsys)
    assert report["precision"] == "int8" and all(r["min_cosine"] > 0.9 for r in report["rows"])


def test_bench_score_reports_pairs_per_s_and_scores_equal_to_transformers_vilt(tmp_path, capsys):
    out = tmp_path / "score.json"
    assert main(["bench", "score", "--model", "fusion-tiny", "--rounds", "1", "--batch-size", "3",
                 "--json", str(out)]) == 0
    report, printed = read_report(out, capsys)
    shared, native = report["rows"]
    assert shared["workload"] == "pairs 32 px, 32 tokens, batch 3" and "fusion-tiny" in native["workload"]
    for row in (shared, native):
        assert row["vlm"]["items_per_s"] > 0 and row["reference"]["items_per_s"] > 0 and row["ratio"] > 0
    assert shared["max_abs_diff"] < 1e-5 and shared["relative_diff"] < 1e-5
    assert shared["vlm"]["gflops"] < shared["reference"]["gflops"]  # its texts cut to the longest real caption
    assert "| HF ViLT pairs/s |" in printed


def test_bench_commands_refuse_the_other_family_and_a_folder_that_is_no_shapes_world_in_one_line(tmp_path, capsys):
    assert main(["bench", "encode", "--model", "fusion-tiny", "--rounds", "1"]) == 2
    assert main(["bench", "score", "--model", "clip-tiny", "--rounds", "1"]) == 2
    assert main(["bench", "encode", "--model", "clip-tiny", "--data", str(tmp_path), "--rounds", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "late-fusion" in err[0] and "early-fusion" in err[1]
    assert f"{tmp_path}: not a shapes world" in err[2]


def test_the_vilt_twin_holds_the_reference_weights():
    from vlm.bench.score import vilt_at_shape, vlm_twin, wordpiece_vocab

    vocab = wordpiece_vocab(100)
    config = vlm.get_model_config("fusion-tiny")
    hf = vilt_at_shape(config, vocab, seed=0)
    twin = vlm_twin(hf, vocab)
    assert len(vocab) == 100 and twin.config.layout == "vilt" and twin.config.width == config.width
    assert torch.equal(twin.token_embedding.weight, hf.vilt.embeddings.text_embeddings.word_embeddings.weight)


def test_flops_of_openclips_fused_attention_are_counted_like_ours(clip_tiny, tmp_path):
    """nn.MultiheadAttention's inference fast path hides its matmuls from FlopCounterMode."""
    from vlm.bench.encode import openclip_twin
    from vlm.bench.timing import count_flops

    theirs = openclip_twin(clip_tiny, tmp_path / "openclip")
    images = torch.randn(2, 3, 32, 32)
    full_forward = lambda: clip_tiny.image.trunk(images) @ clip_tiny.image.proj  # noqa: E731 (every block in full)
    with torch.no_grad():
        assert count_flops(lambda: theirs.encode_image(images)) == count_flops(full_forward)
        # ours runs its last block at the CLS position only (vlm/models/towers.py block_at)
        assert count_flops(lambda: clip_tiny.encode_image(images)) < count_flops(full_forward)
    assert torch.backends.mha.get_fastpath_enabled()  # restored


def test_bench_encode_runs_the_onnx_export_on_onnx_runtime_with_openclips_embeddings(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "encode.json"
    assert main(["bench", "encode", "--model", "clip-tiny", "--precision", "onnx", "--rounds", "1",
                 "--batch-size", "2", "--texts", "4", "--json", str(out)]) == 0
    report, _ = read_report(out, capsys)
    assert report["precision"] == "onnx" and all(r["max_abs_diff"] < 1e-5 for r in report["rows"])
