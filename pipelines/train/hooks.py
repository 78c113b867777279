"""Training hooks: the one way to change training beyond the method's loss.

A hook is attached to the freshly built model before the optimizer exists
and before the engine wraps it (torchtitan's model converters), then called
at named moments of every step. Sparsity is one (masks attached before the
optimizer, pruned after optimizer steps, logged at log steps); a momentum
target encoder or an online monitor is another. A hook owns its state: what
:meth:`TrainingHook.state_dict` returns goes into every checkpoint's
``meta.json`` under ``hooks.<name>`` (the checkpoint manager, built with the
hooks, saves it) and comes back through :meth:`TrainingHook.resumed`. State
that is tensors and part of the model (masks) belongs to the model (buffers or
submodules), where the engine saves and shards it; tensors a hook trains on
its own, replicated on every rank (an online classifier), come from
:meth:`TrainingHook.tensor_state` into a weights-only file of each checkpoint
(``hook_<name>.pt``, written by rank 0) and back through
:meth:`TrainingHook.load_tensor_state`.

A hook may also watch: :meth:`TrainingHook.observe` sees each step's outputs
and labels, and :meth:`TrainingHook.report` hands the trainer what it measured
(scalars for TensorBoard, the progress bar and the log, warnings, a reason to stop).

Registering one (from any module; ``selfsup.plugins`` imports modules named
by ``SELFSUP_PLUGINS`` or the ``selfsup.plugins`` entry points)::

    HOOKS.register("step_counter", HookSpec("step_counter", StepCounter.attach))

It runs when ``train.hooks`` names it, or, for a spec with ``enabled``, when
that says so for the config (sparsity: ``sparsity.target > 0``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup.errors import ConfigError
from selfsup.pipelines.config import RunConfig
from selfsup.pipelines.runtime.engines import Engine
from selfsup.registry import Registry
from selfsup.ssl.backbones import Backbone
from selfsup.ssl.outputs import StepOutput


@dataclass
class HookReport:
    """What a hook measured at a step, for the trainer to show (and act on)."""

    scalars: dict[str, float]  # TensorBoard tags -> values, at the step measured
    line: str  # one line for train.log
    postfix: dict[str, str] = field(default_factory=dict)  # progress bar, until the next report
    warnings: list[str] = field(default_factory=list)  # logged and written to TensorBoard
    stop: str | None = None  # a reason to stop now, with a checkpoint


class TrainingHook:
    """What a hook may do; every method is a no-op until a hook overrides it."""

    def after_optimizer_step(self, step: int) -> None:
        """After optimizer step number ``step`` (1-based: the steps taken so far)."""

    def observe(self, outputs: Sequence[StepOutput], labels: Sequence[torch.Tensor]) -> None:
        """A step's forward outputs (one per micro-batch, detached) and their batches' labels,
        after the optimizer step (before :meth:`after_optimizer_step`)."""

    def report(self, step: int) -> HookReport | None:
        """What the hook measured after optimizer step ``step``, if anything."""
        return None

    def tensor_state(self) -> dict[str, Any] | None:
        """Tensors of the hook's own (replicated on every rank) for the checkpoint, or None."""
        return None

    def load_tensor_state(self, state: dict[str, Any] | None) -> None:
        """What :meth:`tensor_state` saved (None: the checkpoint holds none)."""

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
    """What a hook is attached with: the run's config, its model, the run's length, the
    engine (its device and collectives; it has not placed the model yet)."""

    config: RunConfig
    model: nn.Module  # built, on the CPU, not yet wrapped by the engine
    total_steps: int
    steps_per_epoch: int
    engine: Engine


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


def find_backbone(model: nn.Module, prefix: str = "backbone.") -> Backbone:
    """The (student's) backbone inside a method or a classifier (a teacher is not a child),
    or the one at ``prefix`` (``MethodSpec.evaluates``: I-JEPA's target encoder)."""
    if prefix != "backbone.":
        found = model.get_submodule(prefix.rstrip("."))
        if isinstance(found, Backbone):
            return found
    for module in model.modules():
        if isinstance(module, Backbone):
            return module
    raise ConfigError("this model has no backbone for a training hook to act on")
