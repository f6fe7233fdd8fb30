"""A saved model loads back identical; a broken file is refused with its name in the message."""

from __future__ import annotations

import pytest
import torch

import vlm
from vlm.atomic_io import atomic_write
from vlm.models import CheckpointError
from vlm.models.checkpoint import model_payload, save_checkpoint
from vlm.tokenizer import padding_mask


def test_a_saved_dual_encoder_loads_with_identical_outputs(tmp_path, images, captions):
    model = vlm.create_model("clip-tiny", ["init_logit_bias=-10", "vqa_answers=[yes, no]"]).eval()
    model.save(tmp_path / "clip.pt")
    loaded = vlm.load(tmp_path / "clip.pt")
    assert type(loaded) is vlm.DualEncoder and loaded.config == model.config and not loaded.training
    ids = vlm.get_tokenizer(model)(captions)
    with torch.no_grad():
        for name, value in model(images, ids).items():
            assert torch.equal(loaded(images, ids)[name], value), name
        assert torch.equal(loaded.vqa_logits(images, ids), model.vqa_logits(images, ids))
    assert all(p.requires_grad for p in loaded.parameters()), "a loaded model must stay trainable"


def test_a_saved_early_fusion_model_loads_with_identical_outputs(tmp_path, fusion_tiny, images, captions):
    fusion_tiny.save(tmp_path / "fusion.pt")
    loaded = vlm.load(tmp_path / "fusion.pt")
    assert type(loaded) is vlm.EarlyFusionModel and loaded.config == fusion_tiny.config
    ids = vlm.get_tokenizer(fusion_tiny)(captions)
    with torch.no_grad():
        before, after = fusion_tiny(images, ids, padding_mask(ids)), loaded(images, ids, padding_mask(ids))
        assert torch.equal(after.pooled, before.pooled) and torch.equal(after.text_hidden, before.text_hidden)
        assert torch.equal(loaded.score(images, ids), fusion_tiny.score(images, ids))


def test_a_loaded_model_does_not_share_weights_with_anything(tmp_path, clip_tiny):
    clip_tiny.save(tmp_path / "clip.pt")
    a, b = vlm.load(tmp_path / "clip.pt"), vlm.load(tmp_path / "clip.pt")
    with torch.no_grad():
        a.logit_scale.add_(1.0)
    assert b.logit_scale.item() == pytest.approx(clip_tiny.logit_scale.item())


def test_half_precision_weights_load_into_a_float32_model(tmp_path, clip_tiny):
    payload = model_payload(clip_tiny)
    payload["model"] = {k: v.half() for k, v in payload["model"].items()}
    save_checkpoint(payload, tmp_path / "half.pt")
    loaded = vlm.load(tmp_path / "half.pt")
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    torch.testing.assert_close(loaded.logit_scale, clip_tiny.logit_scale, rtol=1e-3, atol=0)


def test_training_state_in_the_checkpoint_is_ignored_by_load(tmp_path, clip_tiny):
    payload = model_payload(clip_tiny) | {"step": 7, "optimizer": {"state": {}}}
    save_checkpoint(payload, tmp_path / "run.pt")
    assert vlm.load(tmp_path / "run.pt").config == clip_tiny.config


def test_a_truncated_checkpoint_is_refused_by_name(tmp_path, clip_tiny):
    clip_tiny.save(tmp_path / "whole.pt")
    data = (tmp_path / "whole.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt: not a readable checkpoint"):
        vlm.load(tmp_path / "cut.pt")


@pytest.mark.parametrize("content, message", [
    (b"name: clip-tiny\n", "not a readable checkpoint"),
    (b"", "not a readable checkpoint"),
], ids=["yaml", "empty"])
def test_a_file_that_is_not_a_checkpoint_is_refused_by_name(tmp_path, content, message):
    (tmp_path / "wrong.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"wrong\.pt: {message}"):
        vlm.load(tmp_path / "wrong.pt")


def test_an_openclip_state_dict_is_refused_with_a_pointer_to_import_openclip(tmp_path, clip_tiny):
    torch.save(clip_tiny.state_dict(), tmp_path / "state_dict.pt")
    with pytest.raises(CheckpointError, match=r"state_dict\.pt: not a vlm checkpoint.*import_openclip"):
        vlm.load(tmp_path / "state_dict.pt")


def test_a_missing_checkpoint_is_refused_by_name(tmp_path):
    with pytest.raises(CheckpointError, match=r"nowhere\.pt: no such checkpoint file"):
        vlm.load(tmp_path / "nowhere.pt")


def test_weights_that_do_not_fit_the_config_are_refused_by_name(tmp_path, clip_tiny):
    payload = model_payload(clip_tiny)
    payload["config"]["embed_dim"] = 64
    save_checkpoint(payload, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match=r"mismatch\.pt: weights do not match the config .*proj"):
        vlm.load(tmp_path / "mismatch.pt")
    payload = model_payload(clip_tiny)
    del payload["model"]["logit_scale"]
    save_checkpoint(payload, tmp_path / "incomplete.pt")
    with pytest.raises(CheckpointError, match=r"incomplete\.pt: .*missing logit_scale"):
        vlm.load(tmp_path / "incomplete.pt")


def test_a_checkpoint_from_a_newer_vlm_is_refused(tmp_path, clip_tiny):
    save_checkpoint(model_payload(clip_tiny) | {"version": 99}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=r"future\.pt: checkpoint version 99 is newer"):
        vlm.load(tmp_path / "future.pt")


def test_a_checkpoint_with_a_bad_config_names_the_file_and_the_key(tmp_path, clip_tiny):
    payload = model_payload(clip_tiny)
    payload["config"]["image"]["widht"] = 3
    save_checkpoint(payload, tmp_path / "typo.pt")
    with pytest.raises(CheckpointError, match=r"typo\.pt: config\.image: unknown key\(s\) \['widht'\]"):
        vlm.load(tmp_path / "typo.pt")


def test_a_failed_save_leaves_the_previous_file_intact(tmp_path, clip_tiny):
    clip_tiny.save(tmp_path / "clip.pt")
    before = (tmp_path / "clip.pt").read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(tmp_path / "clip.pt") as f:
            f.write(b"half a checkpoint")
            raise RuntimeError("disk full")
    assert (tmp_path / "clip.pt").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["clip.pt"], "the temporary file must be removed"


def test_a_run_folder_loads_as_its_checkpoint_and_an_empty_one_is_named(tmp_path, clip_tiny):
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match=r"run: run folder without a checkpoint\.pt"):
        vlm.load(tmp_path / "run")
    clip_tiny.save(tmp_path / "run" / "checkpoint.pt")
    loaded = vlm.load(tmp_path / "run")
    expected = clip_tiny.state_dict()
    assert all(torch.equal(value, expected[name]) for name, value in loaded.state_dict().items())
