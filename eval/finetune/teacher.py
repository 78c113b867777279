"""The teacher classifier of a distilled fine-tune (``finetune.teacher``): found, checked, frozen.

``finetune.teacher`` names a fine-tuned classifier file (``classifier.pt``,
written by ``selfsup finetune``) or a folder holding one per dataset
(``<dataset>/<recipe>/pretrained/classifier.pt``: a run directory's
``finetune/`` folder, or the run directory itself). Files are read
weights-only: one that carries code is refused, never run.
"""

from __future__ import annotations

from pathlib import Path

from selfsup.errors import CheckpointError, ConfigError, SelfsupError, existing_path
from selfsup.eval.finetune.classify import load_classifier_state
from selfsup.pipelines.checkpoint.weights import BackboneInfo, info_from_header
from selfsup.pipelines.train.teacher import weights_sha256
from selfsup.ssl.classifier import Classifier
from selfsup.ssl.distill import FrozenTeacher

CLASSIFIER_FILE = "classifier.pt"


def find_teacher_classifier(teacher: str, dataset: str) -> Path:
    """The classifier file ``teacher`` names for ``dataset`` (one-line errors otherwise)."""
    path = existing_path(
        teacher,
        "finetune.teacher",
        "a fine-tuned classifier.pt, or the run directory whose `selfsup finetune` wrote one",
    )
    if path.is_file():
        return path
    found = sorted(path.glob(f"**/{dataset}/*/pretrained/{CLASSIFIER_FILE}"))
    if len(found) != 1:
        listed = ", ".join(str(p) for p in found[:4]) or "none"
        raise ConfigError(
            f"config key 'finetune.teacher' is the folder {path}, which holds "
            f"{len(found)} fine-tuned {dataset} classifiers ({listed}); pass one classifier.pt"
        )
    return found[0]


def load_teacher_classifier(
    teacher: str, dataset: str, classes: list[str], student: BackboneInfo
) -> FrozenTeacher:
    """The frozen teacher classifier for ``dataset``, fed the student's views resized."""
    path = find_teacher_classifier(teacher, dataset)
    try:
        payload = load_classifier_state(path)
        info = info_from_header(payload, str(path), None)
        classifier = Classifier(info.build(), len(payload["classes"]), list(payload["head_hidden"]))
        classifier.load_state_dict(payload["state_dict"])
    except SelfsupError as exc:
        raise type(exc)(f"finetune.teacher={path}: {exc}") from None
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(
            f"finetune.teacher={path} is not a complete classifier file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}); pass a classifier.pt of `selfsup finetune`"
        ) from None
    if list(payload["classes"]) != list(classes):
        raise ConfigError(
            f"finetune.teacher={path} classifies {len(payload['classes'])} classes "
            f"({', '.join(payload['classes'][:3])}, ...), not {dataset}'s {len(classes)} "
            f"({', '.join(classes[:3])}, ...); pass a teacher fine-tuned on {dataset}"
        )
    return FrozenTeacher(
        classifier,
        len(classes),
        info.image_size,
        (student.mean, student.std),
        (info.mean, info.std),
        origin=str(path),
        sha256=weights_sha256(classifier.state_dict()),
    )
