"""The online monitor: a training hook that measures the features while pretraining runs.

Every ``monitor.every_steps`` (default: each epoch) and at the last step, the
live backbone, in eval mode, embeds a labelled bank (training split) and a
held-out set (test split), both fixed subsets held in memory
(:mod:`~selfsup.pipelines.train.online.subsets`). From those embeddings:
weighted kNN top-1 with the probe's own function and settings, the online
linear classifier's top-1 (``monitor.linear``), and the label-free measures
of :mod:`selfsup.ssl.embedding_quality`: RankMe, the std of normalised
embeddings, alignment (each held-out image against its mirror image) and
uniformity. A RankMe or std below ``monitor.collapse_*`` raises the alarm.

It changes nothing it watches: its evaluation runs under ``no_grad``, in
eval mode, with the RNG states restored afterwards (``fork_rng``), and the
linear classifier keeps apart (:mod:`~selfsup.pipelines.train.online.linear`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from selfsup.errors import DataError
from selfsup.pipelines.config import RunConfig
from selfsup.pipelines.data.normalize import Normalize
from selfsup.pipelines.data.sources import dataset_info
from selfsup.pipelines.runtime.engines import PRECISIONS
from selfsup.pipelines.train.hooks import (
    HOOKS,
    HookContext,
    HookReport,
    HookSpec,
    TrainingHook,
    find_backbone,
)
from selfsup.pipelines.train.online.linear import OnlineLinear
from selfsup.pipelines.train.online.settings import MONITOR, MonitorConfig
from selfsup.pipelines.train.online.subsets import HeldImages, embed, evaluating, hold_subset
from selfsup.ssl.embedding_quality import alignment, normalized_std, rankme, uniformity
from selfsup.ssl.knn import knn_accuracy
from selfsup.ssl.method import METHODS
from selfsup.ssl.outputs import StepOutput

log = logging.getLogger(__name__)


class OnlineMonitor(TrainingHook):
    """kNN, linear and collapse measurements of one run's backbone (``monitor.*``)."""

    def __init__(self, context: HookContext) -> None:
        config, self.engine = context.config, context.engine
        self.settings: MonitorConfig = config.monitor
        settings, probe = self.settings, config.probe
        # The backbone its method is evaluated on (I-JEPA: the target), as the probe reads.
        self.backbone = find_backbone(context.model, METHODS.get(config.method.name).evaluates)
        self.every = settings.every_steps or context.steps_per_epoch
        self.total_steps = context.total_steps
        self.k = settings.knn_k or probe.knn_k
        self.temperature = settings.knn_temperature or probe.knn_temperature
        self.batch_size = settings.batch_size
        self.dtype = PRECISIONS[settings.precision or probe.precision]
        self.side = settings.image_size or probe.image_size or config.data.image_size
        self.normalize = Normalize(config.data.mean, config.data.std).to(self.engine.device)
        self.bank = self.held(config, "train", settings.bank_size)
        self.test = self.held(config, "test", settings.test_size)
        self.classes = dataset_info(config.data.dataset).num_classes or 1 + int(
            max(self.bank.labels.max(), self.test.labels.max())
        )
        self.linear = (
            OnlineLinear(
                self.backbone.feature_dim,
                self.classes,
                settings.linear_lr,
                settings.linear_momentum,
                self.engine.device,
            )
            if settings.linear
            else None
        )
        self.pending: HookReport | None = None

    def held(self, config: RunConfig, split: str, count: int) -> HeldImages:
        """The subset of ``split`` of the training dataset, or one line on why it cannot be."""
        data = config.data
        try:
            return hold_subset(data.dataset, split, data.path, count, self.side, self.engine)
        except DataError as exc:
            raise DataError(
                f"monitor.enabled needs the {split} split of data.dataset={data.dataset} "
                f"({exc}); set monitor.enabled=false to train without the online monitor"
            ) from None

    def describe(self) -> str:
        linear = ", online linear classifier" if self.linear is not None else ""
        return (
            f"kNN (k={self.k}, T={self.temperature}) of {self.test.count} test images against "
            f"{self.bank.count} training images at {self.side} px every {self.every} steps"
            f"{linear}; collapse alarm below RankMe {self.settings.collapse_rank} or "
            f"std x sqrt(dim) {self.settings.collapse_std}"
        )

    def observe(self, outputs: Sequence[StepOutput], labels: Sequence[torch.Tensor]) -> None:
        if self.linear is None:
            return
        features = [output.features for output in outputs]
        assert all(f is not None for f in features), "checked: the method gives features"
        self.linear.learn([f for f in features if f is not None], labels)

    def after_optimizer_step(self, step: int) -> None:
        if self.linear is not None:
            self.linear.step(self.engine)
        if step % self.every == 0 or step == self.total_steps:
            self.pending = self.measure(step)

    def report(self, step: int) -> HookReport | None:
        pending, self.pending = self.pending, None
        return pending

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Bank, held-out and mirrored held-out features (collective; RNG left untouched)."""
        devices = [self.engine.device] if self.engine.device.type == "cuda" else []
        kept = torch.random.fork_rng(devices=devices)
        with kept, self.engine.gathered(), evaluating(self.backbone):
            found = [
                embed(self.backbone, held, self.engine, self.normalize, self.batch_size,
                      self.dtype, mirror)
                for held, mirror in ((self.bank, False), (self.test, False), (self.test, True))
            ]  # fmt: skip
        return found[0], found[1], found[2]

    def measure(self, step: int) -> HookReport:
        started = time.perf_counter()
        bank, test, mirrored = self.embeddings()
        test_labels = self.test.labels
        scalars = {
            "monitor/knn_top1": knn_accuracy(
                bank, self.bank.labels, test, test_labels, self.classes, self.k, self.temperature
            ),
            "monitor/rankme": rankme(test),
            "monitor/std": normalized_std(test),
            "monitor/alignment": alignment(test, mirrored),
            "monitor/uniformity": uniformity(test),
        }
        if self.linear is not None:
            scalars["monitor/linear_top1"] = self.linear.accuracy(test, test_labels)
        scalars["monitor/seconds"] = time.perf_counter() - started  # what monitoring costs
        return self.judged(step, scalars, math.sqrt(test.shape[1]))

    def judged(self, step: int, scalars: dict[str, float], sqrt_dim: float) -> HookReport:
        """The report of a measurement, with the collapse alarm where it is due."""
        settings = self.settings
        rank, std_ratio = scalars["monitor/rankme"], scalars["monitor/std"] * sqrt_dim
        knn, linear = scalars["monitor/knn_top1"], scalars.get("monitor/linear_top1")
        parts = [f"kNN top-1 {knn:.2f}%"]
        postfix = {"knn": f"{knn:.1f}%"}
        if linear is not None:
            parts.append(f"linear top-1 {linear:.2f}%")
            postfix["lin"] = f"{linear:.1f}%"
        parts += [f"RankMe {rank:.1f}", f"std x sqrt(dim) {std_ratio:.3f}",
                  f"alignment {scalars['monitor/alignment']:.3f}",
                  f"uniformity {scalars['monitor/uniformity']:.3f}"]  # fmt: skip
        line = f"monitor at step {step}: " + ", ".join(parts)
        below = []
        if rank < settings.collapse_rank:
            below.append(f"RankMe {rank:.2f} < monitor.collapse_rank={settings.collapse_rank}")
        if std_ratio < settings.collapse_std:
            below.append(
                f"std x sqrt(dim) {std_ratio:.3f} < monitor.collapse_std={settings.collapse_std}"
            )
        if not below:
            return HookReport(scalars, line, postfix)
        alarm = f"the features collapsed by step {step}: {', '.join(below)}"
        stop = (
            f"{alarm} (monitor.stop_on_collapse=true); check the learning rate and the "
            "augmentations, or set monitor.stop_on_collapse=false to train on"
            if settings.stop_on_collapse
            else None
        )
        return HookReport(scalars, line, postfix, warnings=[alarm], stop=stop)

    def tensor_state(self) -> dict[str, Any] | None:
        return None if self.linear is None else {"linear": self.linear.state_dict()}

    def load_tensor_state(self, state: dict[str, Any] | None) -> None:
        if self.linear is None:
            return
        if state is None or "linear" not in state:
            log.info("monitor: the checkpoint holds no online linear classifier; it starts anew")
            return
        self.linear.load_state_dict(state["linear"])

    def record(self) -> dict[str, Any]:
        return {"every_steps": self.every, "bank_size": self.bank.count,
                "test_size": self.test.count, "knn_k": self.k,
                "knn_temperature": self.temperature, "image_size": self.side,
                "linear": self.linear is not None}  # fmt: skip


HOOKS.register(
    MONITOR,
    HookSpec(MONITOR, OnlineMonitor, enabled=lambda config: config.monitor.enabled),
)
