"""The pretraining loop: ``train(config)``.

One function, whatever launches it (the CLI, a SLURM job, a test): it builds
the components from the config, resumes from the run directory's newest
checkpoint when there is one, trains to ``total_steps`` and leaves a final
checkpoint and ``backbone.pt`` behind. Engines hide where the model lives
and how a step is taken, so the loop is the same on every engine.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from selfsup.errors import TrainingError
from selfsup.pipelines.build import build_augment, build_model, build_train_loader
from selfsup.pipelines.checkpoint import CheckpointManager, TrainState
from selfsup.pipelines.config import RunConfig
from selfsup.pipelines.engine import Engine, build_engine, resolve_device
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
from selfsup.pipelines.weights import info_from_config, save_backbone

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
    if engine is None:
        device = resolve_device(config.train.device)
        engine = build_engine(
            config.train.engine, device, config.train.precision, config.optim.clip_grad_norm
        )
    manager = CheckpointManager(
        config.resolved_run_dir() / CHECKPOINT_DIR,
        keep_last=config.checkpoint.keep_last,
        keep_every=config.checkpoint.keep_every,
        rank=engine.rank,
        world_size=engine.world_size,
    )
    resume_from = manager.latest() if config.checkpoint.resume else None
    run_dir = prepare_run_dir(config, resuming=resume_from is not None, is_main=engine.is_main)
    handler = attach_log_file(run_dir) if engine.is_main else None
    try:
        return _train(config, engine, manager, resume_from, run_dir)
    finally:
        if handler is not None:
            logging.getLogger("selfsup").removeHandler(handler)
            handler.close()


def _train(
    config: RunConfig,
    engine: Engine,
    manager: CheckpointManager,
    resume_from: Path | None,
    run_dir: Path,
) -> TrainResult:
    started = time.perf_counter()
    seed_everything(config.train.seed)  # identical initial weights on every rank
    model = build_model(config, distributed=engine.world_size > 1)
    loader = build_train_loader(config, engine.rank, engine.world_size, engine.device)
    augment = build_augment(config).to(engine.device)
    global_batch = config.data.batch_size * engine.world_size
    optimizer = build_optimizer(model, config.optim, global_batch)
    steps_per_epoch = loader.steps_per_epoch
    total_steps = config.train.max_steps or config.train.epochs * steps_per_epoch
    scheduler = build_scheduler(optimizer, config.optim, total_steps, steps_per_epoch)
    model = engine.setup(model, optimizer, channels_last=config.model.channels_last)

    state = TrainState()
    resumed_from_step = None
    if resume_from is not None:
        state, engine_state = manager.load(resume_from, engine.unwrap(), optimizer, scheduler)
        engine.load_state_dict(engine_state)
        resumed_from_step = state.step
        log.info(
            "resuming from checkpoint %s at step %d/%d (epoch %d)",
            resume_from, state.step, total_steps, state.step // steps_per_epoch,
        )  # fmt: skip
    log.info(
        "training %s/%s on %s: %d steps (%d per epoch), batch %d x %d process(es), "
        "peak lr %.4g, %s on %s",
        config.method.name, config.model.backbone, config.data.dataset, total_steps,
        steps_per_epoch, config.data.batch_size, engine.world_size,
        peak_lr(config.optim, global_batch), config.train.precision, engine.device,
    )  # fmt: skip

    monitor = Monitor(
        run_dir,
        total_steps=total_steps,
        start_step=state.step,
        images_per_step=global_batch,
        log_every=config.train.log_every,
        enabled=engine.is_main,
    )
    stop = StopRequest().install()
    last_saved = state.step if resume_from is not None else None
    last_loss: float | None = None

    def save() -> None:
        nonlocal last_saved
        manager.save(
            engine.unwrap(),
            optimizer,
            scheduler,
            TrainState(step=state.step, epoch=state.step // steps_per_epoch),
            engine.state_dict(),
            extra_meta={
                "engine": engine.name,
                "total_steps": total_steps,
                "steps_per_epoch": steps_per_epoch,
                "loss": last_loss,
            },
        )
        last_saved = state.step

    try:
        while state.step < total_steps and not stop:
            epoch, offset = divmod(state.step, steps_per_epoch)
            for batch in loader.epoch_batches(epoch, offset):
                views = [v.to(engine.device, non_blocking=True) for v in batch.views]
                views = augment(views, seed=derive_seed(config.train.seed, engine.rank, state.step))
                lr = optimizer.param_groups[0]["lr"]
                with engine.autocast():
                    output = model(views)
                engine.backward_and_step(output.loss)
                scheduler.step()
                state.step += 1
                mean_loss = monitor.step(state.step, output.loss, lr, output.metrics)
                if mean_loss is not None:
                    last_loss = engine.reduce_mean(torch.tensor(mean_loss)).item()
                    if not math.isfinite(last_loss):
                        raise TrainingError(
                            f"the loss became {last_loss} at step {state.step}; lower "
                            "optim.base_lr, set optim.clip_grad_norm, or use train.precision=fp32 "
                            f"(the last good checkpoint is in {manager.directory})"
                        )
                if state.step % config.checkpoint.every_steps == 0 or state.step == total_steps:
                    save()
                if stop or state.step >= total_steps:
                    break
        if stop and last_saved != state.step:
            save()
    finally:
        stop.uninstall()
        monitor.close()

    if stop:
        log.info(
            "stopped by %s at step %d/%d; the checkpoint is saved: run the same command to resume",
            stop.received, state.step, total_steps,
        )  # fmt: skip
    elif engine.is_main:
        _finish(config, engine, run_dir, state.step, total_steps, last_loss, started)
    engine.barrier()
    return TrainResult(
        run_dir=run_dir,
        step=state.step,
        total_steps=total_steps,
        resumed_from_step=resumed_from_step,
        final_loss=last_loss if last_loss is not None else monitor.last_loss,
        stopped_by=stop.received,
    )


def _finish(
    config: RunConfig,
    engine: Engine,
    run_dir: Path,
    step: int,
    total_steps: int,
    last_loss: float | None,
    started: float,
) -> None:
    """Export the final backbone and a summary of the run."""
    model = engine.unwrap()
    info = info_from_config(config, str(run_dir / BACKBONE_FILE), run_dir, step)
    save_backbone(run_dir / BACKBONE_FILE, model.backbone, info)  # type: ignore[arg-type]
    summary = {
        "step": step,
        "total_steps": total_steps,
        "final_loss": last_loss,
        "seconds_this_start": round(time.perf_counter() - started, 1),
        "backbone": asdict(info) | {"run_dir": str(run_dir)},
    }
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    log.info("finished %d steps; backbone weights in %s", step, run_dir / BACKBONE_FILE)
