"""Distillation's losses against hand computations; the teacher stays frozen, out of the state."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.arguments import ArgumentError
from selfsup.ssl.backbones import Backbone, build_backbone
from selfsup.ssl.distill import (
    DistillConfig,
    EmbeddingQueue,
    FrozenTeacher,
    logit_distillation_loss,
    regression_loss,
    seed_loss,
)
from selfsup.ssl.method import BuildContext
from selfsup.ssl.methods import build_method

MEAN_STD = ([0.5] * 3, [0.25] * 3)


def hand_softmax(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def test_logit_distillation_loss_matches_a_hand_computation():
    student, teacher, t = [1.0, 2.0, 0.5], [0.0, 3.0, -1.0], 2.0
    p_teacher = hand_softmax([v / t for v in teacher])
    p_student = hand_softmax([v / t for v in student])
    expected = (
        t * t * sum(pt * math.log(pt / ps) for pt, ps in zip(p_teacher, p_student, strict=True))
    )
    got = logit_distillation_loss(torch.tensor([student]), torch.tensor([teacher]), t)
    assert got.item() == pytest.approx(expected, rel=1e-5)  # float32
    same = logit_distillation_loss(torch.tensor([teacher]), torch.tensor([teacher]), t)
    assert same.item() == pytest.approx(0.0, abs=1e-7)


def test_seed_loss_matches_a_hand_computation():
    p = torch.tensor([[3.0, 4.0]])  # normalised: [0.6, 0.8]
    t = torch.tensor([[1.0, 0.0]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    ts, tt = 0.5, 0.1
    student = [0.8 / ts, -0.6 / ts, 0.6 / ts]  # against the queue, then the own teacher embedding
    teacher = [0.0 / tt, -1.0 / tt, 1.0 / tt]
    q, r = hand_softmax(teacher), hand_softmax(student)
    expected = sum(a * math.log(a / b) for a, b in zip(q, r, strict=True))
    assert seed_loss(p, t, queue, ts, tt).item() == pytest.approx(expected, rel=1e-5)


def test_regression_losses_are_zero_when_aligned_and_two_when_opposite():
    a = torch.tensor([[1.0, 2.0, 2.0]])
    assert regression_loss("cosine", 3 * a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert regression_loss("cosine", -a, a).item() == pytest.approx(2.0)
    # smooth-L1 on unit vectors [1,2,2]/3 and its negative: |d| = 2/3, 4/3, 4/3 per coordinate.
    expected = 0.5 * (2 / 3) ** 2 + (4 / 3 - 0.5) * 2
    assert regression_loss("smooth_l1", -a, a).item() == pytest.approx(expected)


def test_queue_is_first_in_first_out_across_the_wrap():
    queue = EmbeddingQueue(size=5, dim=2)
    batches = [torch.full((3, 2), float(i)) for i in range(1, 4)]
    for batch in batches:
        queue.push(batch)
    # Slots 0-2 take batch 1; batch 2 fills 3, 4 and wraps to 0; batch 3 takes 1-3.
    assert queue.embeddings[:, 0].tolist() == [2.0, 3.0, 3.0, 3.0, 2.0]
    assert int(queue.pointer) == 4
    assert set(queue.state_dict()) == {"embeddings", "pointer"}  # both are checkpointed


def _student_and_teacher(**options):
    teacher_backbone = build_backbone("resnet18", image_size=48)
    teacher = FrozenTeacher(teacher_backbone, 512, 48, MEAN_STD, ([0.4] * 3, [0.2] * 3))
    config = DistillConfig(teacher="t.pt", **options)
    student = build_backbone("resnet18", cifar_stem=True, image_size=32)
    model = build_method(student, config, BuildContext(image_size=32, teacher=teacher))
    return model, teacher


def test_teacher_is_frozen_resized_and_never_part_of_the_students_state():
    model, teacher = _student_and_teacher(seed_weight=1.0, seed_queue_size=16, simclr_weight=0.5)
    teacher_tensors = {id(t) for t in teacher.state_dict(keep_vars=True).values()}
    assert not teacher_tensors & {id(t) for t in model.state_dict(keep_vars=True).values()}
    assert not teacher_tensors & {id(p) for p in model.parameters()}
    assert not any("teacher" in name for name in model.state_dict())
    model.train()
    assert not teacher.network.training  # BatchNorm statistics stay the teacher's
    before = {k: v.clone() for k, v in teacher.network.state_dict().items()}
    seen = []
    teacher.network.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    output = model([torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)])
    output.loss.backward()
    assert seen == [torch.Size([8, 3, 48, 48])]  # both views, resized to the teacher's size
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.network.state_dict().items())
    assert set(output.metrics) == {"loss/regression", "loss/seed", "loss/ntxent"}
    model.to(torch.float64)  # the teacher follows the student's dtype and device
    assert next(teacher.parameters()).dtype == torch.float64


def test_renormalisation_maps_the_students_normalisation_to_the_teachers():
    teacher = FrozenTeacher(build_backbone("resnet18", image_size=32), 512, 32, MEAN_STD,
                            ([0.4] * 3, [0.2] * 3))  # fmt: skip
    pixels = torch.rand(2, 3, 32, 32)
    as_student = (pixels - 0.5) / 0.25
    as_teacher = (pixels - 0.4) / 0.2
    assert torch.allclose(as_student * teacher.scale + teacher.shift, as_teacher, atol=1e-6)


@pytest.mark.parametrize(
    "options, argument",
    [
        ({"regression": "l2"}, "regression"),
        ({"regression": "none"}, "regression_weight"),
        ({"seed_weight": -1.0}, "seed_weight"),
        ({"seed_weight": 1.0, "seed_teacher_temperature": 0.0}, "seed_teacher_temperature"),
        ({"teacher": ""}, "teacher"),
    ],
)
def test_config_checks_name_the_option(options, argument):
    config = DistillConfig(**{"teacher": "t.pt", **options})
    with pytest.raises(ArgumentError) as caught:
        config.check(BuildContext(image_size=32))
    assert argument in caught.value.arguments


def test_loss_weights_combine_the_active_terms():
    model, _ = _student_and_teacher(regression_weight=2.0, seed_weight=0.5, seed_queue_size=16,
                                    simclr_weight=0.25)  # fmt: skip
    torch.manual_seed(0)
    output = model([torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)])
    m = output.metrics
    expected = 2.0 * m["loss/regression"] + 0.5 * m["loss/seed"] + 0.25 * m["loss/ntxent"]
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert F.normalize(model.queue.embeddings, dim=1).shape == (16, 512)


def _tiny_backbone(seed: int) -> Backbone:
    torch.manual_seed(seed)
    trunk = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten())  # fmt: skip
    return Backbone(trunk, feature_dim=8, name="tiny")


@pytest.mark.parametrize("options", [{}, {"seed_weight": 1.0, "seed_queue_size": 8}])
def test_compiled_distillation_trains_the_student_and_leaves_the_teacher(options):
    """Under torch.compile (inductor) the loss keeps its gradient, whatever the weights."""
    teacher = FrozenTeacher(_tiny_backbone(1), 8, 16, MEAN_STD, MEAN_STD)
    config = DistillConfig(teacher="t.pt", proj_hidden_dim=8, **options)
    model = build_method(_tiny_backbone(2), config, BuildContext(image_size=16, teacher=teacher))
    torch._dynamo.reset()
    output = torch.compile(model)([torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)])
    assert output.loss.requires_grad
    output.loss.backward()
    assert model.backbone.trunk[0].weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
