"""Sparsity during a training run: a training hook (masks on the backbone, pruned on schedule).

Attached to the model before the optimizer and the engine (the masks are
parametrizations, so the optimizer holds the dense originals and every
engine runs the masked weights). Masks are buffers of the model, so each
checkpoint holds them; the ramp is a function of the step alone, so a
resumed run prunes at the same steps to the same levels, bit for bit.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from selfsup.errors import CheckpointError, ConfigError
from selfsup.pipelines.checkpoint.dcp_io import METADATA_FILE, check_mask_entries
from selfsup.pipelines.config import (
    RunConfig,
    config_keys_in_errors,
    register_check,
    register_section,
)
from selfsup.pipelines.train.hooks import (
    HOOKS,
    HookContext,
    HookSpec,
    TrainingHook,
    find_backbone,
)
from selfsup.ssl.method import METHODS
from selfsup.ssl.sparsity import (
    SparsityConfig,
    cubic_level,
    layer_sparsity,
    masked_pruner,
    overall_sparsity,
)

log = logging.getLogger(__name__)

SPARSITY_META = "sparsity"  # the checkpoint meta.json / summary.json entry


def resolve_step(value: float, total_steps: int) -> int:
    """``sparsity.start``/``end``: a fraction of the run up to 1, a step number above."""
    return round(value * total_steps) if value <= 1 else int(value)


class TrainingSparsity(TrainingHook):
    """The masks of one run's backbone and their schedule (``sparsity.*``)."""

    def __init__(self, model: nn.Module, config: SparsityConfig, total_steps: int) -> None:
        self.config = config
        self.trunk = find_backbone(model).trunk
        with config_keys_in_errors():
            self.pruner, self.layers = masked_pruner(self.trunk, config)
        self.start = resolve_step(config.start, total_steps)
        self.end = max(self.start, resolve_step(config.end, total_steps))
        if config.schedule == "one_shot":
            self.end = self.start
        self.level = 0.0

    def describe(self) -> str:
        config = self.config
        return (
            f"{config.pattern} to {100 * config.target:.0f}% of {len(self.layers)} layers, "
            f"{config.schedule} from step {self.start} to {self.end} (every {config.every})"
        )

    def level_at(self, step: int) -> float:
        """The pruning level after ``step`` optimizer steps (for 2:4, the share of groups)."""
        return cubic_level(step, self.config.final_level, self.start, self.end, self.config.every)

    @classmethod
    def attach(cls, context: HookContext) -> TrainingSparsity:
        """Masks on the built model; a one-shot prune at step 0 happens here, before training."""
        hook = cls(context.model, context.config.sparsity, context.total_steps)
        hook.after_optimizer_step(0)
        return hook

    def after_optimizer_step(self, step: int) -> None:
        """Prune to the schedule's level when it rises at ``step`` (step 0: before training)."""
        level = self.level_at(step)
        if level > self.level:
            self.pruner.set_level(level)
            self.level = level

    def resumed(self, step: int, state: dict[str, Any]) -> None:
        """After a checkpoint restored the masks: the level they were pruned to."""
        self.level = self.level_at(step)

    def scalars(self, step: int) -> dict[str, float]:
        """TensorBoard's ``sparsity/overall`` and ``sparsity/<layer>``."""
        per_layer = {f"sparsity/{k}": v for k, v in layer_sparsity(self.trunk).items()}
        return {"sparsity/overall": overall_sparsity(self.trunk), **per_layer}

    def record(self) -> dict[str, Any]:
        """What checkpoints and summary.json say of the run's sparsity."""
        return {
            **asdict(self.config),
            "layers": self.layers,
            "start_step": self.start,
            "end_step": self.end,
        }


def require_same_sparsity(run: RunConfig, path: Path, meta: dict[str, Any]) -> None:
    """A checkpoint's masks fit only a run with the same sparsity on or off, and pattern."""
    config = run.sparsity
    stored = meta.get(SPARSITY_META)
    was, now = (stored or {}).get("pattern"), config.pattern if config.enabled else None
    if was != now:
        said = f"sparsity.pattern={was}" if was else "no sparsity"
        wants = f"sparsity.pattern={now}" if now else "no sparsity"
        raise CheckpointError(
            f"checkpoint {path} was trained with {said}, the config asks for {wants}: resume "
            "with the run's own sparsity settings, or train into a new run_dir"
        )
    if stored and stored.get("schedule") == "one_shot" and stored.get("target") != config.target:
        raise CheckpointError(
            f"checkpoint {path} was pruned one-shot to sparsity.target={stored.get('target')}; "
            f"the config asks for {config.target}, which a resume would never apply: resume "
            "with the run's own target, or prune its weights with `selfsup prune`"
        )
    if stored and (path / METADATA_FILE).is_file():
        check_mask_entries(path)


# Registered with ``enabled``: on whenever the sparsity section asks for it; its
# checkpoint check also runs with sparsity off (a sparse checkpoint is refused).
HOOKS.register(
    SPARSITY_META,
    HookSpec(
        SPARSITY_META,
        TrainingSparsity.attach,
        enabled=lambda config: config.sparsity.enabled,
        check_checkpoint=require_same_sparsity,
    ),
)


def check_sparsity(config: RunConfig) -> None:
    """The ``sparsity:`` section's own checks, and what the engine must allow."""
    with config_keys_in_errors():
        config.sparsity.check()
    if (
        config.sparsity.enabled
        and config.train.engine == "deepspeed"
        and config.train.zero_stage == 3
    ):
        raise ConfigError(
            "sparsity masks are computed from whole weights, which ZeRO-3 partitions: use "
            "train.zero_stage=2 (or 0/1) with sparsity"
        )
    if config.sparsity.enabled and METHODS.get(config.method.name).momentum:
        raise ConfigError(
            f"sparsity masks the trained encoder's weights, which method.name="
            f"{config.method.name}'s momentum target encoder copies unmasked: sparsity is not "
            "available for momentum methods; prune the exported encoder (selfsup prune)"
        )
    if config.sparsity.enabled and config.train.engine == "fsdp":
        raise ConfigError(
            "sparsity masks are computed from whole weights and applied as parametrizations, "
            "which FSDP's sharded DTensor parameters do not carry: use train.engine=ddp (or "
            "deepspeed with ZeRO 0-2) with sparsity"
        )


register_section(SPARSITY_META, SparsityConfig)
register_check("sparsity", check_sparsity)
