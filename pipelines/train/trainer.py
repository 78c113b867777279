"""The pretraining loop: ``train(config)`` and the :class:`Trainer` it runs.

One function, whatever launches it (the CLI, torchrun, a SLURM job, a test):
it prepares the run directory, builds a :class:`Trainer` from the config,
resumes from the run directory's newest checkpoint when there is one, trains
to ``total_steps`` and leaves a final checkpoint and ``backbone.pt`` behind.
Engines hide where the model lives and how a step is taken, so the loop is
the same on every engine; the checkpoint manager, built with the objects it
saves, decides when to save.

Determinism: model initialisation uses the run seed on every rank; data
order, crops and augmentations are functions of (seed, rank, epoch, step,
sample); each rank's RNG states are checkpointed. A run that is killed and
resumed on the same number of processes therefore ends with the same
weights, to the bit, as one that never stopped.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup.atomic import write_atomic
from selfsup.errors import LostPeerError, SelfsupError, TrainingError, one_line
from selfsup.logs import held_log_records
from selfsup.pipelines.checkpoint.background import BackgroundWriter
from selfsup.pipelines.checkpoint.folders import find_latest, read_meta
from selfsup.pipelines.checkpoint.manager import Cadence, CheckpointManager, TrainState
from selfsup.pipelines.checkpoint.run_dir import (
    BACKBONE_FILE,
    BACKBONE_SAFETENSORS,
    CHECKPOINT_DIR,
    SUMMARY_FILE,
    commit_run_config,
    create_run_dir,
    prepare_run_dir,
    run_log_file,
)
from selfsup.pipelines.checkpoint.run_lock import RunLock
from selfsup.pipelines.checkpoint.weights import info_from_config, save_backbone
from selfsup.pipelines.config import RunConfig
from selfsup.pipelines.data.loaders import TrainLoader, ViewBatch, global_positions
from selfsup.pipelines.runtime.engines import Engine, build_engine
from selfsup.pipelines.runtime.seeding import derive_seed, seed_everything
from selfsup.pipelines.runtime.stopping import StopRequest
from selfsup.pipelines.train import sparsity as _sparsity_hook  # noqa: F401  (registers it)
from selfsup.pipelines.train.build import (
    build_augment,
    build_model_with_teacher,
    build_train_loader,
)
from selfsup.pipelines.train.hooks import (
    HookContext,
    HookReport,
    TrainingHook,
    attach_hooks,
    hook_records,
)
from selfsup.pipelines.train.hooks import check_checkpoint as check_hook_checkpoint
from selfsup.pipelines.train.monitor import LOSS, MeanWindow, Monitor
from selfsup.pipelines.train.optim import (
    apply_schedule,
    build_optimizer,
    build_scheduler,
    configured_hyperparameters,
    peak_lr,
)
from selfsup.pipelines.train.teacher import load_teacher, require_same_teacher, teacher_record
from selfsup.pipelines.train.throughput import Throughput, count_step_flops
from selfsup.pipelines.train.visuals import augmentation_grid, log_reconstructions
from selfsup.ssl.classifier import Labelled
from selfsup.ssl.distill import FrozenTeacher
from selfsup.ssl.method import METHODS, KeyedViews
from selfsup.ssl.outputs import StepOutput
from selfsup.ssl.sparsity import fold_mask_keys

log = logging.getLogger(__name__)

# What to try after a divergence, by precision (fp32 is already the safest).
DIVERGENCE_ADVICE = {
    "fp32": "Lower optim.base_lr or set optim.clip_grad_norm.",
    "bf16": "Lower optim.base_lr, set optim.clip_grad_norm, or use train.precision=fp32.",
    "fp16": "Lower optim.base_lr, set optim.clip_grad_norm, or use train.precision=bf16.",
}


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    total_steps: int
    resumed_from_step: int | None
    final_loss: float | None
    stopped_by: str | None  # the signal that stopped training early, if any


def train(
    config: RunConfig, engine: Engine | None = None, parts: PartsFactory | None = None
) -> TrainResult:
    """Train as configured; resume from the run directory's newest checkpoint.

    ``parts`` builds the model, loader and hooks (default: pretraining with
    the configured method); fine-tuning passes its own. Everything is built
    once, before the run directory is touched: a backbone/method/size
    mismatch or a hook that cannot attach is refused before anything is written.
    """
    own_engine = engine is None
    engine = engine or build_engine(config)
    lock = None
    try:
        with held_log_records() as build_lines:  # for train.log, which does not exist yet
            setup = build_setup(config, engine, parts or pretraining_parts)
        lock = lock_run_dir(config, engine)
        checkpoints = config.resolved_run_dir() / CHECKPOINT_DIR
        resume_from = find_latest(checkpoints) if config.checkpoint.resume else None
        resuming = resume_from is not None
        if resume_from is not None:  # what the hooks cannot continue: refused before any load
            check_hook_checkpoint(config, resume_from, read_meta(resume_from))
        run_dir = prepare_run_dir(config, resuming=resuming, is_main=engine.is_main)
        engine.barrier()
        with run_log_file(run_dir, enabled=engine.is_main, earlier=build_lines):
            trainer = Trainer(config, engine, run_dir, setup)
            if resume_from is not None:
                trainer.resume(resume_from)
            commit_run_config(config, resuming=resuming, is_main=engine.is_main)
            result = trainer.run()
            # Leave the process group together: a rank that tears it down while
            # another still writes the final files can abort in gloo's threads.
            engine.barrier()
            return result
    except Exception as exc:
        lost = engine.lost_peer(exc)
        if lost is None:
            raise
        log.error("%s", lost)
        raise LostPeerError(lost) from exc
    finally:
        if lock is not None:
            lock.release()
        if own_engine:
            engine.close()


@dataclass
class TrainingSetup:
    """What a start builds from the config, once, before the run directory is touched."""

    parts: TrainParts
    hooks: dict[str, TrainingHook]  # attached to parts.model, before the optimizer exists
    accum: int  # micro-batches per optimizer step
    steps_per_epoch: int  # optimizer steps
    total_steps: int
    global_batch: int
    flops_per_step: float | None  # one optimizer step on one process; None: not counted


def build_setup(config: RunConfig, engine: Engine, parts: PartsFactory) -> TrainingSetup:
    """Seed, build the parts (the model once), count its FLOPs on a meta copy, attach hooks."""
    seed_everything(config.train.seed)  # identical initial weights on every rank
    built = parts(config, engine)
    accum = engine.grad_accum_steps
    per_epoch = built.loader.steps_per_epoch // accum
    if per_epoch == 0:
        raise TrainingError(
            f"an epoch has {built.loader.steps_per_epoch} batches, fewer than "
            f"train.grad_accum_steps={accum}; lower train.grad_accum_steps or data.batch_size"
        )
    total = config.train.max_steps or config.train.epochs * per_epoch
    flops = _step_flops(built.model, config, accum, built.keyed) if built.count_flops else None
    hooks = attach_hooks(HookContext(config, built.model, total, per_epoch, engine))
    global_batch = config.data.batch_size * engine.world_size * accum
    return TrainingSetup(built, hooks, accum, per_epoch, total, global_batch, flops)


def lock_run_dir(config: RunConfig, engine: Engine) -> RunLock | None:
    """Rank 0 creates the run directory and takes its lock; every rank learns whether it did.

    Before any checkpoint is looked for, so a second start never reads (or
    deletes) what the first one writes.
    """
    lock, refusal = None, None
    if engine.is_main:
        try:
            run_dir = create_run_dir(config)
            lock = RunLock(run_dir, config.checkpoint.lock_lease_s)
            lock.acquire(wait=config.checkpoint.wait_for_lock)
        except SelfsupError as exc:
            lock, refusal = None, exc
    if engine.any_rank(refusal is not None):
        if refusal is not None:
            raise refusal
        raise TrainingError(f"rank 0 could not lock {config.resolved_run_dir()}: see its log")
    return lock


def optimizer_steps(
    loader: TrainLoader, accum: int, start_step: int, steps_per_epoch: int
) -> Generator[tuple[int, list[ViewBatch]], None, None]:
    """``(step, micro_batches)`` from ``start_step`` on, epoch after epoch.

    Each optimizer step takes ``accum`` consecutive micro-batches of one
    epoch; a remainder shorter than that at an epoch's end is skipped, so a
    step's data depends only on its number.
    """
    step = start_step
    while True:
        epoch, offset = divmod(step, steps_per_epoch)
        group: list[ViewBatch] = []
        for batch in loader.epoch_batches(epoch, offset * accum):
            group.append(batch)
            if len(group) == accum:
                yield step, group
                step += 1
                group = []
                if step % steps_per_epoch == 0:
                    break
        else:
            raise RuntimeError(
                f"the loader ended epoch {epoch} after fewer than its {steps_per_epoch} steps"
            )


def optimizer_step(
    engine: Engine, model: nn.Module, micro_batches: Iterable[Any], accum: int
) -> list[StepOutput]:
    """One optimizer step: forward and backward over ``accum`` micro-batches, then update.

    Each micro-batch is the model's one argument: a list of views for a
    self-supervised method, :class:`~selfsup.ssl.classifier.Labelled` views
    for a supervised objective. ``micro_batches`` may be a generator, so each
    is made (and augmented) just before its forward pass. This is the whole
    training step; ``bench/train_step.py`` times it against plain torch.
    """
    outputs = []
    for i, inputs in enumerate(micro_batches):
        with engine.sync_context(last=i == accum - 1):
            with engine.autocast():
                output = model(inputs)
            engine.backward(output.loss)
        outputs.append(output)
    engine.step()
    return outputs


class Trainer:
    """One pretraining run on one engine: built from the config, resumable, stoppable.

    :meth:`run` is the loop; :meth:`step` one optimizer step; the logging
    window, the NaN check, the stop agreement and the checkpoint decision are
    methods of their own, so other loops (fine-tuning, distillation) reuse them.
    """

    def __init__(
        self, config: RunConfig, engine: Engine, run_dir: Path, setup: TrainingSetup
    ) -> None:
        self.config, self.engine, self.run_dir = config, engine, run_dir
        self.started = time.perf_counter()
        self.setup, self.parts, self.hooks = setup, setup.parts, setup.hooks
        self.loader = self.parts.loader
        self.augment = self.parts.augment.to(engine.device)
        self.accum, self.global_batch = setup.accum, setup.global_batch
        self.steps_per_epoch, self.total_steps = setup.steps_per_epoch, setup.total_steps
        # The hooks attached first (sparsity's masks): the optimizer holds the dense originals.
        model = self.parts.model
        self.optimizer = build_optimizer(
            model, config.optim, self.global_batch, self.parts.param_groups
        )
        self.scheduler = build_scheduler(
            self.optimizer, config.optim, self.total_steps, self.steps_per_epoch
        )
        self.model = engine.setup(model, self.optimizer, channels_last=config.model.channels_last)
        self.state = TrainState()
        self.checkpoints = CheckpointManager(
            run_dir / CHECKPOINT_DIR,
            engine,
            self.scheduler,
            self.state,
            Cadence(
                every_steps=config.checkpoint.every_steps,
                total_steps=self.total_steps,
                keep_last=config.checkpoint.keep_last,
                keep_every=config.checkpoint.keep_every,
            ),
            describe=self._checkpoint_meta,
            before_write=self._refuse_non_finite,
            hooks=self.hooks,
            writer=BackgroundWriter(engine.device) if config.checkpoint.async_save else None,
        )
        # Every micro-batch's loss was finite: tracked on the device, so the
        # hot path never waits for the host; read before each checkpoint.
        self.losses_finite = torch.ones((), dtype=torch.bool, device=engine.device)
        self.last_loss: float | None = None
        self.first_step = 0  # the step this start of the run began at
        self.resumed_from_step: int | None = None
        self.preview: torch.Tensor | None = None  # the images reconstructions are drawn for
        self.monitor: Monitor | None = None
        self.hook_stop: str | None = None  # a hook's reason to stop (the collapse alarm)
        # This epoch's loss and metrics, kept only when an epoch hook reads them.
        self.epoch_window = MeanWindow() if self.parts.on_epoch_end is not None else None

    def _checkpoint_meta(self) -> dict[str, object]:
        return {
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "global_batch": self.global_batch,
            "samples_seen": self.state.step * self.global_batch,
            "loss": self.last_loss,
            **self.parts.checkpoint_meta,
            **hook_records(self.hooks),
        }

    def resume(self, path: Path) -> None:
        # The checkpoint restores the optimizer's state (momenta) and the schedule's
        # position; its hyperparameters are the config's, so that a changed
        # weight decay or momentum applies as the log line of the change says.
        if self.parts.check_resume is not None:
            self.parts.check_resume(path, read_meta(path))
        with configured_hyperparameters(self.optimizer):
            self.checkpoints.load(path)
        apply_schedule(self.scheduler)
        self.resumed_from_step = self.state.step
        log.info(
            "resuming from checkpoint %s at step %d/%d (epoch %d)",
            path,
            self.state.step,
            self.total_steps,
            self.state.step // self.steps_per_epoch,
        )

    def _log_start(self) -> None:
        config, engine = self.config, self.engine
        log.info(
            "training %s/%s on %s: %d steps (%d per epoch), batch %d x %d process(es) x %d "
            "accumulation, peak lr %.4g, %s on %s, engine %s",
            self.parts.label or config.method.name,
            config.model.backbone,
            config.data.dataset,
            self.total_steps,
            self.steps_per_epoch,
            config.data.batch_size,
            engine.world_size,
            self.accum,
            peak_lr(config.optim, self.global_batch),
            config.train.precision,
            engine.device,
            engine.name,
        )
        for name, hook in self.hooks.items():
            line = hook.describe()
            if line:
                log.info("%s: %s", name, line)

    def _log_first_step(self, started: float) -> None:
        """One line with the compile time (the first step compiles the model)."""
        if self.engine.compile is None:
            return
        if self.engine.device.type == "cuda":
            torch.cuda.synchronize(self.engine.device)
        seconds = time.perf_counter() - started
        log.info(
            "torch.compile (mode %s): the first step took %.1f s, compilation included",
            self.engine.compile,
            seconds,
        )

    def run(self) -> TrainResult:
        """Train from where :meth:`resume` left (or the start) to the end or a stop signal."""
        self._log_start()
        self.first_step = self.state.step
        throughput = Throughput(
            self.setup.flops_per_step, self.engine.device, self.config.train.peak_tflops
        )
        self.monitor = Monitor(
            self.run_dir,
            self.total_steps,
            self.state.step,
            self.global_batch,
            enabled=self.engine.is_main,
            throughput=throughput,
        )
        stop = StopRequest().install()
        stopped_by: str | None = None
        steps = optimizer_steps(self.loader, self.accum, self.state.step, self.steps_per_epoch)
        try:
            while self.state.step < self.total_steps:
                started = time.perf_counter()
                self.step(*next(steps))
                if self.state.step == self.first_step + 1:
                    self._log_first_step(started)
                if self.state.step % self.steps_per_epoch == 0:
                    self._end_epoch()
                self.checkpoints.poll()  # a background write that completed is committed
                stopping = self.engine.any_rank(bool(stop) or self.hook_stop is not None)
                self.checkpoints.save(self.state.step, force=stopping)
                if stopping:
                    stopped_by = stop.received or self.hook_stop or "a signal to another rank"
                    break
            self.checkpoints.wait()  # the last checkpoint is complete before the process ends
            if self.hook_stop is not None:
                raise TrainingError(
                    f"training stopped at step {self.state.step}/{self.total_steps} with a "
                    f"checkpoint: {self.hook_stop}"
                )
        finally:
            steps.close()  # the epoch's batch iterator first, then the loader's workers
            self.loader.close()
            stop.uninstall()
            self.monitor.close()
            self.checkpoints.close()
        return self._result(stopped_by)

    def step(self, step: int, micro_batches: list[ViewBatch]) -> None:
        """One optimizer step over ``micro_batches``, then images and logging when due."""
        assert step == self.state.step and self.monitor is not None
        lr = self.optimizer.param_groups[0]["lr"]
        views = self._augmented(step, micro_batches)
        outputs = optimizer_step(self.engine, self.model, views, self.accum)
        for output in outputs:
            self.monitor.record(output.loss, output.metrics)
            if self.epoch_window is not None:
                self.epoch_window.add({LOSS: output.loss, **output.metrics})
            self.losses_finite &= torch.isfinite(output.loss.detach()).all()
        self.scheduler.step()
        self.state.step += 1
        labels = [batch.labels for batch in micro_batches]
        for hook in self.hooks.values():
            hook.observe(outputs, labels)
            hook.after_optimizer_step(self.state.step)
            self._show(hook.report(self.state.step))
        self.state.epoch = self.state.step // self.steps_per_epoch
        self.monitor.advance()
        self._maybe_log_images()
        if self._at(self.config.train.log_every):
            self._log_window(lr)

    def _show(self, report: HookReport | None) -> None:
        """A hook's measurement in TensorBoard, the progress bar and the log; its alarms."""
        if report is None:
            return
        assert self.monitor is not None
        self.monitor.show(self.state.step, report.scalars, report.postfix)
        log.info("%s", report.line)
        for warning in report.warnings:
            log.warning("%s", warning)
            self.monitor.add_text("alarms", warning, self.state.step)
        if report.stop is not None:
            self.hook_stop = report.stop

    def _at(self, every: int) -> bool:
        """True every ``every`` steps and at the last step."""
        return self.state.step % every == 0 or self.state.step == self.total_steps

    def _augmented(self, step: int, micro_batches: list[ViewBatch]) -> Iterator[Any]:
        """Each micro-batch on the device, augmented, as the model's input, just before its use."""
        engine, data, seed = self.engine, self.config.data, self.config.train.seed
        for i, batch in enumerate(micro_batches):
            views = [v.to(engine.device, non_blocking=True) for v in batch.views]
            batch_seed = derive_seed(seed, engine.rank, step, i)
            views = self.augment(views, seed=batch_seed)
            if step == self.first_step and i == 0:
                assert self.monitor is not None
                grid = augmentation_grid(views, data.mean, data.std)
                self.monitor.add_image("train/augmentations", grid, step)
                self.preview = views[0][:8].clone()
            if self.parts.keyed:
                where = global_positions(engine.rank, engine.world_size, i, len(batch.labels))
                yield KeyedViews(views, seed, step, where)
            elif self.parts.inputs is None:
                yield views
            else:
                yield self.parts.inputs(views, batch.labels.to(engine.device), batch_seed)

    def epoch_means(self) -> dict[str, float]:
        """This epoch's mean loss and metrics over every rank (collective; one device sync)."""
        local = self.epoch_window.means() if self.epoch_window is not None else {}
        if not local:
            return {}
        reduced = self.engine.reduce_mean(torch.stack(list(local.values())))
        return dict(zip(local, reduced.tolist(), strict=True))

    def _end_epoch(self) -> None:
        """The parts' epoch hook (validation, for one), then a fresh epoch's window."""
        if self.parts.on_epoch_end is not None:
            self.parts.on_epoch_end(self)
            self.epoch_window = MeanWindow()

    def _maybe_log_images(self) -> None:
        model = self.engine.unwrap()
        if self.preview is None or not self.parts.reconstructs:
            return
        if self._at(self.config.train.image_every):
            assert self.monitor is not None
            data = self.config.data
            with self.engine.autocast():
                log_reconstructions(
                    self.monitor, model, self.preview, self.state.step, data.mean, data.std
                )

    def _log_window(self, lr: float) -> None:
        """Average the window over ranks, refuse a non-finite loss, log it."""
        assert self.monitor is not None
        window = self.monitor.take_window()
        reduced = self.engine.reduce_mean(torch.stack(list(window.values())).float())
        means = dict(zip(window, reduced.tolist(), strict=True))
        self.last_loss = means["loss"]
        if not math.isfinite(self.last_loss):
            raise self._diverged(f"the loss became {self.last_loss}")
        self.monitor.log(self.state.step, means, lr)
        for hook in self.hooks.values():
            for tag, value in hook.scalars(self.state.step).items():
                self.monitor.add_scalar(tag, value, self.state.step)

    def _refuse_non_finite(self) -> None:
        """Before any checkpoint: every loss since the start and every weight must be finite."""
        finite = bool(self.losses_finite) and self.engine.weights_finite()
        if self.engine.any_rank(not finite):  # collective: every rank stops together
            raise self._diverged("a loss or a weight became non-finite")

    def _diverged(self, what: str) -> TrainingError:
        newest = self.checkpoints.latest()
        where = (
            f"the newest checkpoint, {newest}, has finite weights (each is checked before it is "
            "written) and a rerun of the same command resumes from it"
            if newest is not None
            else "no checkpoint was written"
        )
        return TrainingError(
            f"{what} by step {self.state.step}; nothing non-finite was saved: {where}. "
            f"{DIVERGENCE_ADVICE[self.config.train.precision]}"
        )

    def _result(self, stopped_by: str | None) -> TrainResult:
        step, total = self.state.step, self.total_steps
        if stopped_by:
            log.info(
                "stopped by %s at step %d/%d; the checkpoint is saved: run the same command "
                "to resume",
                stopped_by,
                step,
                total,
            )
        else:
            _finish(self, step, total)
        assert self.monitor is not None
        return TrainResult(
            run_dir=self.run_dir,
            step=step,
            total_steps=total,
            resumed_from_step=self.resumed_from_step,
            final_loss=self.last_loss if self.last_loss is not None else self.monitor.last_loss,
            stopped_by=stopped_by,
        )


@dataclass
class TrainParts:
    """What a training run trains and how: built after the run's seed is set, on every rank.

    ``model(inputs)`` returns a StepOutput; ``inputs`` is the list of augmented
    views, or what ``inputs(views, labels, seed)`` makes of them (labelled
    views for fine-tuning). ``on_epoch_end(trainer)`` runs on every rank after
    an epoch's last step, before that step's checkpoint; ``export(trainer,
    state)`` writes the final weights on the main process (default: the
    backbone as ``backbone.pt``) and returns the file.
    """

    model: nn.Module
    loader: TrainLoader
    augment: nn.Module
    param_groups: list[dict[str, Any]] | None = None  # default: decay / no-decay split
    inputs: Callable[[list[torch.Tensor], torch.Tensor, int], Any] | None = None
    on_epoch_end: Callable[[Trainer], None] | None = None
    export: Callable[[Trainer, dict[str, torch.Tensor]], Path] | None = None
    count_flops: bool = True  # the method's FLOPs per step, for MFU
    reconstructs: bool = False  # the model draws reconstructions (MethodSpec.reconstructs)
    keyed: bool = False  # the model takes KeyedViews (MethodSpec.keyed)
    evaluates: str = "backbone."  # the exported backbone's prefix (MethodSpec.evaluates)
    label: str | None = None  # what the start-up log line calls the objective (the method)
    # Extra meta.json / summary.json entries (a distillation's teacher), and a
    # check of a checkpoint's meta.json before resuming from it.
    checkpoint_meta: dict[str, Any] = field(default_factory=dict)
    check_resume: Callable[[Path, dict[str, Any]], None] | None = None


PartsFactory = Callable[[RunConfig, Engine], TrainParts]


def pretraining_parts(config: RunConfig, engine: Engine) -> TrainParts:
    """The configured method on the configured backbone, multi-view loader and augmentation."""
    spec = METHODS.get(config.method.name)
    teacher = load_teacher(config)  # read and fingerprinted once per start
    parts = TrainParts(
        model=build_model_with_teacher(config, teacher, distributed=engine.world_size > 1),
        loader=build_train_loader(config, engine.rank, engine.world_size, engine.device),
        augment=build_augment(config),
        inputs=with_labels if spec.uses_labels else None,
        reconstructs=spec.reconstructs,
        keyed=spec.keyed,
        evaluates=spec.evaluates,
    )
    return with_teacher_checks(parts, teacher)


def with_teacher_checks(parts: TrainParts, teacher: FrozenTeacher | None) -> TrainParts:
    """A distillation's parts: checkpoints record the teacher; resuming checks it is the same."""
    if teacher is not None:
        parts.checkpoint_meta = teacher_record(teacher)
        parts.check_resume = partial(require_same_teacher, teacher)
    return parts


def with_labels(views: list[torch.Tensor], labels: torch.Tensor, seed: int) -> Labelled:
    """The input of an objective that reads labels (``method.name=supervised``)."""
    return Labelled(views, labels)


def _step_flops(
    model: nn.Module, config: RunConfig, accum: int, keyed: bool = False
) -> float | None:
    """FLOPs of one optimizer step on one process (all its micro-batches), on a meta copy;
    ``keyed``: the model takes KeyedViews."""
    size, views, batch = config.data.image_size, config.augment.num_views, config.data.batch_size

    def inputs(device: torch.device) -> Any:
        images = [torch.zeros(batch, 3, size, size, device=device)] * views
        return KeyedViews(images, 0, 0, torch.arange(batch)) if keyed else images

    flops = count_step_flops(model, inputs)
    return None if flops is None else flops * accum


def export_backbone_file(trainer: Trainer, state: dict[str, torch.Tensor]) -> Path:
    """The pretraining export: the backbone's trunk as ``backbone.pt`` and ``.safetensors``."""
    config, run_dir = trainer.config, trainer.run_dir
    prefix = f"{trainer.parts.evaluates}trunk."  # I-JEPA: its target encoder's
    trunk = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    info = info_from_config(config, str(run_dir / BACKBONE_FILE), run_dir, trainer.state.step)
    save_backbone(run_dir / BACKBONE_FILE, trunk, info)
    save_backbone(run_dir / BACKBONE_SAFETENSORS, trunk, info)  # the same, carrying no code
    return run_dir / BACKBONE_FILE


def _finish(trainer: Trainer, step: int, total_steps: int) -> None:
    """Export the final weights and a summary of the run (the main process writes)."""
    engine, run_dir = trainer.engine, trainer.run_dir
    # Collective: every rank takes part. Sparsity masks are folded in (real zeros).
    state = fold_mask_keys(engine.full_model_state())
    if not engine.is_main:
        return
    export = trainer.parts.export or export_backbone_file
    try:
        exported = export(trainer, state)
    except OSError as exc:  # a full disk: the final checkpoint is already saved
        raise TrainingError(
            f"cannot write the final weights into {run_dir} ({one_line(exc)}); training finished "
            f"and its final checkpoint is saved: free space, then `selfsup checkpoint export "
            f"{run_dir} OUT.pt`"
        ) from None
    last_loss, started = trainer.last_loss, trainer.started
    info = info_from_config(trainer.config, str(exported), run_dir, step)
    summary = {
        "step": step,
        "total_steps": total_steps,
        "final_loss": last_loss,
        "engine": engine.name,
        "world_size": engine.world_size,
        "seconds_this_start": round(time.perf_counter() - started, 1),
        "backbone": asdict(info) | {"run_dir": str(run_dir)},
        **trainer.parts.checkpoint_meta,
        **hook_records(trainer.hooks),
    }
    write_atomic(run_dir / SUMMARY_FILE, json.dumps(summary, indent=1))
    log.info("finished %d steps; weights in %s", step, exported)
