"""What a running job shows: TensorBoard scalars, a progress bar, throughput.

Only the main process writes. The progress bar shows loss, learning rate,
images per second and tqdm's ETA; the same numbers go to TensorBoard under
``train/``. On resume the writer purges events at or after the resumed step,
so the curves never hold the steps replayed after a crash twice.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

log = logging.getLogger(__name__)

TB_DIR = "tb"


class Monitor:
    """Aggregates per-step numbers and flushes them every ``log_every`` steps."""

    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        start_step: int,
        images_per_step: int,
        log_every: int,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.images_per_step = images_per_step
        self.log_every = log_every
        # Events up to the resumed step were logged before its checkpoint was
        # written; later ones belong to steps that are now replayed.
        self.writer = (
            SummaryWriter(str(run_dir / TB_DIR), purge_step=start_step + 1 if start_step else None)
            if enabled and start_step < total_steps
            else None
        )
        interactive = sys.stderr.isatty()
        self.bar = tqdm(
            total=total_steps,
            initial=start_step,
            unit="step",
            desc="train",
            disable=not enabled,
            dynamic_ncols=True,
            # In a log file (SLURM, CI) print a line every 30 s, not every refresh.
            mininterval=0.5 if interactive else 30.0,
        )
        self._loss_sum: torch.Tensor | None = None
        self._metric_sums: dict[str, torch.Tensor] = {}
        self._window_steps = 0
        self._window_start = time.perf_counter()
        self.last_loss: float | None = None
        self.images_per_second: float | None = None

    def step(
        self, step: int, loss: torch.Tensor, lr: float, metrics: dict[str, torch.Tensor]
    ) -> float | None:
        """Record one step; every ``log_every`` steps flush and return the mean loss."""
        detached = loss.detach().float()
        self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
        for name, value in metrics.items():
            value = value.detach().float()
            self._metric_sums[name] = self._metric_sums.get(name, 0) + value  # type: ignore[assignment]
        self._window_steps += 1
        self.bar.update(1)
        if step % self.log_every != 0:
            return None
        return self._flush(step, lr)

    def _flush(self, step: int, lr: float) -> float:
        assert self._loss_sum is not None
        loss = self._loss_sum.item() / self._window_steps  # .item() waits for the device
        elapsed = time.perf_counter() - self._window_start
        self.images_per_second = self._window_steps * self.images_per_step / max(elapsed, 1e-9)
        self.last_loss = loss
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)
            self.writer.add_scalar("train/img_per_s", self.images_per_second, step)
            for name, total in self._metric_sums.items():
                self.writer.add_scalar(f"train/{name}", float(total) / self._window_steps, step)
        self.bar.set_postfix(
            loss=f"{loss:.4f}",
            lr=f"{lr:.3g}",
            img_s=f"{self.images_per_second:.0f}",
            refresh=False,  # the bar redraws on its own schedule (mininterval)
        )
        self._loss_sum = None
        self._metric_sums = {}
        self._window_steps = 0
        self._window_start = time.perf_counter()
        return loss

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def write(self, message: str) -> None:
        """A log line that does not break the progress bar."""
        if self.enabled:
            self.bar.clear()
        log.info(message)
        if self.enabled:
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
