"""The training objectives against OpenCLIP's losses and hand-worked expectations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss as OpenClipLoss
from open_clip.loss import SigLipLoss as OpenSigLipLoss

import vlm
from data_pipelines import answer_targets
from vlm.losses import (
    ClipLoss,
    SigLipLoss,
    itm_loss,
    mask_tokens,
    masked_positions,
    mlm_loss,
    sample_hard_negatives,
    vqa_loss,
)
from vlm.tokenizer import EOT_ID, PAD_ID, SOT_ID, padding_mask


def random_features(n: int, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    return F.normalize(torch.randn(n, dim), dim=-1), F.normalize(torch.randn(n, dim), dim=-1)


@pytest.mark.parametrize("batch", [1, 8, 33])
def test_clip_loss_equals_openclip(batch):
    image, text = random_features(batch)
    scale = torch.tensor(1 / 0.07)
    torch.testing.assert_close(ClipLoss()(image, text, scale), OpenClipLoss()(image, text, scale))


def test_clip_loss_of_perfectly_separated_pairs_is_near_zero():
    features = torch.eye(8)
    assert ClipLoss()(features, features, torch.tensor(100.0)).item() < 1e-6
    # Identical features everywhere: every text is equally likely, the loss is log(batch).
    same = F.normalize(torch.ones(8, 4), dim=-1)
    assert ClipLoss()(same, same, torch.tensor(10.0)).item() == pytest.approx(math.log(8), rel=1e-5)


@pytest.mark.parametrize("batch, bias", [(1, -10.0), (8, -10.0), (33, 2.5)])
def test_siglip_loss_equals_openclip(batch, bias):
    image, text = random_features(batch)
    scale, logit_bias = torch.tensor(10.0), torch.tensor(bias)
    torch.testing.assert_close(SigLipLoss()(image, text, scale, logit_bias),
                               OpenSigLipLoss()(image, text, scale, logit_bias))


def test_siglip_loss_without_a_bias_says_which_config_field_to_set():
    image, text = random_features(4)
    with pytest.raises(ValueError, match="init_logit_bias"):
        SigLipLoss()(image, text, torch.tensor(10.0), None)


def test_hard_negative_sampler_never_draws_a_positive():
    n = 6
    # The sampler is pulled towards the positives as hard as possible: huge similarity on the
    # diagonal and on two duplicate captions (0 and 1 describe the same image).
    similarity = torch.randn(n, n) + 50 * torch.eye(n)
    same = torch.eye(n, dtype=torch.bool)
    same[0, 1] = same[1, 0] = True
    similarity[0, 1] = similarity[1, 0] = 50.0
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_hard_negatives(similarity, same, generator) for _ in range(500)])  # (500, n)
    assert not same[torch.arange(n), draws].any()
    # Every negative stays reachable: the draw is a sample, not an argmax.
    assert all(len(draws[:, row].unique()) == n - same[row].sum() for row in range(n))


def test_hard_negative_sampler_prefers_similar_negatives():
    similarity = torch.tensor([[0.0, 5.0, -5.0], [5.0, 0.0, -5.0], [-5.0, 5.0, 0.0]])
    same = torch.eye(3, dtype=torch.bool)
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_hard_negatives(similarity, same, generator) for _ in range(400)])
    assert (draws[:, 0] == 1).float().mean() > 0.95
    assert (draws[:, 2] == 1).float().mean() > 0.95


def test_hard_negative_sampler_with_only_positives_in_a_row_still_returns_an_index():
    same = torch.ones(2, 2, dtype=torch.bool)
    drawn = sample_hard_negatives(torch.zeros(2, 2), same, torch.Generator().manual_seed(0))
    assert drawn.shape == (2,) and ((drawn >= 0) & (drawn < 2)).all()


def test_itm_loss_classifies_one_positive_and_two_negatives_per_pair(fusion_tiny, images, captions):
    ids = vlm.get_tokenizer(fusion_tiny)(captions)
    loss, accuracy = itm_loss(fusion_tiny, images, ids, padding_mask(ids), torch.randn(4, 4),
                              generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and 0.0 <= accuracy.item() <= 1.0
    # An untrained two-way classifier is close to chance.
    assert loss.item() == pytest.approx(math.log(2), abs=0.2)


def test_mask_tokens_masks_about_15_percent_of_real_tokens_and_never_padding():
    n, length, real = 400, 32, 20
    ids = torch.randint(1, 40000, (n, length))
    ids[:, 0], ids[:, real - 1], ids[:, real:] = SOT_ID, EOT_ID, PAD_ID
    mask = padding_mask(ids)
    mask_id, vocab = 49408, 49409
    masked, labels = mask_tokens(ids, mask, mask_id, vocab, special_ids=(SOT_ID, EOT_ID),
                                 generator=torch.Generator().manual_seed(0))
    chosen = labels != -100
    candidates = mask.clone()
    candidates[:, [0, real - 1]] = False
    assert not chosen[~candidates].any(), "padding or a special token was chosen"
    assert torch.equal(masked[~chosen], ids[~chosen]), "a token that was not chosen changed"
    assert torch.equal(labels[chosen], ids[chosen]), "labels must be the original tokens"
    fraction = chosen.sum() / candidates.sum()
    assert 0.13 < fraction < 0.17
    # BERT's split of the chosen tokens: 80% [MASK], 10% random, 10% unchanged.
    to_mask = (masked[chosen] == mask_id).float().mean()
    kept = (masked[chosen] == ids[chosen]).float().mean()
    assert 0.75 < to_mask < 0.85 and 0.06 < kept < 0.14


def test_mlm_loss_with_nothing_masked_is_zero_and_still_differentiable():
    logits = torch.randn(2, 5, 11, requires_grad=True)
    loss = mlm_loss(logits, torch.full((2, 5), -100))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def test_mlm_loss_is_cross_entropy_on_masked_positions_only():
    logits = torch.randn(2, 5, 11)
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[1, 3] = 4, 7
    expected = F.cross_entropy(torch.stack([logits[0, 1], logits[1, 3]]), torch.tensor([4, 7]))
    torch.testing.assert_close(mlm_loss(logits, labels), expected)


def test_vqa_targets_are_0_3_6_9_and_1_for_0_to_4_or_more_matches():
    vocab = ["yes", "no", "2", "red", "blue"]
    answers = [["no"] * 6 + ["Yes"] * 1 + ["2", "two"] + ["the red."] * 1,  # VQAv2's official normalisation
               ["blue"] * 3 + ["red"] * 4 + ["unknown"] * 3,
               ["blue"] * 10]
    expected = torch.tensor([[0.3, 1.0, 0.6, 0.3, 0.0],
                             [0.0, 0.0, 0.0, 1.0, 0.9],
                             [0.0, 0.0, 0.0, 0.0, 1.0]])
    torch.testing.assert_close(answer_targets(answers, vocab), expected)


def test_vqa_loss_sums_over_answers_and_averages_over_questions():
    logits, targets = torch.randn(3, 5), torch.rand(3, 5)
    expected = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / 3
    torch.testing.assert_close(vqa_loss(logits, targets), expected)


def test_mlm_loss_over_the_masked_positions_alone_equals_the_loss_over_every_position():
    hidden = torch.randn(3, 6, 8, requires_grad=True)
    head = torch.nn.Linear(8, 50)
    labels = torch.full((3, 6), -100)
    labels[0, 1], labels[1, 4], labels[2, 0], labels[2, 5] = 3, 49, 0, 17
    full = mlm_loss(head(hidden), labels)
    (full_grad,) = torch.autograd.grad(full, hidden)
    rows, targets = masked_positions(hidden, labels)
    assert rows.shape == (4, 8) and targets.tolist() == [3, 49, 0, 17]
    picked = mlm_loss(head(rows), targets)
    (picked_grad,) = torch.autograd.grad(picked, hidden)
    torch.testing.assert_close(picked, full)
    torch.testing.assert_close(picked_grad, full_grad)
    nothing = mlm_loss(head(masked_positions(hidden, torch.full((3, 6), -100))[0]), torch.zeros(0, dtype=torch.long))
    assert nothing.item() == 0.0 and nothing.requires_grad
