"""The momentum target encoder: the update by hand, the schedule, no gradient ever."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from selfsup.ssl.momentum import MomentumEncoder, momentum_at


def test_schedule_is_linear_from_start_to_end():
    assert momentum_at(0, 100) == 0.996
    assert momentum_at(50, 100) == pytest.approx(0.998)
    assert momentum_at(100, 100) == 1.0
    assert momentum_at(150, 100) == 1.0  # past the end: stays


def test_two_updates_by_hand():
    student = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        student.weight.copy_(torch.tensor([[1.0, 2.0]]))
    target = MomentumEncoder(student)
    with torch.no_grad():
        student.weight.copy_(torch.tensor([[3.0, -2.0]]))
    target.update(student, 0.5)  # 0.5 * (1, 2) + 0.5 * (3, -2) = (2, 0)
    assert torch.equal(target.encoder.weight, torch.tensor([[2.0, 0.0]]))
    with torch.no_grad():
        student.weight.copy_(torch.tensor([[6.0, 4.0]]))
    target.update(student, 0.75)  # 0.75 * (2, 0) + 0.25 * (6, 4) = (3, 1)
    assert torch.equal(target.encoder.weight, torch.tensor([[3.0, 1.0]]))


def test_buffers_follow_the_student_and_no_gradient_reaches_the_target():
    student = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    target = MomentumEncoder(student)
    student.train()(torch.randn(8, 4))  # moves the student's running statistics
    target.update(student, 0.9)
    assert torch.equal(target.encoder[1].running_mean, student[1].running_mean)
    x = torch.randn(8, 4, requires_grad=True)
    out = target(x)
    assert not out.requires_grad
    assert all(not p.requires_grad for p in target.parameters())
    student(x).sum().backward()
    assert all(p.grad is None for p in target.parameters())
