"""Acceptance: a text search returns the generated image whose caption was queried in the top 5.

With the quickstart's model (runs/quickstart/clip-small, trained by `vlm quickstart`) on the shapes world's
test split when both are there; otherwise with a clip-tiny trained here through `vlm.train.train` on drawn
images (about 10 s each on 2 cores).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from test_serve_api import make_collection

from data_pipelines.sources import open_source
from data_pipelines.transforms import eval_transform
from vlm.cli import main
from vlm.serve.process import ServerProcess
from vlm.train import DataConfig, TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
QUICKSTART_MODEL = REPO / "runs" / "quickstart" / "clip-small" / "checkpoint.pt"
SHAPES = REPO / "data" / "shapes"


def recall_at_5(server: ServerProcess, queries: dict[int, str]) -> float:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        hits = [item_id in [r["id"] for r in client.post("/v1/search", json={"text": caption, "k": 5}).json()[
            "results"]] for item_id, caption in queries.items()]
    return sum(hits) / len(hits)


@pytest.mark.skipif(not (QUICKSTART_MODEL.is_file() and (SHAPES / "pairs_test.csv").is_file()),
                    reason="run `vlm quickstart` first (runs/quickstart/clip-small and data/shapes)")
def test_quickstart_model_finds_the_queried_image_in_top_5(tmp_path):
    index = tmp_path / "index"
    assert main(["index", "build", "--checkpoint", str(QUICKSTART_MODEL), "--data", str(SHAPES), "--split", "test",
                 "--out", str(index)]) == 0
    with ServerProcess(QUICKSTART_MODEL, index, log_path=tmp_path / "server.log") as server:
        with httpx.Client(base_url=server.url) as client:
            items = [client.get(f"/v1/items/{i}").json() for i in range(1, 101)]
        recall = recall_at_5(server, {it["id"]: it["caption"] for it in items})
    print(f"quickstart clip-small, shapes test split: text->image recall@5 over 100 captions = {recall:.2f}")
    assert recall >= 0.9


def test_trained_tiny_model_finds_the_queried_image_in_top_5(tmp_path):
    collection = make_collection(tmp_path / "collection")
    pairs = collection["root"] / "pairs.csv"
    recipe = TrainConfig(model="clip-tiny", objective="clip", steps=100, batch_size=12, lr=3e-3, warmup_steps=10,
                         save_every=1000, eval_every=1000, log_every=1000,
                         data=DataConfig(train=str(pairs), val=str(tmp_path / "no-validation"), num_workers=0))
    checkpoint = train(recipe, tmp_path / "run", train_dataset=open_source(pairs, transform=eval_transform(32)))
    index = tmp_path / "index"
    assert main(["index", "build", "--checkpoint", str(checkpoint), "--data", str(pairs), "--out", str(index)]) == 0
    with ServerProcess(checkpoint, index, log_path=tmp_path / "server.log") as server:
        queries = {i + 1: caption for i, caption in enumerate(collection["captions"])}  # ids follow pairs.csv
        assert recall_at_5(server, queries) == 1.0
