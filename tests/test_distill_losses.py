"""Distillation losses (issue 26): each is zero when the student equals the teacher, and its gradient moves the
student towards the teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlm.losses import feature_mse, ranking_kl, similarity_kl


def test_similarity_kl_is_zero_at_the_teacher_and_pulls_towards_its_best_match():
    teacher = torch.randn(6, 6) * 3
    assert similarity_kl(teacher.clone(), teacher).abs() < 1e-6
    student = torch.zeros(6, 6, requires_grad=True)  # uniform: no opinion yet
    similarity_kl(student, teacher).backward()
    # The teacher's favourite text of each image must get a negative gradient (the step raises it), in both
    # directions: rows (image->text) and columns (text->image) are both distilled.
    rows = teacher.argmax(1)
    assert (student.grad[torch.arange(6), rows] < 0).all()
    assert (student.grad[teacher.argmin(1), torch.arange(6)] > 0).sum() >= 1  # disliked pairs are pushed down
    assert student.grad.sum().abs() < 1e-5  # a softmax ignores a common shift


def test_similarity_kl_is_both_directions():
    teacher = torch.randn(4, 5)
    student = torch.randn(4, 5)
    rows = F.kl_div(student.log_softmax(1), teacher.log_softmax(1), log_target=True, reduction="batchmean")
    cols = F.kl_div(student.T.log_softmax(1), teacher.T.log_softmax(1), log_target=True, reduction="batchmean")
    torch.testing.assert_close(similarity_kl(student, teacher), (rows + cols) / 2)


def test_feature_mse_is_zero_at_the_teacher_and_its_gradient_points_at_the_teacher():
    teacher = F.normalize(torch.randn(5, 8), dim=-1)
    assert feature_mse(teacher.clone(), teacher) == 0
    student = torch.zeros(5, 8, requires_grad=True)
    feature_mse(student, teacher).backward()
    assert torch.allclose(student.grad, -2 * teacher / 5)  # a step of -grad moves the student to the teacher


def test_feature_mse_learns_a_projection_between_widths():
    teacher = F.normalize(torch.randn(32, 6), dim=-1)
    mixing = torch.randn(6, 4)
    student = teacher @ mixing  # (32, 4): a narrower student that holds most of what the teacher has
    projection = nn.Linear(4, 6, bias=False)
    optimizer = torch.optim.Adam(projection.parameters(), lr=0.1)
    first = feature_mse(student, teacher, projection).item()
    for _ in range(100):
        optimizer.zero_grad()
        loss = feature_mse(student, teacher, projection)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 * first  # 4 dims cannot hold 6 exactly; the projection finds most of it


def test_ranking_kl_is_zero_at_the_teachers_ranking_and_ignores_its_scale():
    teacher = torch.tensor([[4.0, 1.0, -2.0, 0.5], [0.0, 3.0, 1.0, -1.0]])
    assert ranking_kl(teacher.clone(), teacher).abs() < 1e-6
    # only the ranking transfers: a student with the teacher's softmax at another temperature is at the minimum
    assert ranking_kl(teacher / 2, teacher, temperature=2.0).abs() < 1e-6
    student = torch.zeros(2, 4, requires_grad=True)
    ranking_kl(student, teacher).backward()
    assert (student.grad[torch.arange(2), teacher.argmax(1)] < 0).all()
    assert (student.grad[torch.arange(2), teacher.argmin(1)] > 0).all()
