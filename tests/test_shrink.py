"""`vlm shrink` (issue 26): weight inheritance that gives the model back when everything is kept, and otherwise
an ordinary smaller checkpoint of the same family."""

from __future__ import annotations

import pytest
import torch

import vlm
from vlm.config import ConfigError
from vlm.models.shrink import shrink_checkpoint, shrink_model


@pytest.mark.parametrize("name", ["clip-tiny", "fusion-tiny"])
def test_keeping_every_layer_and_width_gives_the_model_bit_for_bit(name, tmp_path):
    model = vlm.create_model(name).eval()
    model.save(tmp_path / "teacher.pt")
    same = shrink_checkpoint(str(tmp_path / "teacher.pt"), str(tmp_path / "same.pt"), depth=2, width=32, heads=2)
    ours, theirs = model.state_dict(), vlm.load(tmp_path / "same.pt").state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    images, ids = torch.randn(3, 3, 32, 32), torch.randint(1, 1000, (3, 12))
    if name == "clip-tiny":
        assert torch.equal(model.similarity(images, ids), same.similarity(images, ids))
    else:
        assert torch.equal(model.score(images, ids), same.score(images, ids))


@pytest.mark.parametrize("name", ["clip-tiny", "fusion-tiny"])
def test_a_shrunk_model_loads_with_the_ordinary_loader_and_evaluates(name, tmp_path):
    from vlm.eval.zeroshot import evaluate_zero_shot

    vlm.create_model(name).save(tmp_path / "big.pt")
    shrink_checkpoint(str(tmp_path / "big.pt"), str(tmp_path / "small.pt"), depth=1, width=16, heads=1)
    small = vlm.load(tmp_path / "small.pt")
    assert type(small) is type(vlm.create_model(name)) and small.config.name == f"{name}-shrunk"
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in vlm.create_model(name).parameters())
    result = evaluate_zero_shot(small, torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]), ["circle", "square"],
                                ["a photo of a {}."])
    assert 0 <= result["acc1"] <= 100


def test_layers_are_evenly_spaced_and_heads_kept_by_weight_magnitude():
    model = vlm.create_model("fusion-tiny", ["depth=3", "heads=2"]).eval()
    with torch.no_grad():
        attn = model.blocks[2].attn
        attn.qkv.weight[:16] *= 0.01  # head 0 of q: small weights
        attn.qkv.weight[32:48] *= 0.01  # head 0 of k
        attn.qkv.weight[64:80] *= 0.01  # head 0 of v
        attn.proj.weight[:, :16] *= 0.01
    small = shrink_model(model, depth=2, heads=1, width=16)
    # the last of 3 layers is kept (0 and 2 are evenly spaced), and of its heads the one with large weights
    kept_v = small.blocks[1].attn.qkv.weight[32:48]
    assert kept_v.abs().mean() > 10 * model.blocks[2].attn.qkv.weight[64:80].abs().mean()


def test_impossible_shapes_are_refused_in_one_line():
    model = vlm.create_model("clip-tiny")
    with pytest.raises(ConfigError, match="between 1 and"):
        shrink_model(model, depth=5)
    with pytest.raises(ConfigError, match="divisible"):
        shrink_model(model, width=31, heads=2)
    with pytest.raises(ConfigError, match="wider than"):
        shrink_model(model, width=32, heads=1)  # 32-dim heads from 16-dim ones


def test_vlm_shrink_command_writes_an_ordinary_checkpoint(tmp_path, capsys):
    from vlm.cli import main

    vlm.create_model("clip-tiny").save(tmp_path / "big.pt")
    assert main(["shrink", str(tmp_path / "big.pt"), "--depth", "1", "--width", "16", "--heads", "1",
                 "--out", str(tmp_path / "small.pt")]) == 0
    assert "parameters" in capsys.readouterr().out
    small = vlm.load(tmp_path / "small.pt")
    assert (small.config.image.depth, small.config.text.width, small.config.image.heads) == (1, 16, 1)


def test_a_shrunk_late_fusion_model_exports_to_openclip(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    from vlm.models.openclip_compat import export_openclip

    small = shrink_model(vlm.create_model("clip-tiny").eval(), depth=1, width=16, heads=1)
    export_openclip(small, tmp_path / "export")
    theirs = open_clip.create_model(f"local-dir:{tmp_path / 'export'}").eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode_image(images, normalize=True), small.encode_image(images),
                                   atol=1e-5, rtol=0)
