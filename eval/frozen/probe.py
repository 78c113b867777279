"""Frozen-feature evaluation of a pretrained backbone: linear probe and kNN per dataset.

The trained backbone is evaluated beside the same architecture at random
initialisation, built from the run's seed: that is exactly the network the
run started from, so the gap between the two is what pretraining learned.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from selfsup.eval.frozen.features import extract_features
from selfsup.eval.frozen.linear import train_linear_classifier
from selfsup.eval.frozen.monitor_subsets import MonitorView, knn_on_monitor_subsets
from selfsup.pipelines.checkpoint.run_dir import CONFIG_FILE, find_run_dir
from selfsup.pipelines.checkpoint.weights import BackboneInfo, load_backbone
from selfsup.pipelines.config import (
    ProbeConfig,
    RunConfig,
    load_saved_config,
    with_section_overrides,
)
from selfsup.pipelines.data.datasets import subset_indices, take_subset
from selfsup.pipelines.data.loaders import eval_loader
from selfsup.pipelines.data.sources import dataset_info, open_dataset
from selfsup.pipelines.data.train_loader import choose_loader
from selfsup.pipelines.runtime.cpus import loader_workers
from selfsup.pipelines.runtime.engines import PRECISIONS, resolve_device
from selfsup.pipelines.runtime.seeding import seed_everything
from selfsup.pipelines.train.build import build_model
from selfsup.ssl.backbones import Backbone
from selfsup.ssl.knn import knn_accuracy

log = logging.getLogger(__name__)


@dataclass
class Scores:
    linear_top1: float
    knn_top1: float
    linear_train_top1: float


@dataclass
class DatasetResult:
    dataset: str
    train_images: int
    test_images: int
    image_size: int
    trained: Scores
    random_init: Scores | None = None
    seconds: float = 0.0
    # The trained network's kNN on the run's online-monitor subsets (where they lie inside
    # the probe's): the number the run's last online kNN is (eval/frozen/monitor_subsets.py).
    monitor_subsets: dict[str, Any] | None = None


@dataclass
class ProbeOutcome:
    info: BackboneInfo
    settings: ProbeConfig
    results: list[DatasetResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        info = asdict(self.info)
        info["run_dir"] = str(self.info.run_dir) if self.info.run_dir else None
        return {
            "backbone": info,
            "settings": asdict(self.settings),
            "results": [asdict(r) for r in self.results],
        }


def probe(path: str | Path, settings: ProbeConfig, device: str = "auto") -> ProbeOutcome:
    """Probe the backbone at ``path`` (run directory, checkpoint folder or .pt file)."""
    torch_device = resolve_device(device, setting="--device")  # refused before any loading
    trained, info = load_backbone(path)
    backbones: list[Backbone] = [trained]
    if settings.baseline:
        backbones.append(initial_backbone(info))
    outcome = ProbeOutcome(info=info, settings=settings)
    for name in settings.datasets:
        outcome.results.append(_probe_dataset(name, backbones, info, settings, torch_device))
    return outcome


def probe_config_for(path: Path, overrides: list[str]) -> ProbeConfig:
    """Probe settings: the run's ``probe`` section (defaults without a run) plus overrides."""
    run_dir = find_run_dir(path)
    config = load_saved_config(run_dir / CONFIG_FILE) if run_dir else RunConfig()
    return with_section_overrides(config, "probe", overrides).probe


def initial_backbone(info: BackboneInfo) -> Backbone:
    """The weights the run started from: its model rebuilt with its seed.

    With the run's config the whole method is rebuilt, so a method's own
    initialisation of the backbone (MAE's, for one) is reproduced too; a bare
    weights file gives the architecture's default initialisation.
    """
    seed_everything(info.seed)
    if info.run_dir is not None and (info.run_dir / CONFIG_FILE).is_file():
        config = load_saved_config(info.run_dir / CONFIG_FILE)
        return build_model(config).backbone  # type: ignore[return-value]
    return info.build()


def _probe_dataset(
    name: str,
    backbones: list[Backbone],
    info: BackboneInfo,
    settings: ProbeConfig,
    device: torch.device,
) -> DatasetResult:
    started = time.perf_counter()
    image_size = settings.image_size or info.image_size
    dtype = PRECISIONS.get(settings.precision)
    features, sizes, totals = [], [], []
    for split, count in (("train", settings.train_samples), ("test", settings.test_samples)):
        batches, size, total = _eval_batches(name, split, count, image_size, settings, device)
        log.info("probing on %s %s: %d images at %d px", name, split, size, image_size)
        features.append(extract_features(backbones, batches, device, info.mean, info.std, dtype))
        sizes.append(size)
        totals.append(total)
    (train_feats, train_labels), (test_feats, test_labels) = features
    num_classes = (
        dataset_info(name).num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    )
    scores = [
        _score(train_feats[i], train_labels, test_feats[i], test_labels, num_classes, settings)
        for i in range(len(backbones))
    ]
    result = DatasetResult(
        dataset=name,
        train_images=sizes[0],
        test_images=sizes[1],
        image_size=image_size,
        trained=scores[0],
        random_init=scores[1] if len(scores) > 1 else None,
        seconds=round(time.perf_counter() - started, 1),
    )
    view = MonitorView(name, image_size, train_feats[0], train_labels, test_feats[0],
                       test_labels, totals, num_classes)  # fmt: skip
    result.monitor_subsets = knn_on_monitor_subsets(view, info, settings)
    log.info(
        "%s: linear %.2f%%, kNN %.2f%% (random init: %s)",
        name,
        result.trained.linear_top1,
        result.trained.knn_top1,
        f"linear {scores[1].linear_top1:.2f}%, kNN {scores[1].knn_top1:.2f}%"
        if len(scores) > 1
        else "not run",
    )
    return result


def _eval_batches(
    name: str,
    split: str,
    count: int | None,
    image_size: int,
    settings: ProbeConfig,
    device: torch.device,
) -> tuple[Iterable[tuple[torch.Tensor, torch.Tensor]], int, int]:
    """Evaluation batches of one split (from a .beton or the dataset folder), their count,
    and the split's size."""
    beton = settings.betons.get(f"{name}_{split}")
    key = f"probe.betons.{name}_{split}"
    workers = loader_workers(settings.num_workers)
    if choose_loader(settings.loader, beton, "probe.loader", key) == "ffcv":
        from selfsup.pipelines.data.beton import open_beton
        from selfsup.pipelines.data.ffcv_loader import ffcv_eval_loader

        assert beton is not None
        total = int(open_beton(beton).num_samples)
        indices = subset_indices(total, count)
        batches = ffcv_eval_loader(
            beton, image_size, settings.batch_size, workers, device, indices=indices
        )
        return batches, total if indices is None else len(indices), total
    whole = open_dataset(name, split, settings.data_path)
    dataset = take_subset(whole, count)
    return eval_loader(dataset, image_size, settings.batch_size, workers), len(dataset), len(whole)


def _score(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    settings: ProbeConfig,
) -> Scores:
    linear = train_linear_classifier(
        train_x,
        train_y,
        test_x,
        test_y,
        num_classes,
        epochs=settings.epochs,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        batch_size=settings.batch_size,
    )
    knn = knn_accuracy(
        train_x,
        train_y,
        test_x,
        test_y,
        num_classes,
        k=settings.knn_k,
        temperature=settings.knn_temperature,
    )
    return Scores(linear_top1=linear.top1, knn_top1=knn, linear_train_top1=linear.train_top1)
