"""Scoring a classifier on a split, and fine-tuned classifier files.

A classifier file (``classifier.pt``) holds only tensors, strings and
numbers, so it loads with ``torch.load(weights_only=True)``. Its
``state_dict`` is the :class:`~selfsup.ssl.classifier.Classifier`'s
(``backbone.trunk.*`` with the library's own names, ``head.*``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from selfsup.atomic import write_atomic
from selfsup.errors import CheckpointError
from selfsup.pipelines.checkpoint.untrusted import load_tensor_file
from selfsup.pipelines.checkpoint.weights import CLASSIFIER_FORMAT, BackboneInfo, weights_header
from selfsup.pipelines.data.normalize import Normalize


@dataclass
class SplitScores:
    """Accuracy and loss on one split; per-class accuracy and the confusion matrix."""

    accuracy: float  # top-1, %
    loss: float  # mean cross-entropy (no smoothing)
    per_class: list[float]  # top-1 per true class, %
    confusion: list[list[int]]  # [true class][predicted class] counts


@torch.no_grad()
def predict(
    classifier: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    mean: list[float],
    std: list[float],
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(N, classes)`` (float32, CPU) and labels of every batch, in eval mode.

    The classifier is left in eval mode; the caller puts it back in training.
    """
    normalize = Normalize(mean, std).to(device)
    classifier.eval()
    amp = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    logits, labels = [], []
    for images, batch_labels in batches:
        with amp:
            logits.append(classifier(normalize(images.to(device))).float().cpu())
        labels.append(batch_labels)
    return torch.cat(logits), torch.cat(labels)


def score(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> SplitScores:
    predicted = logits.argmax(dim=1)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    per_true = confusion.sum(dim=1).clamp_min(1)
    return SplitScores(
        accuracy=100.0 * (predicted == labels).float().mean().item(),
        loss=F.cross_entropy(logits, labels).item(),
        per_class=(100.0 * confusion.diagonal() / per_true).tolist(),
        confusion=confusion.tolist(),
    )


def save_classifier(
    path: Path,
    state_dict: dict[str, torch.Tensor],
    info: BackboneInfo,
    classes: list[str],
    hidden: list[int],
    extra: dict[str, Any],
) -> None:
    """Write a weights-only classifier file atomically."""
    payload = {
        "format": CLASSIFIER_FORMAT,
        **weights_header(info),
        "classes": list(classes),
        "head_hidden": list(hidden),
        **extra,
        "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()},
    }
    write_atomic(path, lambda fh: torch.save(payload, fh))


def load_classifier_state(path: Path) -> dict[str, Any]:
    """The payload of a classifier file (weights-only; a file carrying code is refused)."""
    payload = load_tensor_file(path, "classifier file")
    if not isinstance(payload, dict) or payload.get("format") != CLASSIFIER_FORMAT:
        raise CheckpointError(
            f"{path} is not a selfsup classifier file (expected format {CLASSIFIER_FORMAT!r})"
        )
    return payload
