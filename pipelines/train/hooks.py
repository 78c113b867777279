"""Training hooks: the one way to change training beyond the method's loss.

A hook is attached to the freshly built model before the optimizer exists
and before the engine wraps it (torchtitan's model converters), then called
at named moments of every step. Sparsity is one (masks attached before the
optimizer, pruned after optimizer steps, logged at log steps); a momentum
target encoder or an online monitor is another. A hook owns its state: what
:meth:`TrainingHook.state_dict` returns goes into every checkpoint's
``meta.json`` under ``hooks.<name>`` (the checkpoint manager, built with the
hooks, saves it) and comes back through :meth:`TrainingHook.resumed`. State
that is tensors belongs to the model (buffers or submodules), where the
engine saves and shards it; a hook's own state is small and JSON.

Registering one (from any module; ``selfsup.plugins`` imports modules named
by ``SELFSUP_PLUGINS`` or the ``selfsup.plugins`` entry points)::

    HOOKS.register("step_counter", HookSpec("step_counter", StepCounter.attach))

It runs when ``train.hooks`` names it, or, for a spec with ``enabled``, when
that says so for the config (sparsity: ``sparsity.target > 0``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from selfsup.pipelines.config import RunConfig
from selfsup.registry import Registry


class TrainingHook:
    """What a hook may do; every method is a no-op until a hook overrides it."""

    def after_optimizer_step(self, step: int) -> None:
        """After optimizer step number ``step`` (1-based: the steps taken so far)."""

    def scalars(self, step: int) -> dict[str, float]:
        """TensorBoard scalars at a log step (every ``train.log_every`` steps)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """This hook's state for the checkpoint (JSON: numbers, strings, lists, dicts)."""
        return {}

    def resumed(self, step: int, state: dict[str, Any]) -> None:
        """After a checkpoint restored the run at ``step``; ``state`` is what it saved."""

    def describe(self) -> str | None:
        """One line for the start of the run's log (what the hook will do), or None."""
        return None

    def record(self) -> dict[str, Any] | None:
        """What ``meta.json`` and ``summary.json`` say of this hook (under its name), or None."""
        return None


@dataclass(frozen=True)
class HookContext:
    """What a hook is attached with: the run's config, its model, the run's length."""

    config: RunConfig
    model: nn.Module  # built, on the CPU, not yet wrapped by the engine
    total_steps: int
    steps_per_epoch: int


@dataclass(frozen=True)
class HookSpec:
    """A registered hook: how to attach it, when it is on, what it checks in a checkpoint.

    ``attach(context)`` runs after the model is built and before the
    optimizer and the engine see it; ``check_checkpoint(config, path, meta)``
    runs before a checkpoint is loaded, whether the hook is on or off (a
    checkpoint written with it on may not fit a run without it), and refuses
    with a :class:`~selfsup.errors.CheckpointError` what cannot be continued.
    """

    name: str
    attach: Callable[[HookContext], TrainingHook]
    enabled: Callable[[RunConfig], bool] | None = None  # None: when train.hooks names it
    check_checkpoint: Callable[[RunConfig, Path, dict[str, Any]], None] | None = None

    def is_on(self, config: RunConfig) -> bool:
        if self.name in config.train.hooks:
            return True
        return self.enabled is not None and self.enabled(config)


HOOKS: Registry[HookSpec] = Registry("training hook")


def active_specs(config: RunConfig) -> list[HookSpec]:
    """The registered hooks this config turns on, in registration order."""
    return [spec for spec in HOOKS.values() if spec.is_on(config)]


def attach_hooks(context: HookContext) -> dict[str, TrainingHook]:
    """Every active hook, attached to ``context.model`` (before the optimizer is built)."""
    return {spec.name: spec.attach(context) for spec in active_specs(context.config)}


def check_checkpoint(config: RunConfig, path: Path, meta: dict[str, Any]) -> None:
    """Each registered hook's check of a checkpoint, before anything is loaded from it."""
    for spec in HOOKS.values():
        if spec.check_checkpoint is not None:
            spec.check_checkpoint(config, path, meta)


def hook_records(hooks: Mapping[str, TrainingHook]) -> dict[str, Any]:
    """Each hook's record under its name (what meta.json and summary.json show)."""
    records = {name: hook.record() for name, hook in hooks.items()}
    return {name: record for name, record in records.items() if record is not None}
