"""What a running job shows: TensorBoard scalars, a progress bar, throughput.

Every rank records its per-step numbers; every ``log_every`` steps the
trainer averages the window over ranks and the main process alone writes
them. The progress bar shows loss, learning rate, images per second, model
FLOPs utilisation (where the device's peak is known) and tqdm's ETA; the same
numbers go to TensorBoard under ``train/`` (``img_per_s``, ``tflops``: achieved
TFLOP/s per device, ``mfu``). On resume
the writer purges events after the resumed step, so curves never hold the
steps replayed after a crash twice. :func:`read_scalars` reads them back.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from selfsup.pipelines.checkpoint.run_dir import TB_DIR
from selfsup.pipelines.train.throughput import Throughput

log = logging.getLogger(__name__)

LOSS = "loss"


def read_scalars(tb_dir: Path, tag: str) -> list[tuple[int, float]]:
    """All ``(step, value)`` points of ``tag`` in a TensorBoard log directory."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not tb_dir.is_dir():
        return []
    accumulator = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    if tag not in accumulator.Tags().get("scalars", []):
        return []
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


class MeanWindow:
    """Sums of per-forward-pass scalars kept on the device (no sync), and their count."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.records = 0  # forward passes (micro-batches) added

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.records += 1

    def means(self) -> dict[str, torch.Tensor]:
        return {name: total / self.records for name, total in self.sums.items()}


class Monitor:
    """Window of per-step numbers on every rank; TensorBoard and progress bar on the main one."""

    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        start_step: int,
        images_per_step: int,
        enabled: bool = True,
        throughput: Throughput | None = None,
    ) -> None:
        self.enabled = enabled
        self.images_per_step = images_per_step
        self.throughput = throughput
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
        self._window = MeanWindow()
        self._steps = 0  # optimizer steps in the window
        self._started = time.perf_counter()
        self.last_loss: float | None = None
        self.images_per_second: float | None = None
        self.steps_per_second: float | None = None
        self.measured: dict[str, str] = {}  # the last measurement's progress-bar entries

    def record(self, loss: torch.Tensor, metrics: dict[str, torch.Tensor]) -> None:
        """Add one forward pass's loss and metrics to the window (no device sync)."""
        self._window.add({LOSS: loss, **metrics})

    def advance(self) -> None:
        """One optimizer step done."""
        self._steps += 1
        self.bar.update(1)

    def take_window(self) -> dict[str, torch.Tensor]:
        """This rank's window means, and a fresh window."""
        means = self._window.means()
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        self.steps_per_second = self._steps / elapsed
        self.images_per_second = self.steps_per_second * self.images_per_step
        self._window, self._steps = MeanWindow(), 0
        self._started = time.perf_counter()
        return means

    def log(self, step: int, means: dict[str, float], lr: float) -> None:
        """Write the (rank-averaged) window to TensorBoard and the progress bar."""
        self.last_loss = means[LOSS]
        if self.writer is not None:
            self.writer.add_scalar("train/loss", means[LOSS], step)
            self.writer.add_scalar("train/lr", lr, step)
            if self.images_per_second is not None:
                self.writer.add_scalar("train/img_per_s", self.images_per_second, step)
            for name, value in means.items():
                if name != LOSS:
                    self.writer.add_scalar(f"train/{name}", value, step)
        postfix = {
            "loss": f"{means[LOSS]:.4f}",
            "lr": f"{lr:.3g}",
            "img_s": f"{self.images_per_second or 0:.0f}",
        }
        if "accuracy" in means:  # supervised objectives (fine-tuning)
            postfix["acc"] = f"{means['accuracy']:.1f}%"
        if self.throughput is not None and self.steps_per_second is not None:
            achieved = self.throughput.achieved(self.steps_per_second)
            mfu = self.throughput.mfu(self.steps_per_second)
            if achieved is not None:
                self.add_scalar("train/tflops", achieved / 1e12, step)
                postfix["tflops"] = f"{achieved / 1e12:.1f}"
            if mfu is not None:
                self.add_scalar("train/mfu", mfu, step)
                postfix["mfu"] = f"{100 * mfu:.1f}%"
        postfix.update(self.measured)
        # refresh=False: the bar redraws on its own schedule (mininterval)
        self.bar.set_postfix(postfix, refresh=False)

    def show(self, step: int, scalars: dict[str, float], postfix: dict[str, str]) -> None:
        """A measurement made at ``step`` (the online monitor's): TensorBoard now, the
        progress bar's postfix until the next one."""
        for tag, value in scalars.items():
            self.add_scalar(tag, value, step)
        self.measured = dict(postfix)

    def add_text(self, tag: str, text: str, step: int) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def add_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """A ``(3, H, W)`` image with values in [0, 1]."""
        if self.writer is not None:
            self.writer.add_image(tag, image, step)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
