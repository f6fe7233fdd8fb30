"""Issue 30, findings 1, 2, 10 and 15: users' images read right, over the generated hard inputs (hard_inputs.py).

EXIF orientation applied, 16-bit and float greys scaled (not clipped), transparency shown on white, every mode
and format to RGB, strips through early and late fusion, and a pixel limit that goes up as well as down.
"""

from __future__ import annotations

import csv
import json
import re
import warnings

import numpy as np
import pytest
import torch
from hard_inputs import (
    ALL_MODES,
    GREY_MEAN,
    TRANSPARENT_MODES,
    expected_rgb,
    reference,
    write_16bit_grey,
    write_exif_orientations,
    write_float_grey,
    write_format_files,
    write_latin1_name,
    write_mode_files,
    write_strips,
)
from PIL import Image, ImageOps

import vlm
from data_pipelines.images import BadImage, decode_image, set_max_pixels
from data_pipelines.sources import open_source
from data_pipelines.transforms import ToNormalizedTensor, eval_transform, train_transform
from vlm.cli import main
from vlm.models.preprocess import model_transform
from vlm.train.config import DataConfig

PILLOW_DEFAULT = 89_478_485


@pytest.fixture(autouse=True)
def pillow_limit(monkeypatch):
    """Each test starts at Pillow's default limit and leaves it there, whatever it set."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", PILLOW_DEFAULT)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# --- 1. EXIF orientation


@pytest.mark.parametrize("orientation", range(2, 9))
def test_decoded_image_equals_exif_transpose_for_every_orientation(tmp_path, orientation):
    path = write_exif_orientations(tmp_path)[orientation]
    expected = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    decoded = decode_image(path)
    assert decoded.size == expected.size and decoded.mode == "RGB"
    assert np.array_equal(pixels(decoded), pixels(expected))


def test_orientation_survives_reduced_scale_decoding_and_the_transform_turns_nothing_twice(tmp_path):
    path = write_exif_orientations(tmp_path, size=(480, 320))[6]  # a phone's portrait photo
    assert decode_image(path).size == (320, 480)
    assert decode_image(path, min_size=100).size == (160, 240)  # libjpeg's 1/2 scale, then turned
    upright = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    torch.testing.assert_close(eval_transform(32)(decode_image(path)), eval_transform(32)(upright))


def test_every_loader_sees_the_photo_upright(tmp_path):
    path = write_exif_orientations(tmp_path)[8]
    (tmp_path / "pairs.csv").write_text(f"image,caption\n{path.name},a turned photo\n")
    assert open_source(tmp_path / "pairs.csv")[0].image.size == (32, 48)


# --- 2. 16-bit and float images, and every mode


def test_16bit_grey_png_keeps_its_mean(tmp_path):
    path = write_16bit_grey(tmp_path / "grey16.png")
    assert Image.open(path).mode == "I;16"
    decoded = decode_image(path)
    assert decoded.mode == "RGB"
    assert pixels(decoded).mean() == pytest.approx(GREY_MEAN * 255, abs=1)  # clipping gave ~250


def test_float_grey_tiff_keeps_its_mean(tmp_path):
    path = write_float_grey(tmp_path / "grey.tif")
    assert Image.open(path).mode == "F"
    assert pixels(decode_image(path)).mean() == pytest.approx(GREY_MEAN * 255, abs=1)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_every_pillow_mode_decodes_to_the_rgb_a_browser_shows(tmp_path, mode):
    path = write_mode_files(tmp_path)[mode]
    assert Image.open(path).mode == mode
    decoded = decode_image(path)
    assert decoded.mode == "RGB" and decoded.size == Image.open(path).size
    error = np.abs(pixels(decoded) - expected_rgb(mode).astype(np.int16))
    assert error.mean() < (3 if mode == "P" else 0.5), f"{mode}: off by {error.mean():.1f} on average"
    if mode in TRANSPARENT_MODES:  # the transparent quarter is white, the stated background
        assert (pixels(decoded)[:, :4] == 255).all()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF", "GIF", "BMP"])
def test_every_format_decodes_to_its_picture(tmp_path, fmt):
    decoded = decode_image(write_format_files(tmp_path)[fmt])  # the animated GIF: its first frame
    assert decoded.mode == "RGB" and decoded.size == reference().size
    assert np.abs(pixels(decoded) - pixels(reference())).mean() < 4


def test_the_transforms_apply_the_same_rules_to_an_image_opened_elsewhere(tmp_path):
    path = write_16bit_grey(tmp_path / "grey16.png")
    with Image.open(path) as opened:  # a library user's own Image.open, handed to the model's transform
        unnormalized = ToNormalizedTensor(mean=(0, 0, 0), std=(1, 1, 1))(opened)
        resized_first = eval_transform(32)(opened)  # resized at 16 bits, then scaled: within a grey level
    assert float(unnormalized.mean()) == pytest.approx(GREY_MEAN, abs=0.005)
    torch.testing.assert_close(resized_first, eval_transform(32)(decode_image(path)), atol=0.02, rtol=0)


def test_a_file_named_in_latin1_bytes_decodes(tmp_path):
    path = write_latin1_name(tmp_path)
    assert np.array_equal(pixels(decode_image(path)), pixels(reference()))


# --- 10. Extreme aspect ratios, through early and late fusion


def vilt_fusion() -> vlm.EarlyFusionModel:
    """fusion-tiny with ViLT's preprocessing (as `vlm vilt import` gives): sizes follow the image's shape."""
    return vlm.create_model("fusion-tiny", ["preprocess=vilt"]).eval()


@pytest.mark.parametrize("model_name", ["fusion-tiny", "fusion-tiny-vilt", "clip-tiny"])
def test_strips_run_through_every_family(tmp_path, model_name):
    model = vilt_fusion() if model_name == "fusion-tiny-vilt" else vlm.create_model(model_name).eval()
    transform = model_transform(model)
    strips = [decode_image(p) for p in write_strips(tmp_path).values()]
    batch = torch.stack([transform(s) for s in strips])
    with torch.no_grad():
        if isinstance(model, vlm.EarlyFusionModel):
            ids = vlm.get_tokenizer(model)(["a strip"] * len(strips))
            out = model.score(batch, ids)
        else:
            out = model.encode_image(batch)
    assert torch.isfinite(out).all()


def test_vilt_preprocessing_gives_each_side_at_least_one_patch_and_leaves_photos_alone(tmp_path):
    transform = model_transform(vilt_fusion())
    for strip in write_strips(tmp_path).values():
        assert min(transform.unpadded(decode_image(strip)).shape[1:]) >= 32
    assert tuple(transform.unpadded(reference((64, 48))).shape[1:]) == (32, 32)  # 4:3, as transformers sizes it


def test_the_rerankers_scores_cover_strips(tmp_path):
    """`vlm serve --rerank-checkpoint` scores stored images through this: a strip among them answered 500."""
    from vlm.index.encoder import Reranker

    strips = [decode_image(p) for p in write_strips(tmp_path).values()]
    scores = Reranker(vilt_fusion()).score("a strip", [reference(), *strips])
    assert scores.shape == (4,) and np.isfinite(scores).all()


def test_vlm_classify_with_an_early_fusion_model_classifies_strips(tmp_path, capsys):
    vilt_fusion().save(tmp_path / "fusion.pt")
    folder = tmp_path / "strips"
    write_strips(folder)
    out = tmp_path / "predictions.csv"
    assert main(["classify", str(folder), "--checkpoint", str(tmp_path / "fusion.pt"), "--labels", "cat,dog",
                 "--out", str(out), "--workers", "0", "--no-progress"]) == 0
    assert len(list(csv.DictReader(out.open()))) == 3
    assert "classified 3 images; skipped 0" in capsys.readouterr().err


def test_vlm_eval_retrieval_with_an_early_fusion_model_over_strips(tmp_path, capsys):
    vilt_fusion().save(tmp_path / "fusion.pt")
    files = write_strips(tmp_path)
    rows = "".join(f"{p.name},a strip of {name} pixels\n" for name, p in files.items())
    (tmp_path / "pairs.csv").write_text("image,caption\n" + rows)
    assert main(["eval", "retrieval", "--checkpoint", str(tmp_path / "fusion.pt"), "--data",
                 str(tmp_path / "pairs.csv"), "--workers", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "early" and result["images"] == 3 and result["fusion_passes"] == 9


def test_train_augmentation_takes_strips(tmp_path):
    for strip in write_strips(tmp_path).values():
        assert train_transform(32)(decode_image(strip)).shape == (3, 32, 32)


# --- 15. max_pixels, up and down


@pytest.fixture(scope="module")
def photo_108mp(tmp_path_factory) -> Image.Image:
    """A 12000 x 9000 camera-sized JPEG (108 MP, over Pillow's default 89,478,485); 1.3 MB on disk."""
    path = tmp_path_factory.mktemp("big") / "camera.jpg"
    Image.new("L", (12000, 9000), 128).save(path, quality=50)
    return path


def test_a_108mp_photo_is_refused_by_default_with_one_limit_and_how_to_raise_it(photo_108mp):
    with pytest.raises(BadImage) as refused:
        decode_image(photo_108mp, min_size=224)
    message = str(refused.value)
    assert re.findall(r"over the limit of ([\d,]+)", message) == ["89,478,485"]
    assert "12000x9000" in message and "--max-pixels" in message and "data.max_pixels" in message
    assert "178,956,970" not in message and "178956970" not in message  # Pillow's own 2x limit is not stated


def test_raising_max_pixels_lets_a_108mp_photo_through_pillow_too(photo_108mp):
    set_max_pixels(120_000_000)
    assert Image.MAX_IMAGE_PIXELS == 120_000_000  # Pillow's own bomb check follows
    assert decode_image(photo_108mp).size == (12000, 9000)  # a full decode, no draft
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert Image.open(photo_108mp).size == (12000, 9000)


def test_a_per_call_limit_above_pillows_is_honoured(photo_108mp):
    assert decode_image(photo_108mp, max_pixels=200_000_000, min_size=224).size == (1500, 1125)


def test_lowering_max_pixels_refuses_in_pillow_as_well(tmp_path):
    Image.new("RGB", (100, 100)).save(tmp_path / "small.png")
    set_max_pixels(1000)
    with pytest.raises(BadImage, match=r"small\.png: 10,000 pixels is over the limit of 1,000 pixels \(.*--max-pix"):
        decode_image(tmp_path / "small.png")
    with pytest.raises(Image.DecompressionBombError):  # over twice the limit: Pillow's own refusal
        Image.open(tmp_path / "small.png")
    with pytest.raises(ValueError, match="max_pixels: expected a positive whole number"):
        set_max_pixels(0)


def test_max_pixels_on_the_command_line_goes_up_and_down_and_is_restored(photo_108mp, tmp_path, capsys):
    vlm.create_model("clip-tiny").save(tmp_path / "clip.pt")
    run = ["classify", str(photo_108mp), "--checkpoint", str(tmp_path / "clip.pt"), "--labels", "cat,dog",
           "--workers", "0", "--no-progress"]
    assert main(run) == 2  # every image bad: an error, as under any command's bad-file rule
    assert "1 of 1 samples are bad (too many pixels: 1)" in capsys.readouterr().err
    assert main([*run, "--max-pixels", "120000000"]) == 0
    assert "classified 1 images; skipped 0" in capsys.readouterr().err
    assert Image.MAX_IMAGE_PIXELS == PILLOW_DEFAULT  # the command's setting ends with it
    Image.new("RGB", (100, 100)).save(tmp_path / "small.png")
    assert main([*run[:1], str(tmp_path / "small.png"), *run[2:], "--max-pixels", "1000"]) == 2
    assert "1 of 1 samples are bad (too many pixels: 1)" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["data", "inspect", "x"], ["data", "shard", "x", "--out", "y"],
                                     ["eval", "zeroshot", "--checkpoint", "c", "--data", "d"],
                                     ["eval", "retrieval", "--checkpoint", "c", "--data", "d"],
                                     ["index", "build", "--checkpoint", "c", "--data", "d", "--out", "o"],
                                     ["classify", "x", "--checkpoint", "c", "--labels", "a"]])
def test_every_command_that_decodes_images_takes_max_pixels(command):
    from vlm.cli import build_parser

    assert build_parser().parse_args([*command, "--max-pixels", "120000000"]).max_pixels == 120_000_000


def test_vlm_serve_takes_max_pixels_as_its_upload_limit():
    from vlm.cli import build_parser

    args = build_parser().parse_args(["serve", "--checkpoint", "c", "--index", "i", "--max-pixels", "120000000"])
    assert args.max_image_pixels == 120_000_000


def test_the_recipe_key_data_max_pixels_reaches_the_decoder(photo_108mp, tmp_path):
    (tmp_path / "pairs.csv").write_text(f"image,caption\n{photo_108mp},a camera photo\n")
    refused = open_source(tmp_path / "pairs.csv", max_bad_fraction=1.0, **DataConfig().train_source_options())
    assert refused[0].image is None and refused[0].meta["skip_reason"] == "too many pixels"
    options = DataConfig(max_pixels=120_000_000).train_source_options()
    assert options["max_pixels"] == 120_000_000 == DataConfig(max_pixels=120_000_000).val_source_options()["max_pixels"]
    dataset = open_source(tmp_path / "pairs.csv", transform=eval_transform(32), **options)
    assert dataset[0].image.shape == (3, 32, 32)
