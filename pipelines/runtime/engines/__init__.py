"""Training engines: one process, DDP, FSDP2, DeepSpeed ZeRO.

The trainer talks to an engine only through :class:`~selfsup.pipelines.runtime.engines.base.Engine`,
so the same loop runs on every engine; :func:`build_engine` picks one from
the config and the launcher's environment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from selfsup.errors import ConfigError
from selfsup.pipelines.config import RunConfig, register_choices
from selfsup.pipelines.runtime.distributed import (
    DEVICES,
    DistEnv,
    detect_env,
    device_for,
    resolve_device,
)
from selfsup.pipelines.runtime.engines.base import (
    EVAL_PRECISIONS,
    PRECISIONS,
    Engine,
    check_precision,
)
from selfsup.registry import Registry, UnknownName

# Each entry builds its engine from the run config and the engine options
# shared by all; DDP, FSDP and DeepSpeed are imported only when chosen.
EngineBuilder = Callable[["RunConfig", dict[str, Any]], Engine]
ENGINES: Registry[EngineBuilder] = Registry("engine")

__all__ = ["ENGINES", "PRECISIONS", "Engine", "build_engine", "check_precision", "resolve_device"]


@ENGINES.decorator("single")
def _single(config: RunConfig, options: dict[str, Any]) -> Engine:
    return Engine(**options)


@ENGINES.decorator("ddp")
def _ddp(config: RunConfig, options: dict[str, Any]) -> Engine:
    from selfsup.pipelines.runtime.engines.ddp import DDPEngine

    return DDPEngine(sync_batchnorm=config.train.sync_batchnorm, **options)


@ENGINES.decorator("fsdp")
def _fsdp(config: RunConfig, options: dict[str, Any]) -> Engine:
    from selfsup.pipelines.runtime.engines.fsdp import FSDPEngine

    return FSDPEngine(
        reshard_after_forward=config.train.fsdp_reshard_after_forward,
        sync_batchnorm=config.train.sync_batchnorm,
        **options,
    )


@ENGINES.decorator("deepspeed")
def _deepspeed(config: RunConfig, options: dict[str, Any]) -> Engine:
    from selfsup.pipelines.runtime.engines.deepspeed_engine import DeepSpeedEngine

    return DeepSpeedEngine(
        zero_stage=config.train.zero_stage,
        micro_batch_size=config.data.batch_size,
        config_overrides=config.train.deepspeed_config,
        **options,
    )


def build_engine(config: RunConfig, env: DistEnv | None = None) -> Engine:
    """The configured engine for this process; joins the process group when distributed."""
    env = env or detect_env()
    train = config.train
    try:
        builder = ENGINES.get(train.engine)
    except UnknownName as exc:
        raise ConfigError(str(exc)) from None
    if train.engine == "single" and env.distributed:
        raise ConfigError(
            f"train.engine=single runs one process, but the {env.launcher} launcher started "
            f"{env.world_size}; set train.engine=ddp, fsdp or deepspeed"
        )
    device = device_for(env, train.device)
    options: dict[str, Any] = {
        "device": device,
        "precision": train.precision,
        "clip_grad_norm": config.optim.clip_grad_norm,
        "grad_accum_steps": train.grad_accum_steps,
        "env": env,
        "compile": compile_mode(train.compile, train.compile_mode, train.engine, device),
        "dist_timeout_s": train.dist_timeout_s,
    }
    return builder(config, options)


def compile_mode(setting: bool | str, mode: str, engine: str, device: torch.device) -> str | None:
    """The ``torch.compile`` mode a run uses, or None: ``auto`` compiles on CUDA for the
    single and DDP engines (DeepSpeed's own compile is opt-in, ``train.compile=true``)."""
    if setting == "auto":
        setting = device.type == "cuda" and engine in ("single", "ddp")
    return mode if setting else None


register_choices("train.precision", lambda: tuple(PRECISIONS))
register_choices("train.device", lambda: DEVICES)
register_choices("train.engine", ENGINES.names)
register_choices("probe.precision", lambda: EVAL_PRECISIONS)
