"""A training hook from outside the package: attached, called, checkpointed, resumed exactly."""

from __future__ import annotations

import json
import os
import signal

import torch

from selfsup.pipelines.checkpoint.folders import list_checkpoints, read_meta
from selfsup.pipelines.config import load_config
from selfsup.pipelines.train.hooks import HOOKS, HookContext, HookSpec, TrainingHook
from selfsup.pipelines.train.trainer import train


class StepCounter(TrainingHook):
    """Counts optimizer steps; its count is its checkpointed state."""

    stop_at: int | None = None  # send this process SIGTERM after that step (a preemption)
    resumed_with: list[tuple[int, dict]] = []

    def __init__(self, context: HookContext) -> None:
        self.count = 0

    def after_optimizer_step(self, step: int) -> None:
        self.count += 1
        if step == StepCounter.stop_at:
            StepCounter.stop_at = None
            os.kill(os.getpid(), signal.SIGTERM)

    def scalars(self, step: int) -> dict[str, float]:
        return {"toy/count": float(self.count)}

    def state_dict(self) -> dict:
        return {"count": self.count}

    def resumed(self, step: int, state: dict) -> None:
        StepCounter.resumed_with.append((step, state))
        self.count = state["count"]

    def record(self) -> dict:
        return {"count": self.count}


HOOKS.register("step_counter", HookSpec("step_counter", StepCounter))


def test_a_hook_from_outside_is_checkpointed_and_resumed_exactly(tiny_overrides, tmp_path):
    run = [*tiny_overrides, "train.hooks=[step_counter]"]
    straight = train(load_config(None, [*run, f"run_dir={tmp_path / 'straight'}"]))
    StepCounter.stop_at = 2
    stopped = train(load_config(None, [*run, f"run_dir={tmp_path / 'stopped'}"]))
    assert stopped.stopped_by and stopped.step == 2
    (checkpoint,) = list_checkpoints(stopped.run_dir / "checkpoints")
    assert read_meta(checkpoint)["hooks"]["step_counter"] == {"count": 2}
    resumed = train(load_config(None, [*run, f"run_dir={tmp_path / 'stopped'}"]))
    assert resumed.resumed_from_step == 2 and StepCounter.resumed_with == [(2, {"count": 2})]
    for result in (straight, resumed):
        assert json.loads((result.run_dir / "summary.json").read_text())["step_counter"] == {
            "count": 6
        }
    a = torch.load(straight.run_dir / "backbone.pt", weights_only=True)["state_dict"]
    b = torch.load(resumed.run_dir / "backbone.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # the hook changed nothing else
