"""The sweep's VQA measurement: a probe, a fresh VQA head trained on the frozen pre-trained model's features.

A probe asks what pre-training put into the model, which is the sweep's question; a VQA fine-tune would add
its own compute and learning on top (the quickstart fine-tunes end to end, 1,000 steps, ~3.5 CPU minutes per
family: too much for every grid point). The features are computed once per point (late fusion: the image and
question embeddings; early fusion: the pooled joint pass over image and question, as the model's own VQA
head sees them), so training the head costs seconds. The head is the model's own (`vqa_answers` set), so
`vlm.eval`'s VQA evaluation, blind baselines included, runs on the probed model unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from data_pipelines import answer_targets, build_answer_vocab
from vlm.eval.data import open_eval_source
from vlm.eval.pair_scoring import encode_images
from vlm.losses import vqa_loss
from vlm.models.registry import build_model
from vlm.sweep.config import ProbeConfig
from vlm.tokenizer import get_tokenizer, padding_mask


@dataclass
class ProbeData:
    images: torch.Tensor  # (N_images, 3, H, W): each distinct image once
    image_index: torch.Tensor  # (N_questions,): the image of each question
    questions: list[str]
    answers: list[list[str]]
    vocabulary: tuple[str, ...]  # the most frequent answers of the whole training split


def load_probe_data(data_dir: str | Path, transform, config: ProbeConfig) -> ProbeData:
    """The first `train_questions` training questions, each distinct image decoded once."""
    dataset = open_eval_source(data_dir, "vqa", "train", transform)
    vocabulary = tuple(build_answer_vocab(dataset, max_answers=config.max_answers))
    index: dict[str, int] = {}
    images, image_index, questions, answers = [], [], [], []
    for i, record in enumerate(dataset.records[: config.train_questions]):
        if record.image_id not in index:
            sample = dataset[i]
            if sample.image is None:
                continue  # a bad image: skipped, as everywhere
            index[record.image_id] = len(images)
            images.append(sample.image)
        image_index.append(index[record.image_id])
        questions.append(record.question)
        answers.append(record.answers)
    return ProbeData(torch.stack(images), torch.tensor(image_index), questions, answers, vocabulary)


@torch.no_grad()
def head_inputs(model: nn.Module, data: ProbeData, batch_size: int = 256) -> tuple[torch.Tensor, ...]:
    """What the model's VQA head takes for every probe question: (image emb, question emb) or (pooled,)."""
    ids = get_tokenizer(model)(data.questions)
    if model.config.arch == "dual_encoder":
        image_features = encode_images(model, data.images)[data.image_index]
        text_features = torch.cat([model.encode_text(ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)])
        return image_features, text_features
    tokens = torch.cat([model.embed_image(data.images[i : i + batch_size])
                        for i in range(0, len(data.images), batch_size)])
    pooled = []
    for i in range(0, len(ids), batch_size):
        rows, batch_ids = data.image_index[i : i + batch_size], ids[i : i + batch_size]
        pooled.append(model.fuse(tokens[rows], batch_ids, padding_mask(batch_ids)).pooled)
    return (torch.cat(pooled),)


def train_probe(model: nn.Module, data: ProbeData, config: ProbeConfig, seed: int = 0) -> nn.Module:
    """`model` with a VQA head over `data.vocabulary`, trained on its frozen features; returned in eval mode."""
    probed = build_model(dataclasses.replace(model.config, vqa_answers=data.vocabulary))
    probed.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("vqa_head.")},
                           strict=False)
    probed.eval()
    inputs = head_inputs(probed, data)
    targets = answer_targets(data.answers, list(data.vocabulary))
    head = probed.vqa_head
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    head.train()
    with torch.enable_grad():  # the sweep evaluates under no_grad; the head alone learns here
        for _ in range(config.steps):
            rows = torch.randint(len(targets), (min(config.batch_size, len(targets)),), generator=generator)
            loss = vqa_loss(head(*(x[rows] for x in inputs)), targets[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return probed.eval()


