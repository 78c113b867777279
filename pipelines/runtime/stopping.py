"""Stopping between steps: a signal asks, the trainer checkpoints and leaves.

A signal that lands in the middle of an optimizer step must not stop it
half-way (the parameters would be partly updated), so SIGINT, SIGTERM and
SIGUSR2 (SLURM's preemption and time-limit warning) only set a flag that the
training loop reads after each step. A second SIGINT stops at once, for a
user who really means it.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class StopRequest:
    """Set by a signal, read by the training loop at step boundaries."""

    def __init__(
        self,
        signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2),
    ):
        self.signals = signals
        self.received: str | None = None
        self._previous: dict[signal.Signals, object] = {}

    def __bool__(self) -> bool:
        return self.received is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received == name == "SIGINT":
            raise KeyboardInterrupt
        self.received = name

    def install(self) -> StopRequest:
        # Handlers can only be installed from the main thread; elsewhere
        # (a notebook worker thread) the default behaviour stays.
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous.clear()
