"""A momentum (EMA) target encoder: a copy of the student's encoder that follows it slowly.

After every optimizer step, ``t = m * t + (1 - m) * s`` for each parameter
(lightly's ``update_momentum``: ``_foreach_mul_`` then ``_foreach_add_``), with
``m`` on a schedule (:func:`momentum_at`: I-JEPA's linear ramp from 0.996 to
1.0 over the run). The target takes no gradient and is in no optimizer, but
it is part of the model: every engine saves it with the model's state (a
checkpoint restores it), DDP replicates it, FSDP and ZeRO-3 shard it as they
shard the student, and the update runs on the shards each rank holds
(:meth:`MomentumEncoder.update` takes those tensors from the caller, the
training hook that knows the engine). Its forward pass counts in MFU as any
forward of the model does. Buffers (BatchNorm statistics) are copied from
the student, as BYOL and MoCo do.

Unlike :class:`~selfsup.ssl.distill.FrozenTeacher` (a fixed, loaded network
kept out of the model), the target is training state: a method owns it as a
child module, so BYOL- or DINO-style methods reuse it as it is.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from lightly.models.utils import update_momentum
from torch import nn

from selfsup.arguments import ArgumentError


def momentum_at(step: int, total_steps: int, start: float = 0.996, end: float = 1.0) -> float:
    """The momentum after ``step`` optimizer steps of ``total_steps``: linear from ``start``
    to ``end`` (I-JEPA's schedule; ``end == start`` for a constant one)."""
    if total_steps <= 0:
        return end
    return start + min(step, total_steps) * (end - start) / total_steps


def check_momentum(start: float, end: float) -> None:
    """Momenta are shares of the old weights: within [0, 1]."""
    for value, argument in ((start, "momentum_start"), (end, "momentum_end")):
        if not 0.0 <= value <= 1.0:
            raise ArgumentError(f"{argument} must be within [0, 1], got {value}", argument)


class MomentumEncoder(nn.Module):
    """A frozen copy of ``student``, updated only by :meth:`update`."""

    def __init__(self, student: nn.Module, start: float = 0.996, end: float = 1.0) -> None:
        super().__init__()
        check_momentum(start, end)
        self.encoder = copy.deepcopy(student)
        self.encoder.requires_grad_(False)
        self.start, self.end = start, end
        # The student, kept out of the module tree (set through __dict__): its weights
        # belong to the method once, not twice.
        self.__dict__["student"] = student

    def momentum(self, step: int, total_steps: int) -> float:
        """This target's momentum after ``step`` optimizer steps of ``total_steps``."""
        return momentum_at(step, total_steps, self.start, self.end)

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        with torch.no_grad():
            return self.encoder(*args, **kwargs)

    @torch.no_grad()
    def update(
        self,
        student: nn.Module,
        momentum: float,
        shards: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]] | None = None,
    ) -> None:
        """``t = m t + (1 - m) s``; ``shards``: (target, student) tensors this rank holds,
        in parameter order, where an engine shards them (None: the parameters themselves)."""
        if shards is None:
            update_momentum(student, self.encoder, momentum)
        else:
            targets, students = list(shards[0]), list(shards[1])
            torch._foreach_mul_(targets, momentum)
            torch._foreach_add_(targets, students, alpha=1.0 - momentum)
        for mine, theirs in zip(self.encoder.buffers(), student.buffers(), strict=True):
            mine.copy_(theirs)
