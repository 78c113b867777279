"""Config -> model and augmentation: the one place that maps config sections to constructors.

Errors from ``ssl`` name its own arguments; building through
:func:`~selfsup.pipelines.config.config_keys_in_errors` renames them to the
config keys a user sets.
"""

from __future__ import annotations

import torch
from torch import nn

from selfsup.errors import ConfigError, SelfsupError, existing_path
from selfsup.pipelines.checkpoint.weights import load_backbone
from selfsup.pipelines.config import (
    RunConfig,
    config_keys_in_errors,
    register_check,
    register_choices,
    register_section,
)
from selfsup.pipelines.data.augment import BatchAugment
from selfsup.pipelines.data.train_loader import build_train_loader
from selfsup.pipelines.train.teacher import load_teacher
from selfsup.ssl.backbones import SOURCES, VIT_POOLS, Backbone, build_backbone
from selfsup.ssl.classifier import check_head, check_label_smoothing, check_logit_distillation
from selfsup.ssl.distill import FrozenTeacher
from selfsup.ssl.method import METHODS, BuildContext
from selfsup.ssl.methods import build_method, default_method_config

__all__ = [
    "build_augment",
    "build_backbone_for",
    "build_model",
    "build_model_with_teacher",
    "build_train_loader",
]


def build_backbone_for(config: RunConfig) -> Backbone:
    """The configured backbone, randomly initialised or from ``model.init_weights``."""
    model = config.model
    with config_keys_in_errors():
        backbone = build_backbone(
            model.backbone,
            source=model.source,
            cifar_stem=model.cifar_stem,
            image_size=config.data.image_size,
            patch_size=model.patch_size,
            pool=model.pool,
        )
    if model.init_weights is not None:
        load_init_weights(backbone, model.init_weights)
    return backbone


def load_init_weights(backbone: Backbone, source: str) -> None:
    """Copy trained weights into ``backbone``; one line when they are another architecture."""
    path = existing_path(
        source,
        "model.init_weights",
        "a run directory, a checkpoints/step_* folder or a backbone .pt file",
    )
    try:
        with torch.device("cpu"):  # read in full even while shapes are checked on meta
            trained, info = load_backbone(path)
    except SelfsupError as exc:
        raise type(exc)(f"model.init_weights={path}: {exc}") from None
    ours, theirs = backbone.trunk.state_dict(), trained.trunk.state_dict()
    if ours.keys() != theirs.keys() or any(ours[k].shape != theirs[k].shape for k in ours):
        raise ConfigError(
            f"model.init_weights={path} holds a {info.name} backbone (cifar_stem="
            f"{info.cifar_stem}) that does not fit model.backbone={backbone.name}: set the "
            "model.* keys of the run that trained it"
        )
    if not next(iter(ours.values())).is_meta:  # on meta (shape checks) there is nothing to copy
        backbone.trunk.load_state_dict(theirs)


def build_model(config: RunConfig, distributed: bool = False) -> nn.Module:
    """Backbone + method (heads, decoder, loss) as configured; a distillation's teacher loaded."""
    return build_model_with_teacher(config, load_teacher(config), distributed)


def build_model_with_teacher(
    config: RunConfig, teacher: FrozenTeacher | None, distributed: bool = False
) -> nn.Module:
    """Backbone + method around an already loaded teacher (None: the method has none)."""
    backbone = build_backbone_for(config)
    context = BuildContext(
        image_size=config.data.image_size,
        num_views=config.augment.num_views,
        distributed=distributed,
        teacher=teacher,
    )
    with config_keys_in_errors(config.method):
        return build_method(backbone, config.method, context)


def build_augment(config: RunConfig) -> BatchAugment:
    return BatchAugment(
        config.augment,
        image_size=config.data.image_size,
        mean=list(config.data.mean),
        std=list(config.data.std),
        channels_last=config.model.channels_last,
    )


def check_method_options(config: RunConfig) -> None:
    """The chosen method's own checks, its errors naming ``method.*`` keys."""
    context = BuildContext(image_size=config.data.image_size, num_views=config.augment.num_views)
    with config_keys_in_errors(config.method):
        config.method.check(context)


def check_method_engine(config: RunConfig) -> None:
    """A method that reads parameters outside their modules' forwards cannot run on ZeRO-3."""
    spec = METHODS.get(config.method.name)
    if not spec.zero3 and config.train.engine == "deepspeed" and config.train.zero_stage == 3:
        raise ConfigError(
            f"method={spec.name} reads its ViT's class token and position embedding outside "
            "the modules' forward passes, which DeepSpeed ZeRO-3 cannot gather: use "
            "train.zero_stage=2 (or 0/1), or train.engine=fsdp to shard the model"
        )


def check_finetune_head(config: RunConfig) -> None:
    """The fine-tune classifier's head, smoothing and logit distillation, as ssl checks them."""
    ft = config.finetune
    with config_keys_in_errors(section="finetune"):
        check_head(ft.head_hidden, ft.head_dropout)
        check_label_smoothing(ft.label_smoothing)
        check_logit_distillation(ft.distill_temperature, ft.distill_alpha)


# ssl knows no configs: this module, which maps sections to ssl's constructors,
# tells the config what ssl accepts.
register_section("method", default_method_config)
register_choices("method.name", METHODS.names)
register_choices("model.source", lambda: SOURCES)
register_choices("model.pool", lambda: VIT_POOLS)
register_check("finetune head", check_finetune_head)
register_check("method options", check_method_options)
register_check("method engine", check_method_engine)
