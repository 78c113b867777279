"""The probe's kNN on a run's online-monitor subsets: what the run's last online kNN must be.

The online monitor of a run scores a seeded subset of ``monitor.test_size``
test images against ``monitor.bank_size`` training images; the probe takes
seeded subsets of its own sizes. Both are prefixes of one seeded permutation
of the split (:func:`~selfsup.pipelines.data.datasets.subset_indices`), so the
smaller lies inside the larger: the probe can score kNN on exactly the
monitor's images from the features it already has. The report then shows the
last online kNN, this number (equal, for the final weights) and the probe's
own kNN on its larger subsets, so the gap between online and post-hoc is
the subsets' and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from selfsup.pipelines.checkpoint.run_dir import CONFIG_FILE, read_summary
from selfsup.pipelines.checkpoint.weights import BackboneInfo
from selfsup.pipelines.config import ProbeConfig, load_saved_config
from selfsup.pipelines.data.datasets import subset_indices
from selfsup.ssl.knn import knn_accuracy


@dataclass
class MonitorView:
    """One probed dataset's trained features and labels, and its splits' sizes."""

    dataset: str
    image_size: int
    train_features: torch.Tensor
    train_labels: torch.Tensor
    test_features: torch.Tensor
    test_labels: torch.Tensor
    totals: list[int]  # images in the whole train and test splits
    num_classes: int


def positions(total: int, outer: int | None, inner: int) -> np.ndarray | None:
    """Where the subset of ``inner`` items sits in the subset of ``outer`` items (both of a
    split of ``total``); None when it does not lie inside."""
    inner_idx = subset_indices(total, inner)
    outer_idx = subset_indices(total, outer)
    if inner_idx is None:  # the monitor took the whole split
        return None if outer_idx is not None else np.arange(total)
    if outer_idx is None:
        return inner_idx
    found = np.searchsorted(outer_idx, inner_idx)
    if (found >= len(outer_idx)).any() or not (outer_idx[found] == inner_idx).all():
        return None
    return found


def knn_on_monitor_subsets(
    view: MonitorView, info: BackboneInfo, settings: ProbeConfig
) -> dict[str, Any] | None:
    """kNN top-1 on the run's monitor subsets, or None (no monitor, another dataset or size)."""
    run_dir = info.run_dir
    if run_dir is None or not (run_dir / CONFIG_FILE).is_file():
        return None
    record = read_summary(run_dir).get("monitor")
    if not isinstance(record, dict):
        return None
    try:
        bank, test = int(record["bank_size"]), int(record["test_size"])
        side = int(record["image_size"])
    except (KeyError, TypeError, ValueError):  # a record of another version: nothing to add
        return None
    if side != view.image_size or load_saved_config(run_dir / CONFIG_FILE).data.dataset != (
        view.dataset
    ):
        return None
    train_at = positions(view.totals[0], settings.train_samples, bank)
    test_at = positions(view.totals[1], settings.test_samples, test)
    if train_at is None or test_at is None:
        return None
    knn = knn_accuracy(
        view.train_features[train_at], view.train_labels[train_at],
        view.test_features[test_at], view.test_labels[test_at], view.num_classes,
        k=settings.knn_k, temperature=settings.knn_temperature,
    )  # fmt: skip
    return {"bank_size": bank, "test_size": test, "knn_top1": knn}
