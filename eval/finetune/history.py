"""A fine-tune's per-epoch record (``history.json``) and its best epoch.

Written atomically by the main process at the end of every epoch, before
that epoch's checkpoint. A run resumed from an earlier checkpoint replays
the later epochs and rewrites their entries with the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfsup.atomic import write_atomic
from selfsup.errors import SelfsupError


class History:
    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        self.epochs: list[dict[str, Any]] = []
        self.reload()

    def reload(self) -> History:
        if self.path.is_file():
            try:
                self.epochs = list(json.loads(self.path.read_text())["epochs"])
            except (ValueError, KeyError, TypeError) as exc:
                raise SelfsupError(
                    f"{self.path} is damaged ({exc}); delete the fine-tune's folder to start it "
                    "again"
                ) from None
        return self

    def best_before(self, epoch: int) -> float | None:
        """The best validation accuracy of the epochs before ``epoch`` (None: none yet)."""
        earlier = [e["val_accuracy"] for e in self.epochs if e["epoch"] < epoch]
        return max(earlier) if earlier else None

    def record(self, entry: dict[str, Any]) -> None:
        """Add (or replace) the entry of ``entry['epoch']`` and write the file."""
        self.epochs = [e for e in self.epochs if e["epoch"] != entry["epoch"]] + [entry]
        self.epochs.sort(key=lambda e: e["epoch"])
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps({"epochs": self.epochs}, indent=1))

    def best(self) -> dict[str, Any]:
        """The epoch of the highest validation accuracy (the earliest of equals)."""
        if not self.epochs:
            raise SelfsupError(f"{self.path} records no epoch; the fine-tune did not run")
        return max(self.epochs, key=lambda e: (e["val_accuracy"], -e["epoch"]))
