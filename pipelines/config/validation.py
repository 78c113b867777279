"""Checks of a whole run config: choices from the components' registrations, ranges, sizes.

Written once for every section; what needs a component's knowledge (a
method's options, a classifier head, sparsity) is a check the component
registered (:mod:`selfsup.pipelines.config.registry`), run after these.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from selfsup.arguments import ArgumentError
from selfsup.errors import ConfigError, did_you_mean
from selfsup.pipelines.config.registry import CHECKS, CHOICES
from selfsup.pipelines.config.schema import (
    AUTO,
    COMPILE_MODES,
    FINETUNE_CROPS,
    MAX_VIEW_SIDE,
    FinetuneConfig,
    RunConfig,
)
from selfsup.registry import UnknownName

# Arguments that ssl's errors name, and the config keys they come from.
ARGUMENT_KEYS = {
    "image_size": "data.image_size",
    "num_views": "augment.num_views",
    "backbone": "model.backbone",
    "cifar_stem": "model.cifar_stem",
    "source": "model.source",
    "patch_size": "model.patch_size",
    "pool": "model.pool",
    "method": "method.name",
}


def choices() -> dict[str, tuple[Any, ...]]:
    """Keys with a fixed set of values: the components' registrations, then the schema's own."""
    own = {
        "finetune.crop": FINETUNE_CROPS,
        "train.compile": (True, False, AUTO),
        "train.compile_mode": COMPILE_MODES,
    }
    return {**{key: CHOICES.get(key)() for key in CHOICES}, **own}


@contextmanager
def config_keys_in_errors(method: Any = None, section: str | None = None) -> Iterator[None]:
    """Turn ssl's errors (which name its arguments) into ConfigErrors naming config keys.

    An argument is a ``method.*`` field of ``method``, an option of ``section``
    (``finetune.head_hidden``), or one of :data:`ARGUMENT_KEYS`.
    """
    try:
        yield
    except UnknownName as exc:
        raise ConfigError(str(exc)) from exc
    except ArgumentError as exc:
        message = str(exc)
        method_fields = {f.name for f in dataclasses.fields(method)} if method else set()
        for argument in exc.arguments:
            if argument in method_fields:
                key = f"method.{argument}"
            else:
                key = f"{section}.{argument}" if section else ARGUMENT_KEYS[argument]
            if message.startswith(f"{argument} "):
                message = f"config key '{key}' " + message[len(argument) + 1 :]
            message = re.sub(rf"(?<![\w.']){re.escape(argument)}(?==)", key, message)
        raise ConfigError(message) from exc


def not_a_choice(key: str, value: Any, allowed: tuple[str, ...]) -> ConfigError:
    """The error for a config value outside its registry's names."""
    return ConfigError(
        f"config key '{key}' is '{value}'{did_you_mean(str(value), allowed)}; "
        f"valid values: {', '.join(allowed)}"
    )


def validate(config: RunConfig) -> None:
    """Semantic checks the type system cannot express."""
    for key, allowed in choices().items():
        value: Any = config
        for part in key.split("."):  # finetune.optim.name: sections nest
            value = getattr(value, part)
        if value not in allowed:
            raise not_a_choice(key, value, allowed)
    positive: dict[str, float] = {
        "data.image_size": config.data.image_size,
        "data.batch_size": config.data.batch_size,
        "augment.num_views": config.augment.num_views,
        "train.epochs": config.train.epochs,
        "checkpoint.every_steps": config.checkpoint.every_steps,
        "checkpoint.keep_last": config.checkpoint.keep_last,
        "train.log_every": config.train.log_every,
        "train.image_every": config.train.image_every,
        "train.grad_accum_steps": config.train.grad_accum_steps,
        "train.dist_timeout_s": config.train.dist_timeout_s,
        "probe.knn_k": config.probe.knn_k,
        "probe.lr": config.probe.lr,
        "probe.knn_temperature": config.probe.knn_temperature,
    }
    for key, value in positive.items():
        if not 0 < value < math.inf:  # NaN fails every comparison: refused too
            raise ConfigError(f"config key '{key}' must be positive, got {value}")
    # A learning rate of 0 is allowed (a frozen run, to check a pipeline), never below.
    if not 0 <= config.optim.base_lr < math.inf:
        raise ConfigError(
            f"config key 'optim.base_lr' must be a finite number >= 0, got {config.optim.base_lr}"
        )
    if config.train.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(
            f"config key 'train.zero_stage' must be 0-3, got {config.train.zero_stage}"
        )
    if config.checkpoint.async_save and config.train.engine == "deepspeed":
        raise ConfigError(
            "checkpoint.async_save=true writes through torch.distributed.checkpoint, which the "
            "single, ddp and fsdp engines use; DeepSpeed writes its own format synchronously: "
            "set checkpoint.async_save=false or another train.engine"
        )
    if config.train.max_steps is not None and config.train.max_steps <= 0:
        raise ConfigError(
            f"config key 'train.max_steps' must be positive, got {config.train.max_steps}"
        )
    _validate_loading(config)
    _validate_image_sides(config)
    for key in config.probe.betons:
        dataset, _, split = key.rpartition("_")
        if split not in ("train", "test") or not dataset:
            raise ConfigError(
                f"config key 'probe.betons.{key}' must be named <dataset>_train or <dataset>_test"
            )
    low, high = _pair(config.augment.crop_scale, "augment.crop_scale")
    if not 0 < low <= high <= 1:
        raise ConfigError(
            f"config key 'augment.crop_scale' must satisfy 0 < min <= max <= 1, got {[low, high]}"
        )
    for key in ("data.mean", "data.std"):
        section, name = key.split(".")
        if len(getattr(getattr(config, section), name)) != 3:
            raise ConfigError(f"config key '{key}' needs 3 values (one per RGB channel)")
    known_datasets = CHOICES.get("data.dataset")()
    for name in config.probe.datasets:
        betons = {f"{name}_train", f"{name}_test"} <= set(config.probe.betons)
        located = bool(config.probe.data_path) or betons
        if name not in known_datasets or (name == "imagefolder" and not located):
            raise ConfigError(
                f"config key 'probe.datasets' holds '{name}'; valid datasets: "
                f"{', '.join(d for d in known_datasets if d != 'imagefolder')} "
                "(imagefolder needs probe.data_path or probe.betons)"
            )
    _validate_finetune(config.finetune, known_datasets)
    for check in CHECKS.values():  # the components' own checks (a method's options, sparsity)
        check(config)


def _validate_image_sides(config: RunConfig) -> None:
    sides = {
        "data.image_size": config.data.image_size,
        "data.memory_side": config.data.memory_side,
        "probe.image_size": config.probe.image_size,
        "finetune.image_size": config.finetune.image_size,
        "method.teacher_image_size": getattr(config.method, "teacher_image_size", None),
    }
    for key, side in sides.items():
        if side is not None and not 1 <= side <= MAX_VIEW_SIDE:
            raise ConfigError(
                f"config key '{key}' is {side}; image sides must be between 1 and "
                f"{MAX_VIEW_SIDE} pixels"
            )


def _validate_loading(config: RunConfig) -> None:
    """Worker counts and the loaders' own sizes."""
    for key, workers in (
        ("data.num_workers", config.data.num_workers),
        ("probe.num_workers", config.probe.num_workers),
    ):
        if workers != AUTO and not (isinstance(workers, int) and workers >= 0):
            raise ConfigError(
                f"config key '{key}' must be auto or an integer >= 0, got {workers!r}"
            )
    if config.data.batches_ahead < 1:
        raise ConfigError("config key 'data.batches_ahead' must be >= 1")
    side = config.data.memory_side
    if side is not None and side < 8:
        raise ConfigError(f"config key 'data.memory_side' must be at least 8 pixels, got {side}")


def _validate_finetune(ft: FinetuneConfig, known_datasets: tuple[str, ...]) -> None:
    """The ``finetune:`` section's ranges (its choices are checked with the others)."""
    if not 0.0 < ft.val_fraction < 1.0:  # NaN fails too
        raise ConfigError(
            f"config key 'finetune.val_fraction' must be strictly between 0 and 1 (the share "
            f"of training images held out for validation), got {ft.val_fraction}"
        )
    positive: dict[str, float] = {
        "finetune.batch_size": ft.batch_size,
        "finetune.epochs": ft.epochs,
        "finetune.unfreeze_epochs": ft.unfreeze_epochs,
        "finetune.optim.base_lr": ft.optim.base_lr,
        "finetune.unfreeze_lr_factor": ft.unfreeze_lr_factor,
        "finetune.log_every": ft.log_every,
    }
    for key, value in positive.items():
        if not 0 < value < math.inf:
            raise ConfigError(f"config key '{key}' must be positive, got {value}")
    if not 0 <= ft.randaugment <= 30:  # torchvision's magnitude bins
        raise ConfigError(
            f"config key 'finetune.randaugment' is a magnitude in 0-30 (0: off), got "
            f"{ft.randaugment}"
        )
    for key, count in (
        ("finetune.train_samples", ft.train_samples),
        ("finetune.test_samples", ft.test_samples),
    ):
        if count is not None and count <= 0:
            raise ConfigError(f"config key '{key}' must be positive or null, got {count}")
    if ft.layer_decay is not None and not 0 < ft.layer_decay <= 1:
        raise ConfigError(
            f"config key 'finetune.layer_decay' must be in (0, 1] (1: no decay), got "
            f"{ft.layer_decay}"
        )
    for name in ft.datasets:
        if name not in known_datasets or name == "imagefolder":
            raise ConfigError(
                f"config key 'finetune.datasets' holds '{name}'"
                f"{did_you_mean(name, known_datasets)}; valid datasets: "
                f"{', '.join(d for d in known_datasets if d != 'imagefolder')}"
            )
    _pair(ft.crop_scale, "finetune.crop_scale")


def _pair(values: list[float], key: str) -> tuple[float, float]:
    if len(values) != 2:
        raise ConfigError(f"config key '{key}' needs 2 values [min, max], got {values}")
    return float(values[0]), float(values[1])
