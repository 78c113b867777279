"""One phase of a fine-tune recipe as a Trainer run: its config, its parts, its epoch hook."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfsup.errors import DataError
from selfsup.eval.finetune.classify import load_classifier_state, predict, save_classifier, score
from selfsup.eval.finetune.data import Splits
from selfsup.eval.finetune.history import History
from selfsup.eval.finetune.recipes import Phase
from selfsup.pipelines.checkpoint.weights import BackboneInfo
from selfsup.pipelines.config import (
    AugmentConfig,
    CheckpointConfig,
    DataConfig,
    FinetuneConfig,
    ModelConfig,
    RunConfig,
)
from selfsup.pipelines.data.augment import BatchAugment
from selfsup.pipelines.data.loaders import TorchvisionTrainLoader, ViewSpec, eval_loader
from selfsup.pipelines.runtime.cpus import loader_workers
from selfsup.pipelines.runtime.engines import Engine
from selfsup.pipelines.train.optim import layer_decay_groups
from selfsup.pipelines.train.trainer import PartsFactory, Trainer, TrainParts, with_teacher_checks
from selfsup.ssl.backbones import is_vit_backbone
from selfsup.ssl.classifier import Classifier, Labelled, SupervisedConfig, SupervisedObjective
from selfsup.ssl.distill import FrozenTeacher
from selfsup.ssl.sparsity import fold_mask_keys

CLASSIFIER_FILE = "classifier.pt"
# MAE/BEiT fine-tuning defaults: 0.65 up to ViT-B, 0.75 for larger ViTs.
LAYER_DECAY = {"vit_tiny": 0.65, "vit_small": 0.65, "vit_base": 0.65}
LARGER_VIT_LAYER_DECAY = 0.75


@dataclass
class PhaseInputs:
    """What every phase of one fine-tune shares."""

    info: BackboneInfo
    trunk: dict[str, torch.Tensor]  # the starting weights (pretrained or scratch)
    splits: Splits
    ft: FinetuneConfig
    image_size: int
    init: str  # pretrained | distilled | scratch
    dataset: str
    teacher: FrozenTeacher | None = None  # distilled: the frozen teacher classifier


def steps_per_epoch(train_images: int, batch_size: int, world_size: int) -> int:
    steps = (train_images // world_size) // batch_size
    if steps == 0:
        raise DataError(
            f"{train_images} training images make no full batch of {batch_size} per process on "
            f"{world_size} process(es); lower finetune.batch_size or raise finetune.train_samples"
        )
    return steps


def phase_config(
    run: RunConfig,
    inputs: PhaseInputs,
    phase: Phase,
    phase_dir: Path,
    per_epoch: int,
    engine: Engine,
) -> RunConfig:
    """The Trainer's config for one phase (saved as the phase's ``config.yaml``)."""
    ft, info = inputs.ft, inputs.info
    return dataclasses.replace(
        run,
        name=f"finetune-{inputs.dataset}-{phase.name}",
        run_dir=str(phase_dir),
        data=DataConfig(
            dataset=inputs.dataset,
            path=ft.data_path,
            image_size=inputs.image_size,
            batch_size=ft.batch_size,
            num_workers=ft.num_workers,
            mean=list(info.mean),
            std=list(info.std),
        ),
        augment=AugmentConfig(
            num_views=1,
            crop_scale=list(ft.crop_scale),
            hflip_prob=ft.hflip_prob,
            color_jitter_prob=0.0,
            grayscale_prob=0.0,
            blur_prob=0.0,
            solarize_prob=0.0,
        ),
        model=ModelConfig(
            backbone=info.name,
            source=info.source,
            cifar_stem=info.cifar_stem,
            patch_size=info.patch_size,
            pool=info.pool,
            channels_last=run.model.channels_last,
        ),
        optim=dataclasses.replace(ft.optim, base_lr=ft.optim.base_lr * phase.lr_factor),
        train=dataclasses.replace(
            run.train,
            epochs=phase.epochs,
            max_steps=None,
            log_every=ft.log_every,
            engine=engine.name,
            grad_accum_steps=1,
        ),
        checkpoint=CheckpointConfig(every_steps=per_epoch, keep_last=1),
        # A sparse fine-tune prunes once, before its first step, and keeps the masks:
        # a sparse backbone's zeros are its smallest weights, so they stay the zeros.
        sparsity=dataclasses.replace(run.sparsity, schedule="one_shot", start=0),
        method=SupervisedConfig(
            num_classes=inputs.splits.num_classes,
            head_hidden=list(ft.head_hidden),
            head_dropout=ft.head_dropout,
            label_smoothing=ft.label_smoothing,
        ),
    )


def phase_parts(
    inputs: PhaseInputs,
    phase: Phase,
    previous: Path | None,
    history: History,
    epochs_before: int,
) -> PartsFactory:
    """Builds the phase's classifier, loader, augmentation and hooks (after the run's seed)."""

    def build(config: RunConfig, engine: Engine) -> TrainParts:
        classifier = starting_classifier(inputs, previous)
        if phase.frozen_base:
            classifier.freeze_base()
        ft, teacher = inputs.ft, inputs.teacher
        objective = SupervisedObjective(
            classifier, ft.label_smoothing, teacher, ft.distill_temperature, ft.distill_alpha
        )
        parts = TrainParts(
            model=objective,
            loader=_loader(inputs, config, engine),
            augment=BatchAugment(
                config.augment,
                inputs.image_size,
                list(inputs.info.mean),
                list(inputs.info.std),
                config.model.channels_last,
            ),
            param_groups=_layer_decay(objective, inputs, config, phase),
            inputs=_mixing(inputs),
            on_epoch_end=Validator(inputs, history, epochs_before, phase),
            export=partial(export_phase, inputs),
            count_flops=False,
            label=f"fine-tune ({inputs.init}, {phase.name})",
        )
        return with_teacher_checks(parts, teacher)

    return build


def starting_classifier(inputs: PhaseInputs, previous: Path | None) -> Classifier:
    """A phase's starting point: the start's backbone and a new head, or the last phase's."""
    ft = inputs.ft
    backbone = inputs.info.build(image_size=inputs.image_size, drop_path=_drop_path(inputs))
    classifier = Classifier(
        backbone, inputs.splits.num_classes, list(ft.head_hidden), ft.head_dropout
    )
    if previous is None:
        backbone.trunk.load_state_dict(inputs.trunk)
    else:
        classifier.load_state_dict(load_classifier_state(previous)["state_dict"])
    return classifier


def _drop_path(inputs: PhaseInputs) -> float:
    return inputs.ft.drop_path if is_vit_backbone(inputs.info.name) else 0.0


def _loader(inputs: PhaseInputs, config: RunConfig, engine: Engine) -> TorchvisionTrainLoader:
    ft = inputs.ft
    low, high = ft.crop_scale
    spec = ViewSpec(
        image_size=inputs.image_size,
        crop_scale=(float(low), float(high)),
        num_views=1,
        batch_size=ft.batch_size,
        num_workers=loader_workers(ft.num_workers),
        seed=config.train.seed,
        rank=engine.rank,
        world_size=engine.world_size,
        crop=ft.crop,
        padding=ft.crop_padding,
        randaugment=ft.randaugment,
    )
    return TorchvisionTrainLoader(
        inputs.splits.train, spec, pin_memory=engine.device.type == "cuda"
    )


def layer_decay_for(inputs: PhaseInputs) -> float | None:
    """The configured layer-wise decay, the backbone's default, or None (ResNets, or 1.0)."""
    if not is_vit_backbone(inputs.info.name):
        return None
    decay = inputs.ft.layer_decay
    if decay is None:
        decay = LAYER_DECAY.get(inputs.info.name, LARGER_VIT_LAYER_DECAY)
    return None if decay == 1.0 else decay


def _layer_decay(
    objective: SupervisedObjective, inputs: PhaseInputs, config: RunConfig, phase: Phase
) -> list[dict[str, Any]] | None:
    decay = layer_decay_for(inputs)
    if decay is None or phase.frozen_base:
        return None
    return layer_decay_groups(objective, objective.backbone.trunk, config.optim, decay)


def _mixing(inputs: PhaseInputs) -> Any:
    """Labelled views, mixed by timm's Mixup/CutMix when configured (seeded per batch)."""
    ft = inputs.ft
    mixup = None
    if ft.mixup > 0 or ft.cutmix > 0:
        from timm.data import Mixup

        mixup = Mixup(
            mixup_alpha=ft.mixup,
            cutmix_alpha=ft.cutmix,
            label_smoothing=ft.label_smoothing,
            num_classes=inputs.splits.num_classes,
        )

    def make(views: list[torch.Tensor], labels: torch.Tensor, seed: int) -> Labelled:
        if mixup is None:
            return Labelled(views, labels)
        # timm draws from numpy's global generator: seed it per batch (and put it
        # back), so mixing is a function of the step like every other draw.
        state = np.random.get_state()
        np.random.seed(seed % 2**32)
        try:
            mixed, targets = mixup(views[0], labels)
        finally:
            np.random.set_state(state)
        return Labelled([mixed], targets)

    return make


def export_phase(inputs: PhaseInputs, trainer: Trainer, state: dict[str, torch.Tensor]) -> Path:
    """The phase's final weights, for the next phase to start from."""
    path = trainer.run_dir / CLASSIFIER_FILE
    save_classifier(
        path,
        classifier_weights(state),
        inputs.info,
        inputs.splits.classes,
        list(inputs.ft.head_hidden),
        {"phase": trainer.run_dir.name},
    )
    return path


def classifier_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The classifier's tensors of a fine-tune objective's whole state, by their own names."""
    prefix = "classifier."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


class Validator:
    """Epoch hook: validation loss/accuracy, the history entry, the best weights so far."""

    def __init__(self, inputs: PhaseInputs, history: History, epochs_before: int, phase: Phase):
        self.inputs, self.history, self.epochs_before, self.phase = (
            inputs,
            history,
            epochs_before,
            phase,
        )
        ft = inputs.ft
        self.batches = eval_loader(
            inputs.splits.val, inputs.image_size, ft.batch_size, loader_workers(ft.num_workers)
        )

    def __call__(self, trainer: Trainer) -> None:
        info = self.inputs.info
        # Every rank predicts (FSDP gathers the sharded weights for it, a collective);
        # the RNG is forked because the loader's workers draw a seed.
        with trainer.engine.gathered() as objective, torch.random.fork_rng(devices=[]):
            assert isinstance(objective, SupervisedObjective)
            logits, labels = predict(
                objective.classifier,
                self.batches,
                trainer.engine.device,
                info.mean,
                info.std,
                trainer.engine.dtype,
            )
        objective.train()  # a frozen base stays in eval mode (Classifier.train)
        val = score(logits, labels, self.inputs.splits.num_classes)
        epoch = self.epochs_before + trainer.state.step // trainer.steps_per_epoch
        means = trainer.epoch_means()
        entry = {
            "epoch": epoch,
            "phase": self.phase.name,
            "step": trainer.state.step,
            "train_loss": means.get("loss"),
            "train_accuracy": means.get("accuracy"),
            "val_loss": val.loss,
            "val_accuracy": val.accuracy,
            "lr": max(g["lr"] for g in trainer.optimizer.param_groups),
        }
        best = self.history.best_before(epoch)
        self.history.record(entry)
        self._log(trainer, entry)
        engine = trainer.engine
        # Rank 0's verdict for all (under FSDP each rank's BatchNorm statistics are its
        # own); then every rank takes part in gathering the weights.
        if engine.any_rank(engine.is_main and (best is None or val.accuracy > best)):
            state = classifier_weights(engine.full_model_state())
            if not engine.is_main:
                return
            save_classifier(
                self.history.path.parent / CLASSIFIER_FILE,
                fold_mask_keys(state),  # a sparse run's real zeros
                info,
                self.inputs.splits.classes,
                list(self.inputs.ft.head_hidden),
                {"epoch": epoch, "val_accuracy": val.accuracy, "init": self.inputs.init},
            )

    @staticmethod
    def _log(trainer: Trainer, entry: dict[str, Any]) -> None:
        assert trainer.monitor is not None
        step = trainer.state.step
        for tag, key in (
            ("epoch/train_loss", "train_loss"),
            ("epoch/train_accuracy", "train_accuracy"),
            ("epoch/val_loss", "val_loss"),
            ("epoch/val_accuracy", "val_accuracy"),
            ("epoch/lr", "lr"),
        ):
            if entry[key] is not None:
                trainer.monitor.add_scalar(tag, entry[key], step)
