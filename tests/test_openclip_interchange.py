"""Late-fusion weights move to OpenCLIP and back with the same embeddings (max abs difference < 1e-5)."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

import vlm
from vlm.cli import main
from vlm.models import CheckpointError
from vlm.models.openclip_compat import config_from_openclip, from_openclip_state_dict, import_openclip_pretrained
from vlm.models.preprocess import model_transform

TOLERANCE = dict(rtol=0, atol=1e-5)
# A custom OpenCLIP model as small as ours, with non-default shapes: MLP ratio 2, a SigLIP bias.
TINY_OPENCLIP = dict(
    embed_dim=24,
    vision_cfg=dict(image_size=48, patch_size=16, width=128, layers=2, head_width=64, mlp_ratio=2.0),
    text_cfg=dict(context_length=20, vocab_size=49408, width=64, heads=1, layers=3, mlp_ratio=2.0),
    init_logit_bias=-10.0,
)


def assert_same_embeddings(ours: vlm.DualEncoder, theirs: torch.nn.Module, image_px: int, context: int) -> None:
    images = torch.randn(3, 3, image_px, image_px)
    ids = vlm.Tokenizer(context)(["a red circle", "two blue squares left of a green star", ""])
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images, normalize=False), theirs.encode_image(images),
                                   **TOLERANCE)
        torch.testing.assert_close(ours.encode_text(ids, normalize=False), theirs.encode_text(ids), **TOLERANCE)
        torch.testing.assert_close(ours.logit_scale, theirs.logit_scale)
        if theirs.logit_bias is not None or ours.logit_bias is not None:
            torch.testing.assert_close(ours.logit_bias, theirs.logit_bias)


@pytest.mark.parametrize("overrides", [[], ["quick_gelu=true", "image.pool=mean", "init_logit_bias=-10"]],
                         ids=["clip", "quickgelu-meanpool-siglip"])
def test_export_loads_in_openclip_with_the_same_embeddings(tmp_path, overrides):
    ours = vlm.create_model("clip-tiny", overrides).eval()
    vlm.export_openclip(ours, tmp_path / "export")
    theirs = open_clip.create_model(f"local-dir:{tmp_path / 'export'}").eval()
    assert_same_embeddings(ours, theirs, image_px=32, context=32)


def test_export_then_import_gives_back_the_same_weights(tmp_path, clip_tiny):
    vlm.export_openclip(clip_tiny, tmp_path / "export")
    back = vlm.import_openclip(tmp_path / "export")
    assert back.config.image == clip_tiny.config.image and back.config.text == clip_tiny.config.text
    before, after = clip_tiny.state_dict(), back.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


def test_a_bare_openclip_state_dict_file_imports_with_its_model_config(tmp_path):
    theirs = open_clip.CLIP(**TINY_OPENCLIP).eval()
    torch.save(theirs.state_dict(), tmp_path / "tiny.pt")
    ours = vlm.import_openclip(tmp_path / "tiny.pt", model_cfg=TINY_OPENCLIP)
    image, text = ours.config.image, ours.config.text
    assert (image.image_size, image.patch_size, image.width, image.depth, image.heads, image.mlp_ratio) == \
        (48, 16, 128, 2, 2, 2.0)
    assert (text.context_length, text.width, text.depth, text.heads, text.mlp_ratio) == (20, 64, 3, 1, 2.0)
    assert ours.config.embed_dim == 24 and ours.config.init_logit_bias == -10.0
    assert_same_embeddings(ours, theirs, image_px=48, context=20)


def test_openai_weights_need_quick_gelu_which_no_weight_shape_reveals(tmp_path):
    theirs = open_clip.CLIP(**TINY_OPENCLIP, quick_gelu=True).eval()
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in theirs.state_dict().items()}},
               tmp_path / "epoch_3.pt")  # open_clip_train's checkpoint of a DDP-wrapped model
    ours = vlm.import_openclip(tmp_path / "epoch_3.pt", model_cfg=TINY_OPENCLIP, quick_gelu=True)
    assert_same_embeddings(ours, theirs, 48, 20)
    with pytest.raises(AssertionError):
        assert_same_embeddings(vlm.import_openclip(tmp_path / "epoch_3.pt", model_cfg=TINY_OPENCLIP), theirs, 48, 20)


def test_cli_exports_a_checkpoint_and_imports_an_openclip_file(tmp_path, clip_tiny, capsys):
    clip_tiny.save(tmp_path / "ours.pt")
    assert main(["openclip", "export", str(tmp_path / "ours.pt"), str(tmp_path / "export")]) == 0
    assert_same_embeddings(clip_tiny, open_clip.create_model(f"local-dir:{tmp_path / 'export'}").eval(), 32, 32)

    theirs = open_clip.CLIP(**TINY_OPENCLIP).eval()
    torch.save(theirs.state_dict(), tmp_path / "theirs.pt")
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_OPENCLIP))
    assert main(["openclip", "import", str(tmp_path / "theirs.pt"), str(tmp_path / "imported.pt"),
                 "--model", str(tmp_path / "tiny.json")]) == 0
    assert "imported.pt" in capsys.readouterr().out
    assert_same_embeddings(vlm.load(tmp_path / "imported.pt"), theirs, image_px=48, context=20)


def test_importing_something_that_is_not_an_openclip_checkpoint_names_the_file(tmp_path, clip_tiny, capsys):
    clip_tiny.save(tmp_path / "vlm_checkpoint.pt")
    with pytest.raises(CheckpointError, match="vlm_checkpoint.pt: not an OpenCLIP ViT checkpoint"):
        vlm.import_openclip(tmp_path / "vlm_checkpoint.pt")
    (tmp_path / "notes.bin").write_text("not weights")
    with pytest.raises(CheckpointError, match="notes.bin: not a readable OpenCLIP checkpoint"):
        vlm.import_openclip(tmp_path / "notes.bin")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CheckpointError, match="empty_dir: no open_clip_config.json"):
        vlm.import_openclip(tmp_path / "empty_dir")
    assert main(["openclip", "import", str(tmp_path / "missing.pt"), str(tmp_path / "out.pt")]) == 2
    err = capsys.readouterr().err
    assert "missing.pt" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.pt").exists()


def test_an_openclip_model_with_layers_we_do_not_have_is_refused_by_name(tmp_path):
    layer_scaled = dict(TINY_OPENCLIP, vision_cfg=dict(TINY_OPENCLIP["vision_cfg"], ls_init_value=0.1))
    torch.save(open_clip.CLIP(**layer_scaled).state_dict(), tmp_path / "layer_scale.pt")
    with pytest.raises(CheckpointError, match="ls_1"):
        vlm.import_openclip(tmp_path / "layer_scale.pt", model_cfg=layer_scaled)


def test_openclip_vit_b_32_imports_with_the_same_embeddings():
    # In memory: the file path is covered at tiny size above, and 600 MB of disk I/O is not the point here.
    theirs = open_clip.create_model("ViT-B-32").eval()
    state_dict = theirs.state_dict()
    ours = from_openclip_state_dict(state_dict,
                                    config_from_openclip(open_clip.get_model_config("ViT-B-32"), "ViT-B-32"))
    assert ours.config.image == vlm.get_model_config("clip-base32").image
    assert ours.config.text == vlm.get_model_config("clip-base32").text
    assert_same_embeddings(ours, theirs, image_px=224, context=77)


def test_an_openclip_folder_with_a_timm_tower_is_refused_by_name(tmp_path):
    folder = tmp_path / "timm_clip"
    folder.mkdir()
    config = {"embed_dim": 512, "vision_cfg": {"timm_model_name": "convnext_base", "image_size": 224},
              "text_cfg": {"context_length": 77, "width": 512, "heads": 8, "layers": 12}}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
    torch.save({"visual.trunk.stem.0.weight": torch.zeros(1)}, folder / "open_clip_pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"timm_clip.*timm_model_name"):
        vlm.import_openclip(folder)


@pytest.mark.parametrize("config_text, message", [
    ("{not json", "not valid JSON"),
    ('{"preprocess_cfg": {}}', "expected an OpenCLIP model config"),
], ids=["broken-json", "no-model-cfg"])
def test_a_broken_openclip_config_file_is_refused_by_name(tmp_path, clip_tiny, config_text, message):
    folder = vlm.export_openclip(clip_tiny, tmp_path / "export")
    (folder / "open_clip_config.json").write_text(config_text)
    with pytest.raises(CheckpointError, match=rf"open_clip_config\.json: {message}"):
        vlm.import_openclip(folder)


def test_a_folder_with_a_bare_openclip_model_config_imports_too(tmp_path, clip_tiny):
    folder = vlm.export_openclip(clip_tiny, tmp_path / "export")
    config_path = folder / "open_clip_config.json"
    config_path.write_text(json.dumps(json.loads(config_path.read_text())["model_cfg"]))  # model_configs/*.json
    assert torch.equal(vlm.import_openclip(folder).text.text_projection, clip_tiny.text.text_projection)


# Heads that are not width // 64 (4 of width 128; 4 of width 64): a state dict alone cannot show them.
FOUR_HEADS = dict(TINY_OPENCLIP, vision_cfg=dict(TINY_OPENCLIP["vision_cfg"], head_width=32),
                  text_cfg=dict(TINY_OPENCLIP["text_cfg"], heads=4))


def test_a_bare_state_dict_is_refused_without_its_architecture_and_imports_exactly_with_it(tmp_path, capsys):
    theirs = open_clip.CLIP(**FOUR_HEADS).eval()
    torch.save(theirs.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"does not record its head count.*--model"):
        vlm.import_openclip(tmp_path / "open_clip_pytorch_model.bin")
    assert main(["openclip", "import", str(tmp_path / "open_clip_pytorch_model.bin"), str(tmp_path / "out.pt")]) == 2
    assert "--model" in capsys.readouterr().err and not (tmp_path / "out.pt").exists()
    (tmp_path / "four-heads.json").write_text(json.dumps(FOUR_HEADS))
    assert main(["openclip", "import", str(tmp_path / "open_clip_pytorch_model.bin"), str(tmp_path / "out.pt"),
                 "--model", str(tmp_path / "four-heads.json")]) == 0
    ours = vlm.load(tmp_path / "out.pt")
    assert ours.config.image.heads == 4 and ours.config.text.heads == 4
    assert_same_embeddings(ours, theirs, image_px=48, context=20)


def test_import_by_name_and_pretrained_file_equals_open_clips_own_loader_with_its_preprocessing(tmp_path):
    """`vlm openclip import NAME --pretrained FILE` against open_clip.create_model_and_transforms(NAME, FILE),
    the same PIL image through each one's preprocessing."""
    from PIL import Image

    config_file = tmp_path / "tiny-four-heads.json"  # open_clip's registry reads model configs from files
    config_file.write_text(json.dumps(FOUR_HEADS))
    torch.save(open_clip.CLIP(**FOUR_HEADS).state_dict(), tmp_path / "weights.bin")
    assert main(["openclip", "import", str(config_file), "--pretrained", str(tmp_path / "weights.bin"),
                 str(tmp_path / "ours.pt")]) == 0
    ours = vlm.load(tmp_path / "ours.pt")
    theirs, _, preprocess = open_clip.create_model_and_transforms("tiny-four-heads",
                                                                  pretrained=str(tmp_path / "weights.bin"))
    image = Image.new("RGB", (90, 60), "white")
    image.paste(Image.new("RGB", (30, 30), "red"), (10, 20))
    with torch.no_grad():
        expected = theirs.eval().encode_image(preprocess(image)[None])
        mine = ours.encode_image(model_transform(ours)(image)[None], normalize=False)
    torch.testing.assert_close(mine, expected, **TOLERANCE)
    assert ours.config.image.heads == 4


def test_a_pretrained_tag_trained_with_quickgelu_under_a_gelu_name_is_refused():
    """OpenAI's ViT-B-32 weights need QuickGELU: open_clip only warns; vlm refuses before any download."""
    with pytest.raises(CheckpointError, match=r"QuickGELU.*ViT-B-32-quickgelu"):
        import_openclip_pretrained("ViT-B-32", "openai")


def test_the_default_normalisation_of_a_model_config_is_the_data_pipelines_one():
    from data_pipelines.transforms import IMAGE_MEAN, IMAGE_STD

    config = vlm.get_model_config("clip-tiny")
    assert (config.image_mean, config.image_std) == (IMAGE_MEAN, IMAGE_STD)
