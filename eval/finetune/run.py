"""Fine-tune transfer: a pretrained backbone and a head trained on a labelled dataset.

Recipes (``finetune.recipe``, YAML in ``configs/finetune/``):

- ``head_then_unfreeze``: phase 1 trains an MLP head on the frozen base
  (weights *and* BatchNorm statistics frozen: the base runs in eval mode);
  phase 2 unfreezes the base and trains everything at
  ``unfreeze_lr_factor`` x the rate, BatchNorm statistics updating again;
- ``full``: every layer from the start (layer-wise rate decay and drop-path
  for ViTs);
- ``linear``: the frozen-feature probe (:mod:`selfsup.eval.frozen.probe`).

Each phase is a run of the pretraining :class:`~selfsup.pipelines.train.trainer.Trainer`
with fine-tuning parts (a :class:`~selfsup.ssl.classifier.SupervisedObjective`,
a one-view loader, flip-only augmentation), so engines, precision,
checkpoints with exact resume, TensorBoard and the progress bar are the
pretraining ones. Every epoch ends with validation on held-out training
images; the best epoch's weights are kept and scored once on the test split.
The same recipe runs from the backbone's random initialisation ("scratch":
the weights its pretraining started from) as the control.

Layout, under ``<run>/finetune/<dataset>/<recipe>/``::

    pretrained/ scratch/        one fine-tune each (and distilled/ with finetune.teacher)
        <phase>/                a phase's run directory (config, checkpoints, tb, train.log)
        history.json            per-epoch train and validation loss/accuracy, best epoch
        classifier.pt           the best epoch's weights (weights-only)
    report.json, report.md      test scores, per-class accuracy, curves and confusion plots
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from selfsup.errors import ConfigError
from selfsup.eval.finetune.classify import SplitScores, predict, score
from selfsup.eval.finetune.data import Splits, load_splits
from selfsup.eval.finetune.history import History
from selfsup.eval.finetune.phase import (
    CLASSIFIER_FILE,
    PhaseInputs,
    phase_config,
    phase_parts,
    starting_classifier,
    steps_per_epoch,
)
from selfsup.eval.finetune.recipes import Phase, recipe, recipe_phases
from selfsup.eval.finetune.reference import SUPERVISED, supervised_trunk
from selfsup.eval.finetune.teacher import load_teacher_classifier
from selfsup.eval.frozen.probe import initial_backbone, probe
from selfsup.pipelines.checkpoint.weights import BackboneInfo, load_backbone
from selfsup.pipelines.config import FinetuneConfig, RunConfig
from selfsup.pipelines.data.loaders import eval_loader
from selfsup.pipelines.runtime.cpus import loader_workers
from selfsup.pipelines.runtime.distributed import detect_env
from selfsup.pipelines.runtime.engines import PRECISIONS, Engine, build_engine
from selfsup.pipelines.train.trainer import train
from selfsup.ssl.backbones import is_vit_backbone

log = logging.getLogger(__name__)

FINETUNE_DIR = "finetune"
INITS = ("pretrained", "distilled", "scratch", SUPERVISED)


@dataclass
class InitResult:
    """One fine-tune (pretrained or scratch) of one recipe on one dataset."""

    init: str
    test: SplitScores
    best_epoch: int  # over all phases, 1-based
    best_val_accuracy: float
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RecipeResult:
    dataset: str
    recipe: str
    classes: list[str]
    train_images: int
    val_images: int
    test_images: int
    image_size: int
    results: dict[str, InitResult] = field(default_factory=dict)  # by init
    linear: dict[str, Any] | None = None  # recipe linear: the probe's result


@dataclass
class Source:
    """The backbone being evaluated: its starting weights by init, and what it is."""

    info: BackboneInfo
    run_config: RunConfig
    trunks: dict[str, dict[str, torch.Tensor]]  # init -> trunk state


def load_source(path: str | Path, run_config: RunConfig) -> Source:
    """The weights at ``path``, and the run's initial ones when ``finetune.baseline`` is on."""
    trained, info = load_backbone(path)
    trunks = {"pretrained": trained.trunk.state_dict()}
    if run_config.finetune.teacher:  # the same start, with the teacher's soft targets
        trunks["distilled"] = trunks["pretrained"]
    if run_config.finetune.baseline:
        trunks["scratch"] = initial_backbone(info).trunk.state_dict()
    if run_config.finetune.supervised:  # a library's ImageNet classifier: a third reference
        trunks[SUPERVISED] = supervised_trunk(run_config.finetune.supervised, info)
    return Source(info=info, run_config=run_config, trunks=trunks)


def output_dir(source: Source, out: str | None) -> Path:
    """``--out``, else the run directory, else the folder of the weights file."""
    if out:
        if Path(out).exists() and not Path(out).is_dir():
            raise ConfigError(f"--out {out} is a file; give a folder for finetune/ to go into")
        return Path(out)
    return source.info.run_dir or Path(source.info.origin).parent


def finetune(source: Source, out_dir: Path, device: str) -> list[RecipeResult]:
    """Run the ``finetune:`` settings' recipe on each of their datasets; write each report."""
    from selfsup.eval.reports.finetune import write_recipe_report

    ft = source.run_config.finetune
    image_size = _image_size(source.info, ft)
    results: list[RecipeResult] = []
    if recipe(ft.recipe).phases is None:
        return [_linear(source, ft, name, out_dir, image_size, device) for name in ft.datasets]
    engine = _engine(source.run_config, device)
    try:
        for name in ft.datasets:
            result = _finetune_dataset(source, ft, name, out_dir, image_size, engine)
            if engine.is_main:
                write_recipe_report(result, out_dir / FINETUNE_DIR / name / ft.recipe, ft)
            results.append(result)
    finally:
        engine.close()
    return results


def _image_size(info: BackboneInfo, ft: FinetuneConfig) -> int:
    size = ft.image_size or info.image_size
    if is_vit_backbone(info.name) and size != info.image_size:
        raise ConfigError(
            f"finetune.image_size={size}, but the {info.name} backbone was trained at "
            f"{info.image_size} px and its position embedding is fixed to that grid; leave "
            "finetune.image_size unset"
        )
    return size


def _engine(run_config: RunConfig, device: str) -> Engine:
    """single in one process; under torchrun/srun finetune.engine, else the run's engine
    (ddp for a one-process run)."""
    name = run_config.finetune.engine or run_config.train.engine
    if name == "deepspeed":
        raise ConfigError(
            "fine-tuning runs on the single, ddp and fsdp engines; set finetune.engine=ddp "
            "(or fsdp)"
        )
    env = detect_env()
    engine = (name if name != "single" else "ddp") if env.distributed else "single"
    # The fine-tune's optimizer section: the engine clips gradients by its clip_grad_norm.
    config = RunConfig(
        train=dataclasses.replace(run_config.train, engine=engine, device=device),
        optim=run_config.finetune.optim,
    )
    return build_engine(config, env)


def _finetune_dataset(
    source: Source, ft: FinetuneConfig, name: str, out_dir: Path, image_size: int, engine: Engine
) -> RecipeResult:
    seed = source.run_config.train.seed
    splits = load_splits(
        name, ft.data_path, ft.val_fraction, ft.train_samples, ft.test_samples, seed
    )
    result = RecipeResult(
        dataset=name,
        recipe=ft.recipe,
        classes=splits.classes,
        train_images=len(splits.train),
        val_images=len(splits.val),
        test_images=len(splits.test),
        image_size=image_size,
    )
    recipe_dir = out_dir / FINETUNE_DIR / name / ft.recipe
    teacher = None
    if "distilled" in source.trunks:
        teacher = load_teacher_classifier(ft.teacher, name, splits.classes, source.info)
    for init, trunk in source.trunks.items():
        log.info(
            "fine-tuning (%s, %s) on %s: %d train / %d validation / %d test images at %d px",
            ft.recipe,
            init,
            name,
            len(splits.train),
            len(splits.val),
            len(splits.test),
            image_size,
        )
        inputs = PhaseInputs(
            source.info,
            trunk,
            splits,
            ft,
            image_size,
            init,
            name,
            teacher=teacher if init == "distilled" else None,
        )
        result.results[init] = _finetune_init(source, inputs, recipe_dir / init, engine)
    return result


def _finetune_init(
    source: Source, inputs: PhaseInputs, init_dir: Path, engine: Engine
) -> InitResult:
    """Every phase of the recipe in turn (each resumable), then the test score of the best."""
    ft = inputs.ft
    history = History(init_dir / "history.json", enabled=engine.is_main)
    previous: Path | None = None
    epochs_before = 0
    per_epoch = steps_per_epoch(len(inputs.splits.train), ft.batch_size, engine.world_size)
    for phase in recipe_phases(ft):
        phase_dir = init_dir / phase.name
        config = phase_config(source.run_config, inputs, phase, phase_dir, per_epoch, engine)
        parts = phase_parts(inputs, phase, previous, history, epochs_before)
        train(config, engine, parts=parts)
        previous = phase_dir / "classifier.pt"
        epochs_before += phase.epochs
    engine.barrier()  # the main process wrote the best weights
    return _score_best(inputs, history, init_dir, engine)


def _score_best(
    inputs: PhaseInputs, history: History, init_dir: Path, engine: Engine
) -> InitResult:
    best = history.reload().best()
    classifier = starting_classifier(inputs, init_dir / CLASSIFIER_FILE)
    info, ft = inputs.info, inputs.ft
    batches = eval_loader(
        inputs.splits.test, inputs.image_size, ft.batch_size, loader_workers(ft.num_workers)
    )
    dtype = PRECISIONS.get(engine.precision)
    logits, labels = predict(
        classifier.to(engine.device), batches, engine.device, info.mean, info.std, dtype
    )
    test = score(logits, labels, inputs.splits.num_classes)
    log.info(
        "%s (%s) on %s: test %.2f%% with epoch %d (validation %.2f%%)",
        ft.recipe,
        inputs.init,
        inputs.dataset,
        test.accuracy,
        best["epoch"],
        best["val_accuracy"],
    )
    return InitResult(
        init=inputs.init,
        test=test,
        best_epoch=int(best["epoch"]),
        best_val_accuracy=float(best["val_accuracy"]),
        history=history.epochs,
    )


def _linear(
    source: Source, ft: FinetuneConfig, name: str, out_dir: Path, image_size: int, device: str
) -> RecipeResult:
    """Recipe ``linear``: the frozen-feature probe with the fine-tune's data sizes."""
    from selfsup.eval.reports.finetune import write_recipe_report

    settings = dataclasses.replace(
        source.run_config.probe,
        datasets=[name],
        data_path=ft.data_path,
        train_samples=ft.train_samples,
        test_samples=ft.test_samples,
        baseline=ft.baseline,
        image_size=image_size,
    )
    outcome = probe(source.info.origin, settings, device=device)
    (probed,) = outcome.results
    result = RecipeResult(
        dataset=name,
        recipe="linear",
        classes=[],
        train_images=probed.train_images,
        val_images=0,
        test_images=probed.test_images,
        image_size=image_size,
        linear={
            "pretrained": asdict(probed.trained),
            "scratch": asdict(probed.random_init) if probed.random_init else None,
        },
    )
    write_recipe_report(result, out_dir / FINETUNE_DIR / name / "linear", ft)
    return result


__all__ = ["FINETUNE_DIR", "INITS", "Phase", "RecipeResult", "Splits", "finetune", "load_source"]
