"""Momentum target encoders during a training run: a training hook that moves them.

After every optimizer step each :class:`~selfsup.ssl.momentum.MomentumEncoder`
of the model follows its student with the momentum of the step (a function
of the step alone, so a resumed run continues the schedule exactly). The
update runs on the tensors each rank holds (:meth:`Engine.held`: whole on
single and DDP, this rank's shard on FSDP and ZeRO-3), never gathering a
whole model; the target is part of the model, so checkpoints hold it.
"""

from __future__ import annotations

from selfsup.pipelines.train.hooks import HOOKS, HookContext, HookSpec, TrainingHook
from selfsup.ssl.method import METHODS
from selfsup.ssl.momentum import MomentumEncoder

MOMENTUM = "momentum"


class MomentumUpdates(TrainingHook):
    """The model's momentum targets, moved after each optimizer step."""

    def __init__(self, context: HookContext) -> None:
        self.engine, self.total_steps = context.engine, context.total_steps
        self.targets = [m for m in context.model.modules() if isinstance(m, MomentumEncoder)]

    def describe(self) -> str:
        first = self.targets[0] if self.targets else None
        ramp = f"momentum {first.start} to {first.end}" if first else "no target found"
        return f"{len(self.targets)} momentum target encoder(s), {ramp} over the run"

    def after_optimizer_step(self, step: int) -> None:
        held = self.engine.held
        for target in self.targets:
            student = target.__dict__["student"]
            shards = (
                [held(p) for p in target.encoder.parameters()],
                [held(p) for p in student.parameters()],
            )
            target.update(student, target.momentum(step, self.total_steps), shards)


HOOKS.register(
    MOMENTUM,
    HookSpec(MOMENTUM, MomentumUpdates, enabled=lambda c: METHODS.get(c.method.name).momentum),
)
