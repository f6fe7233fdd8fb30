"""An imported (tiny, random) Hugging Face ViLT through every vlm command: eval, compare, re-rank, train."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import vlm
from data_pipelines.shapes import generate_shapes_world
from vlm.cli import main
from vlm.index.encoder import load_reranker

transformers = pytest.importorskip("transformers")
from test_vilt_interchange import save_tiny_vilt  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A shapes world at 48 px, and `vlm vilt import` of a retrieval and a VQA ViLT."""
    root = tmp_path_factory.mktemp("vilt")
    generate_shapes_world(root / "shapes", train=24, val=8, test=0, heldout=0, image_size=48,
                          classify_per_class=1)
    for name, cls in (("retrieval", "ViltForImageAndTextRetrieval"), ("vqa", "ViltForQuestionAnswering")):
        folder = save_tiny_vilt(root / f"hf-{name}", cls)
        assert main(["vilt", "import", str(folder), str(root / f"{name}.pt")]) == 0
    torch.manual_seed(0)
    vlm.create_model("clip-tiny").save(root / "clip" / "checkpoint.pt")
    return {"root": root, "data": str(root / "shapes")}


@pytest.mark.parametrize("task,checkpoint,key", [("retrieval", "retrieval.pt", "image_retrieval_recall@1"),
                                                 ("compositional", "retrieval.pt", "compositional_accuracy"),
                                                 ("vqa", "vqa.pt", "vqa_accuracy")])
def test_vlm_eval_runs_an_imported_vilt(world, tmp_path, task, checkpoint, key):
    out = tmp_path / "result.json"
    assert main(["eval", task, "--checkpoint", str(world["root"] / checkpoint), "--data", world["data"],
                 "--json", str(out)]) == 0
    assert key in json.loads(out.read_text())


def test_vlm_compare_takes_an_imported_vilt_as_the_early_model(world, tmp_path):
    out = tmp_path / "report"
    assert main(["compare", "--late", str(world["root"] / "clip"), "--early", str(world["root"] / "retrieval.pt"),
                 "--data", world["data"], "--out", str(out), "--k", "2", "--latency-queries", "2"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["retrieval"]["early"]["fusion_passes"] > 0


def test_the_api_reranker_scores_as_transformers_does_on_processor_inputs(world):
    """The service's re-ranker on PIL images equals ViltForImageAndTextRetrieval on ViltProcessor's output."""
    reranker = load_reranker(world["root"] / "retrieval.pt")
    folder = world["root"] / "hf-retrieval"
    images = [Image.new("RGB", (70, 40), "red"), Image.new("RGB", (40, 90), "blue")]
    images[0].paste(Image.new("RGB", (20, 20), "green"), (10, 10))
    processor = transformers.ViltProcessor.from_pretrained(str(folder))
    hf = transformers.ViltForImageAndTextRetrieval.from_pretrained(str(folder)).eval()
    inputs = processor(images=images, text=["a red circle"] * 2, padding="max_length", max_length=16,
                       return_tensors="pt")
    with torch.no_grad():
        expected = hf(**inputs).logits[:, 0]
    assert reranker.score("a red circle", images) == pytest.approx(expected.numpy(), abs=1e-4)


@pytest.mark.parametrize("objective,checkpoint", [("fusion", "retrieval.pt"), ("vqa", "vqa.pt")])
def test_vlm_train_fine_tunes_from_an_imported_vilt(world, tmp_path, objective, checkpoint):
    base = world["root"] / checkpoint
    settings = [f"model={base}", f"objective={objective}", f"data.train={world['data']}", "steps=2", "batch_size=4",
                "data.num_workers=0", "mlm_weight=0", "eval_every=2", "data.val_samples=4", "warmup_steps=1"]
    argv = ["train", "--config", "configs/train/fusion.yaml", "--out", str(tmp_path / "run")]
    for setting in settings:
        argv += ["--set", setting]
    assert main(argv) == 0
    tuned = vlm.load(tmp_path / "run")
    assert tuned.config.layout == "vilt" and tuned.config.vocab == vlm.load(base).config.vocab
    moved = [k for k, v in vlm.load(base).state_dict().items() if not torch.equal(v, tuned.state_dict()[k])]
    assert moved  # the pretrained weights were the start and training changed them


def test_vlm_models_pretrained_lists_both_families_with_commands_vlm_accepts(capsys):
    import shlex

    from vlm.cli import build_parser
    from vlm.models.pretrained import PRETRAINED

    assert main(["models", "--pretrained"]) == 0
    out = capsys.readouterr().out
    assert "dandelin/vilt-b32-finetuned-vqa" in out and "laion2b_s34b_b79k" in out and "71.26" in out
    for entry in PRETRAINED:
        assert entry.command in out
        args = build_parser().parse_args(shlex.split(entry.command)[1:])  # a command the user can paste
        assert args.func.__name__ == "cmd_import"


def test_vlm_info_on_an_imported_vilt_abbreviates_its_vocabulary(world, capsys):
    assert main(["info", str(world["root"] / "retrieval.pt")]) == 0
    out = capsys.readouterr().out
    assert '"vocab": "<41 WordPiece tokens>"' in out and '"layout": "vilt"' in out


def test_retrieval_with_a_vilt_that_has_no_matching_head_is_one_line_naming_the_missing_head(world, capsys):
    assert main(["eval", "retrieval", "--checkpoint", str(world["root"] / "vqa.pt"), "--data", world["data"]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no image-text matching head" in err
