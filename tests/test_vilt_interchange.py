"""Hugging Face ViLT interchange: vlm computes what transformers' own ViLT classes compute, and back.

The reference is transformers itself: tiny random ViltConfig models saved with `save_pretrained`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vlm
from vlm.models.vilt_compat import export_vilt, import_vilt

transformers = pytest.importorskip("transformers")

WORDS = ("a an the of is what color shape how many small large red blue green yellow purple orange circle square "
         "triangle star hexagon left right above below one two three four yes no").split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", "?", ","]
ANSWERS = ["yes", "no", "red", "blue", "2"]


def tiny_vilt_config(**overrides) -> transformers.ViltConfig:
    """Heads 4 at width 32: not width // 64, so a guessed head count would show."""
    settings = dict(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, image_size=64, patch_size=16, max_position_embeddings=16,
                    pad_token_id=0)
    return transformers.ViltConfig(**{**settings, **overrides})


def save_tiny_vilt(folder: Path, cls_name: str = "ViltForImageAndTextRetrieval", seed: int = 0) -> Path:
    """A transformers ViLT with every weight random (its own init leaves position and CLS at zero)."""
    torch.manual_seed(seed)
    extra = {"id2label": dict(enumerate(ANSWERS)), "label2id": {a: i for i, a in enumerate(ANSWERS)}} \
        if cls_name == "ViltForQuestionAnswering" else {}
    model = getattr(transformers, cls_name)(tiny_vilt_config(**extra))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    transformers.BertTokenizer(str(folder / "vocab.txt")).save_pretrained(str(folder))
    transformers.ViltImageProcessor(size={"shortest_edge": 64}).save_pretrained(str(folder))
    model.save_pretrained(str(folder))
    return folder


def text_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[2, 7, 20, 27, 3, 0, 0, 0], [2, 8, 9, 10, 17, 24, 30, 3]])
    return ids, ids != 0


def mixed_size_pixels() -> tuple[torch.Tensor, torch.Tensor]:
    """Two images of different sizes in one batch, padded as ViltImageProcessor pads (bottom/right, mask 0)."""
    torch.manual_seed(1)
    pixels = torch.zeros(2, 3, 96, 64)
    pixels[0] = torch.randn(3, 96, 64)  # larger than the 64 px grid: position embeddings stretched
    pixels[1, :, :32, :48] = torch.randn(3, 32, 48)  # smaller, padded
    mask = torch.zeros(2, 96, 64, dtype=torch.long)
    mask[0] = 1
    mask[1, :32, :48] = 1
    return pixels, mask


def reference(folder: Path, cls_name: str, pixels, pixel_mask=None) -> dict[str, torch.Tensor]:
    model = getattr(transformers, cls_name).from_pretrained(str(folder)).eval()
    ids, mask = text_inputs()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask.long(), pixel_values=pixels, pixel_mask=pixel_mask,
                    output_hidden_states=True)
        base = model.vilt if hasattr(model, "vilt") else model
        pooled = base(input_ids=ids, attention_mask=mask.long(), pixel_values=pixels,
                      pixel_mask=pixel_mask).pooler_output
    return {"logits": getattr(out, "logits", None), "pooled": pooled}


def ours(model: vlm.EarlyFusionModel, pixels, pixel_mask=None) -> dict[str, torch.Tensor]:
    ids, mask = text_inputs()
    with torch.no_grad():
        fused = model(pixels, ids, mask, pixel_mask)
        out = {"pooled": fused.pooled}
        if model.config.match_head == "rank":
            out["logits"] = model.score(pixels, ids, mask, pixel_mask)[:, None]
        elif model.config.vqa_answers:
            out["logits"] = model.vqa_logits(pixels, ids, mask, pixel_mask)
        elif model.config.mlm_head:
            out["logits"] = model.mlm_logits(fused.text_hidden)
    return out


CLASSES = ["ViltForImageAndTextRetrieval", "ViltForQuestionAnswering", "ViltForMaskedLM", "ViltModel"]


@pytest.mark.parametrize("cls_name", CLASSES)
def test_imported_vilt_equals_transformers_for_one_size_and_for_mixed_sizes(tmp_path, cls_name):
    folder = save_tiny_vilt(tmp_path / "hf", cls_name)
    model = import_vilt(folder)
    assert model.config.heads == 4 and model.config.layout == "vilt"
    same_size = torch.randn(2, 3, 64, 64)
    for pixels, pixel_mask in [(same_size, None), mixed_size_pixels()]:
        theirs, mine = reference(folder, cls_name, pixels, pixel_mask), ours(model, pixels, pixel_mask)
        for key, value in theirs.items():
            if value is not None:
                torch.testing.assert_close(mine[key], value, atol=1e-4, rtol=0, msg=f"{cls_name} {key}")
    if cls_name == "ViltForQuestionAnswering":
        assert model.config.vqa_answers == tuple(ANSWERS)


@pytest.mark.parametrize("cls_name", ["ViltForImageAndTextRetrieval", "ViltForQuestionAnswering", "ViltForMaskedLM"])
def test_export_then_import_round_trips_bit_exactly_and_transformers_loads_the_export(tmp_path, cls_name):
    folder = save_tiny_vilt(tmp_path / "hf", cls_name)
    model = import_vilt(folder)
    export_vilt(model, tmp_path / "exported")
    again = import_vilt(tmp_path / "exported")
    assert again.config.vqa_answers == model.config.vqa_answers and again.config.vocab == model.config.vocab
    before, after = model.state_dict(), again.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    cls = getattr(transformers, cls_name)
    theirs, exported = cls.from_pretrained(str(folder)).state_dict(), cls.from_pretrained(str(tmp_path / "exported"))
    assert all(torch.equal(exported.state_dict()[k], v) for k, v in theirs.items())
    pixels, pixel_mask = mixed_size_pixels()  # transformers shuffles patches at random: equal up to rounding
    original = reference(folder, cls_name, pixels, pixel_mask)
    for key, value in reference(tmp_path / "exported", cls_name, pixels, pixel_mask).items():
        torch.testing.assert_close(value, original[key], atol=1e-5, rtol=0)
    processor = transformers.ViltProcessor.from_pretrained(str(tmp_path / "exported"))
    assert processor.tokenizer("a red circle")["input_ids"] == vlm.get_tokenizer(again)("a red circle")[0, :5].tolist()


def test_imported_vilt_tokenizes_as_its_bert_tokenizer(tmp_path):
    folder = save_tiny_vilt(tmp_path / "hf")
    model = import_vilt(folder)
    theirs = transformers.AutoTokenizer.from_pretrained(str(folder))
    texts = ["What color is the Circle?", "two large blue squares, left of a star", "unknown words here",
             "a red circle above a blue square left of a green star below a yellow hexagon right of two stars"]
    expected = theirs(texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")["input_ids"]
    assert torch.equal(vlm.get_tokenizer(model)(texts), expected)


def test_imported_vilt_checkpoint_saves_and_loads_offline_with_its_tokenizer(tmp_path):
    model = import_vilt(save_tiny_vilt(tmp_path / "hf", "ViltForQuestionAnswering"))
    model.save(tmp_path / "vilt.pt")
    loaded = vlm.load(tmp_path / "vilt.pt")
    pixels = torch.randn(2, 3, 64, 64)
    assert torch.equal(ours(loaded, pixels)["logits"], ours(model, pixels)["logits"])
    assert vlm.get_tokenizer(loaded).vocab == tuple(VOCAB)


def test_export_of_a_model_without_the_vilt_layout_is_refused(tmp_path, fusion_tiny):
    with pytest.raises(ValueError, match="ViLT layout"):
        export_vilt(fusion_tiny, tmp_path / "out")


def test_vilt_preprocessing_feeds_the_model_what_transformers_processor_feeds_it(tmp_path):
    """Two PIL images of different shapes through ViltImageProcessor and through vlm's transform + model."""
    from PIL import Image

    from vlm.eval.pair_scoring import FusionPairScorer
    from vlm.models.preprocess import model_transform

    folder = save_tiny_vilt(tmp_path / "hf")
    model = import_vilt(folder)
    rng = torch.Generator().manual_seed(0)
    pil = [Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=rng, dtype=torch.uint8).numpy())
           for h, w in [(50, 120), (90, 70)]]
    processor = transformers.ViltImageProcessor(size={"shortest_edge": 64})
    theirs = processor(pil, return_tensors="pt")
    transform = model_transform(model)
    for image, pixels, mask in zip(pil, theirs["pixel_values"], theirs["pixel_mask"], strict=True):
        mine = transform.unpadded(image)
        h, w = mine.shape[1:]
        assert int(mask.sum()) == h * w
        torch.testing.assert_close(mine, pixels[:, :h, :w], atol=1e-5, rtol=0)
    batch = torch.stack([transform(image) for image in pil])  # NaN-padded canvases, one size for any image
    hf = transformers.ViltForImageAndTextRetrieval.from_pretrained(str(folder)).eval()
    ids, mask = text_inputs()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask.long(), **theirs).logits[:, 0]
        torch.testing.assert_close(model.score(batch, ids, mask), expected, atol=1e-4, rtol=0)
        scorer = FusionPairScorer(model, batch, ids, batch_size=2)
        torch.testing.assert_close(scorer.score_pairs(torch.arange(2), torch.arange(2)), expected, atol=1e-4, rtol=0)
