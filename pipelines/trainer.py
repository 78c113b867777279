"""The pretraining loop: ``train(config)``.

One function, whatever launches it (the CLI, torchrun, a SLURM job, a test):
it builds the components from the config, resumes from the run directory's
newest checkpoint when there is one, trains to ``total_steps`` and leaves a
final checkpoint and ``backbone.pt`` behind. Engines hide where the model
lives and how a step is taken, so the loop is the same on every engine.

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
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from selfsup.errors import TrainingError
from selfsup.pipelines.build import build_augment, build_model, build_train_loader
from selfsup.pipelines.checkpoint import CheckpointManager, TrainState
from selfsup.pipelines.config import RunConfig
from selfsup.pipelines.engines import Engine, build_engine
from selfsup.pipelines.loaders import TrainLoader, ViewBatch
from selfsup.pipelines.monitor import Monitor
from selfsup.pipelines.optim import build_optimizer, build_scheduler, peak_lr
from selfsup.pipelines.run_dir import (
    BACKBONE_FILE,
    CHECKPOINT_DIR,
    SUMMARY_FILE,
    attach_log_file,
    prepare_run_dir,
)
from selfsup.pipelines.seeding import derive_seed, seed_everything
from selfsup.pipelines.stopping import StopRequest
from selfsup.pipelines.throughput import Throughput, count_step_flops
from selfsup.pipelines.visuals import augmentation_grid, can_reconstruct, log_reconstructions
from selfsup.pipelines.weights import info_from_config, save_backbone
from selfsup.ssl.outputs import StepOutput

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    total_steps: int
    resumed_from_step: int | None
    final_loss: float | None
    stopped_by: str | None  # the signal that stopped training early, if any

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps


def train(config: RunConfig, engine: Engine | None = None) -> TrainResult:
    """Pretrain as configured; resume from the run directory's newest checkpoint."""
    # Shapes only, on the meta device: a backbone/method/size mismatch is refused
    # before a run directory is created or a process group is started.
    with torch.device("meta"):
        build_model(config)
    own_engine = engine is None
    engine = engine or build_engine(config)
    try:
        manager = CheckpointManager(
            config.resolved_run_dir() / CHECKPOINT_DIR,
            keep_last=config.checkpoint.keep_last,
            keep_every=config.checkpoint.keep_every,
            rank=engine.rank,
            world_size=engine.world_size,
        )
        resume_from = manager.latest() if config.checkpoint.resume else None
        run_dir = prepare_run_dir(config, resuming=resume_from is not None, is_main=engine.is_main)
        engine.barrier()
        handler = attach_log_file(run_dir) if engine.is_main else None
        try:
            result = _train(config, engine, manager, resume_from, run_dir)
            # Leave the process group together: a rank that tears it down while
            # another still writes the final files can abort in gloo's threads.
            engine.barrier()
            return result
        finally:
            if handler is not None:
                logging.getLogger("selfsup").removeHandler(handler)
                handler.close()
    finally:
        if own_engine:
            engine.close()


def optimizer_steps(
    loader: TrainLoader, accum: int, start_step: int, steps_per_epoch: int
) -> Iterator[tuple[int, list[ViewBatch]]]:
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
    engine: Engine, model: nn.Module, micro_batches: Iterable[list[torch.Tensor]], accum: int
) -> list[StepOutput]:
    """One optimizer step: forward and backward over ``accum`` micro-batches of views, then update.

    ``micro_batches`` may be a generator, so each micro-batch is made (and
    augmented) just before its forward pass. This is the whole training step;
    ``bench/train_step.py`` times it against the same step in plain torch.
    """
    outputs = []
    for i, views in enumerate(micro_batches):
        with engine.sync_context(last=i == accum - 1):
            with engine.autocast():
                output = model(views)
            engine.backward(output.loss)
        outputs.append(output)
    engine.step()
    return outputs


def _train(
    config: RunConfig,
    engine: Engine,
    manager: CheckpointManager,
    resume_from: Path | None,
    run_dir: Path,
) -> TrainResult:
    started = time.perf_counter()
    seed = config.train.seed
    seed_everything(seed)  # identical initial weights on every rank
    model = build_model(config, distributed=engine.world_size > 1)
    loader = build_train_loader(config, engine.rank, engine.world_size, engine.device)
    augment = build_augment(config).to(engine.device)
    accum = engine.grad_accum_steps
    global_batch = config.data.batch_size * engine.world_size * accum
    optimizer = build_optimizer(model, config.optim, global_batch)
    steps_per_epoch = loader.steps_per_epoch // accum
    if steps_per_epoch == 0:
        raise TrainingError(
            f"an epoch has {loader.steps_per_epoch} batches, fewer than train.grad_accum_steps="
            f"{accum}; lower train.grad_accum_steps or data.batch_size"
        )
    total_steps = config.train.max_steps or config.train.epochs * steps_per_epoch
    scheduler = build_scheduler(optimizer, config.optim, total_steps, steps_per_epoch)
    model = engine.setup(model, optimizer, channels_last=config.model.channels_last)

    state = TrainState()
    if resume_from is not None:
        state = manager.load(resume_from, engine, scheduler)
        log.info(
            "resuming from checkpoint %s at step %d/%d (epoch %d)",
            resume_from, state.step, total_steps, state.step // steps_per_epoch,
        )  # fmt: skip
    resumed_from_step = state.step if resume_from is not None else None
    log.info(
        "training %s/%s on %s: %d steps (%d per epoch), batch %d x %d process(es) x %d "
        "accumulation, peak lr %.4g, %s on %s, engine %s",
        config.method.name, config.model.backbone, config.data.dataset, total_steps,
        steps_per_epoch, config.data.batch_size, engine.world_size, accum,
        peak_lr(config.optim, global_batch), config.train.precision, engine.device, engine.name,
    )  # fmt: skip

    throughput = Throughput(_step_flops(config, accum), engine.device, config.train.peak_tflops)
    monitor = Monitor(
        run_dir,
        total_steps,
        state.step,
        global_batch,
        enabled=engine.is_main,
        throughput=throughput,
    )
    data = config.data
    first_step = state.step
    preview: torch.Tensor | None = None  # the images reconstructions are drawn for
    stop = StopRequest().install()
    last_saved = resumed_from_step
    last_loss: float | None = None
    stopped_by: str | None = None

    def save() -> None:
        nonlocal last_saved
        manager.save(
            engine,
            scheduler,
            TrainState(step=state.step, epoch=state.step // steps_per_epoch),
            extra_meta={
                "total_steps": total_steps,
                "steps_per_epoch": steps_per_epoch,
                "global_batch": global_batch,
                "samples_seen": state.step * global_batch,
                "loss": last_loss,
            },
        )
        last_saved = state.step

    def augmented(step: int, micro_batches: list[ViewBatch]) -> Iterator[list[torch.Tensor]]:
        """Each micro-batch on the device and augmented, just before its forward pass."""
        nonlocal preview
        for i, batch in enumerate(micro_batches):
            views = [v.to(engine.device, non_blocking=True) for v in batch.views]
            views = augment(views, seed=derive_seed(seed, engine.rank, step, i))
            if step == first_step and i == 0:
                grid = augmentation_grid(views, data.mean, data.std)
                monitor.add_image("train/augmentations", grid, step)
                preview = views[0][:8].clone()
            yield views

    try:
        steps = optimizer_steps(loader, accum, state.step, steps_per_epoch)
        while state.step < total_steps:
            step, micro_batches = next(steps)
            assert step == state.step
            lr = optimizer.param_groups[0]["lr"]
            for output in optimizer_step(engine, model, augmented(step, micro_batches), accum):
                monitor.record(output.loss, output.metrics)
            scheduler.step()
            state.step += 1
            monitor.advance()
            reconstructs = preview is not None and can_reconstruct(engine.unwrap())
            if reconstructs and (
                state.step % config.train.image_every == 0 or state.step == total_steps
            ):
                with engine.autocast():
                    log_reconstructions(
                        monitor, engine.unwrap(), preview, state.step, data.mean, data.std
                    )
            if state.step % config.train.log_every == 0 or state.step == total_steps:
                window = monitor.take_window()
                reduced = engine.reduce_mean(torch.stack(list(window.values())).float())
                means = dict(zip(window, reduced.tolist(), strict=True))
                last_loss = means["loss"]
                if not math.isfinite(last_loss):
                    raise TrainingError(
                        f"the loss became {last_loss} at step {state.step}; lower "
                        "optim.base_lr, set optim.clip_grad_norm, or use train.precision=fp32 "
                        f"(the last good checkpoint is in {manager.directory})"
                    )
                monitor.log(state.step, means, lr)
            stopping = engine.any_rank(bool(stop))
            due = state.step % config.checkpoint.every_steps == 0 or state.step == total_steps
            if (stopping or due) and last_saved != state.step:
                save()
            if stopping:
                stopped_by = stop.received or "a signal to another rank"
                break
    finally:
        stop.uninstall()
        monitor.close()

    if stopped_by:
        log.info(
            "stopped by %s at step %d/%d; the checkpoint is saved: run the same command to resume",
            stopped_by, state.step, total_steps,
        )  # fmt: skip
    else:
        _finish(config, engine, run_dir, state.step, total_steps, last_loss, started)
    return TrainResult(
        run_dir=run_dir,
        step=state.step,
        total_steps=total_steps,
        resumed_from_step=resumed_from_step,
        final_loss=last_loss if last_loss is not None else monitor.last_loss,
        stopped_by=stopped_by,
    )


def _step_flops(config: RunConfig, accum: int) -> float | None:
    """FLOPs of one optimizer step on one process (all its micro-batches)."""
    size, views = config.data.image_size, config.augment.num_views
    with torch.random.fork_rng(devices=[]):  # counting must not consume training's RNG
        flops = count_step_flops(
            lambda: build_model(config),
            lambda device: (
                [torch.zeros(config.data.batch_size, 3, size, size, device=device)] * views
            ),
        )
    return None if flops is None else flops * accum


def _finish(
    config: RunConfig,
    engine: Engine,
    run_dir: Path,
    step: int,
    total_steps: int,
    last_loss: float | None,
    started: float,
) -> None:
    """Export the final backbone and a summary of the run (the main process writes)."""
    state = engine.full_model_state()  # collective: every rank takes part
    if not engine.is_main:
        return
    trunk = {
        k[len("backbone.trunk.") :]: v for k, v in state.items() if k.startswith("backbone.trunk.")
    }
    info = info_from_config(config, str(run_dir / BACKBONE_FILE), run_dir, step)
    save_backbone(run_dir / BACKBONE_FILE, trunk, info)
    summary = {
        "step": step,
        "total_steps": total_steps,
        "final_loss": last_loss,
        "engine": engine.name,
        "world_size": engine.world_size,
        "seconds_this_start": round(time.perf_counter() - started, 1),
        "backbone": asdict(info) | {"run_dir": str(run_dir)},
    }
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    log.info("finished %d steps; backbone weights in %s", step, run_dir / BACKBONE_FILE)
