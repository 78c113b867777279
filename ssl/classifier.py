"""A backbone with a classification head, and the supervised objective fine-tuning trains.

:class:`Classifier` is what fine-tuning produces: a :class:`Backbone` (the
pretrained base) and a head, either one linear layer or an MLP of hidden
layers (ReLU, dropout), the classic transfer head. With :meth:`freeze_base`
the base's parameters stop taking gradients *and* its normalisation layers
stay in eval mode, so BatchNorm running statistics are frozen too (calling
``train()`` on the classifier does not unfreeze them).

:class:`SupervisedObjective` wraps a classifier into the shape the trainer
runs, ``forward(batch) -> StepOutput``, with cross-entropy (optionally
label-smoothed, or against soft targets when mixup/cutmix made them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.arguments import ArgumentError
from selfsup.ssl.backbones import Backbone
from selfsup.ssl.distill import FrozenTeacher, TeacherHolder, logit_distillation_loss
from selfsup.ssl.method import BuildContext, MethodConfig, check_positive, register_method
from selfsup.ssl.outputs import StepOutput

MAX_HIDDEN_LAYERS = 4  # deeper heads over-fit small transfer sets; refused with a clear error


class Labelled(NamedTuple):
    """One micro-batch of a supervised step: augmented views and their labels."""

    views: list[torch.Tensor]
    labels: torch.Tensor  # int64 (B,), or float (B, classes) soft targets (mixup)


def check_head(hidden: Sequence[int], dropout: float) -> None:
    """At most MAX_HIDDEN_LAYERS positive widths, and a dropout share in [0, 1)."""
    if len(hidden) > MAX_HIDDEN_LAYERS or any(width <= 0 for width in hidden):
        raise ArgumentError(
            f"head_hidden is {list(hidden)}; it takes at most {MAX_HIDDEN_LAYERS} positive widths "
            "(the classic transfer head: [256, 128])",
            "head_hidden",
        )
    if not 0.0 <= dropout < 1.0:
        raise ArgumentError(f"head_dropout must be in [0, 1), got {dropout}", "head_dropout")


def check_label_smoothing(value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ArgumentError(f"label_smoothing must be in [0, 1), got {value}", "label_smoothing")


def classification_head(
    in_features: int, num_classes: int, hidden: Sequence[int] = (), dropout: float = 0.0
) -> nn.Sequential:
    """``Linear`` alone, or ``[Linear, ReLU, Dropout] x len(hidden)`` then ``Linear``."""
    check_head(hidden, dropout)
    layers: list[nn.Module] = []
    width = in_features
    for units in hidden:
        layers += [nn.Linear(width, units), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = units
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class Classifier(nn.Module):
    """``backbone -> head``: images ``(B, 3, H, W)`` to logits ``(B, classes)``."""

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        hidden: Sequence[int] = (),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = classification_head(backbone.feature_dim, num_classes, hidden, dropout)
        self.base_frozen = False

    def freeze_base(self, frozen: bool = True) -> Classifier:
        """Stop (or restart) training the backbone: its gradients and its BatchNorm statistics."""
        self.base_frozen = frozen
        self.backbone.requires_grad_(not frozen)
        return self.train(self.training)

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.base_frozen:
            self.backbone.eval()  # frozen running statistics: BatchNorm normalises, never updates
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


@dataclass
class SupervisedConfig(MethodConfig):
    """``method.name=supervised``: a classifier trained on labels (fine-tuning's objective)."""

    name: str = "supervised"
    num_classes: int = 10
    head_hidden: list[int] = field(default_factory=list)  # [] linear head; [256, 128] MLP
    head_dropout: float = 0.0
    label_smoothing: float = 0.0

    def check(self, context: BuildContext) -> None:
        check_positive(self.num_classes, "num_classes")
        check_head(self.head_hidden, self.head_dropout)
        check_label_smoothing(self.label_smoothing)


def check_logit_distillation(temperature: float, alpha: float) -> None:
    check_positive(temperature, "distill_temperature")
    if not 0.0 <= alpha <= 1.0:
        raise ArgumentError(
            f"distill_alpha must be between 0 and 1 (the soft-target loss's share), got {alpha}",
            "distill_alpha",
        )


@register_method("supervised", SupervisedConfig, uses_labels=True)
class SupervisedObjective(TeacherHolder):
    """Cross-entropy of a :class:`Classifier` on one labelled view: the fine-tuning step.

    With a ``teacher`` (a frozen classifier), Hinton et al.'s distillation:
    ``(1 - alpha) * label loss + alpha * T^2 * KL(teacher || student)`` at
    temperature ``T``, the teacher seeing the same (augmented, mixed) images.
    """

    def __init__(
        self,
        classifier: Classifier,
        label_smoothing: float = 0.0,
        teacher: FrozenTeacher | None = None,
        distill_temperature: float = 4.0,
        distill_alpha: float = 0.5,
    ) -> None:
        super().__init__()
        check_label_smoothing(label_smoothing)
        check_logit_distillation(distill_temperature, distill_alpha)
        self.classifier = classifier
        self.label_smoothing = label_smoothing
        self.hold_teacher(teacher)
        self.distill_temperature, self.distill_alpha = distill_temperature, distill_alpha

    @classmethod
    def from_config(
        cls, backbone: Backbone, config: SupervisedConfig, context: BuildContext
    ) -> SupervisedObjective:
        classifier = Classifier(
            backbone, config.num_classes, config.head_hidden, config.head_dropout
        )
        return cls(classifier, config.label_smoothing)

    @property
    def backbone(self) -> Backbone:
        return self.classifier.backbone

    def forward(self, batch: Labelled) -> StepOutput:
        logits = self.classifier(batch.views[0]).float()
        labels = batch.labels
        if labels.is_floating_point():  # soft targets (mixup/cutmix): smoothing is in them
            loss = torch.sum(-labels * F.log_softmax(logits, dim=-1), dim=-1).mean()
            hard = labels.argmax(dim=-1)
        else:
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
            hard = labels
        accuracy = (logits.detach().argmax(dim=-1) == hard).float().mean() * 100.0
        if self.teacher is None:
            return StepOutput(loss=loss, metrics={"accuracy": accuracy})
        soft = logit_distillation_loss(
            logits, self.teacher(batch.views[0]), self.distill_temperature
        )
        # One new tensor (as in Distill.forward): no alias of ``loss`` under torch.compile.
        total = torch.stack([(1.0 - self.distill_alpha) * loss, self.distill_alpha * soft]).sum()
        metrics = {"accuracy": accuracy, "loss/label": loss.detach(), "loss/distill": soft.detach()}
        return StepOutput(loss=total, metrics=metrics)
