"""The frozen teacher of a distillation run: loaded, fingerprinted, and checked on resume.

``method.teacher`` names a selfsup run directory, a ``checkpoints/step_*``
folder or a backbone ``.pt`` file (read weights-only: a file that carries
code is refused, never run). The run records the teacher's origin and the
SHA-256 of its weights in every checkpoint's ``meta.json`` and in
``summary.json``, and refuses to resume against a teacher whose weights differ.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import torch

from selfsup.errors import CheckpointError, ConfigError, SelfsupError, existing_path
from selfsup.pipelines.checkpoint.weights import BackboneInfo, load_backbone
from selfsup.pipelines.config import RunConfig
from selfsup.ssl.backbones import Backbone, default_patch_size
from selfsup.ssl.distill import DistillConfig, FrozenTeacher

TEACHER_META = "teacher"  # the checkpoint meta.json / summary.json entry


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_teacher(config: RunConfig) -> FrozenTeacher | None:
    """The configured teacher, frozen, on the CPU, or None when the method has none.

    Loaded on the CPU even under ``torch.device("meta")``: the shape check
    before a run starts reads and fingerprints the teacher in full, so a bad
    teacher is refused before anything is written; then it moves to the meta
    device with the student (FLOP counting runs on meta tensors).
    """
    method = config.method
    if not isinstance(method, DistillConfig):
        return None
    path = existing_path(
        method.teacher,
        "method.teacher",
        "a selfsup run directory, a checkpoints/step_* folder or a backbone .pt file",
    )
    try:
        with torch.device("cpu"):
            backbone, info = load_backbone(path)
            sha = weights_sha256(backbone.trunk.state_dict())
            size = method.teacher_image_size or info.image_size
            if size != info.image_size:
                backbone = _at_image_size(backbone, info, size)
    except SelfsupError as exc:
        raise type(exc)(f"method.teacher={path}: {exc}") from None
    if torch.empty(0).is_meta:  # built under torch.device("meta")
        backbone = backbone.to("meta")
    data = config.data
    return FrozenTeacher(
        backbone,
        backbone.feature_dim,
        size,
        (list(data.mean), list(data.std)),
        (info.mean, info.std),
        origin=str(path),
        sha256=sha,
    )


def _at_image_size(backbone: Backbone, info: BackboneInfo, size: int) -> Backbone:
    """A ViT teacher with its position grid resampled to ``size`` (timm's resampling)."""
    if not backbone.is_vit:
        return backbone  # convolutions and global pooling take any size
    patch = info.patch_size or default_patch_size(info.image_size)
    if size % patch:
        raise ConfigError(
            f"config key 'method.teacher_image_size' is {size}, which the teacher's {patch}-pixel "
            f"patches cannot tile (the student's views cannot be matched to this {info.name}); "
            f"use a multiple of {patch}, such as its training size {info.image_size}"
        )
    from timm.layers import resample_abs_pos_embed

    resized = dataclasses.replace(info, patch_size=patch).build(image_size=size)
    vit: Any = resized.trunk  # a timm VisionTransformer
    state = backbone.trunk.state_dict()
    state["pos_embed"] = resample_abs_pos_embed(
        state["pos_embed"],
        new_size=list(vit.patch_embed.grid_size),
        num_prefix_tokens=vit.num_prefix_tokens,
    )
    resized.trunk.load_state_dict(state)
    return resized


def teacher_record(teacher: FrozenTeacher) -> dict[str, Any]:
    return {TEACHER_META: {"origin": teacher.origin, "sha256": teacher.sha256}}


def require_same_teacher(teacher: FrozenTeacher, checkpoint: Path, meta: dict[str, Any]) -> None:
    """Refuse (one line) to resume a checkpoint trained against other teacher weights."""
    recorded = meta.get(TEACHER_META)
    if not isinstance(recorded, dict) or not isinstance(recorded.get("sha256"), str):
        raise CheckpointError(
            f"checkpoint {checkpoint} records no teacher (its meta.json lacks a valid "
            f"'{TEACHER_META}' entry), yet this run distils from method.teacher="
            f"{teacher.origin}: the checkpoint is damaged or not of a distillation run; resume "
            "from another checkpoint, or train into a new run_dir"
        )
    if recorded["sha256"] == teacher.sha256:
        return
    raise CheckpointError(
        f"checkpoint {checkpoint} was distilled from teacher {recorded.get('origin')} (weights "
        f"sha256 {str(recorded.get('sha256'))[:12]}), but method.teacher={teacher.origin} has "
        f"sha256 {teacher.sha256[:12]}: resume with the original teacher, or train into a new "
        "run_dir"
    )
