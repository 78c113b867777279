"""Training engines: one process, DDP, DeepSpeed ZeRO.

The trainer talks to an engine only through :class:`~selfsup.pipelines.engines.base.Engine`,
so the same loop runs on every engine; :func:`build_engine` picks one from
the config and the launcher's environment.
"""

from __future__ import annotations

import torch

from selfsup.errors import ConfigError, unknown_name
from selfsup.pipelines.config import RunConfig
from selfsup.pipelines.distributed import DistEnv, detect_env, device_for
from selfsup.pipelines.engines.base import PRECISIONS, Engine, check_precision, resolve_device

ENGINES = ("single", "ddp", "deepspeed")

__all__ = ["ENGINES", "PRECISIONS", "Engine", "build_engine", "check_precision", "resolve_device"]


def build_engine(config: RunConfig, env: DistEnv | None = None) -> Engine:
    """The configured engine for this process; joins the process group when distributed."""
    env = env or detect_env()
    train = config.train
    name = train.engine
    if name not in ENGINES:
        raise unknown_name("engine", name, ENGINES)
    if name == "single" and env.distributed:
        raise ConfigError(
            f"train.engine=single runs one process, but the {env.launcher} launcher started "
            f"{env.world_size}; set train.engine=ddp or train.engine=deepspeed"
        )
    device = device_for(env, train.device)
    options = {
        "device": device,
        "precision": train.precision,
        "clip_grad_norm": config.optim.clip_grad_norm,
        "grad_accum_steps": train.grad_accum_steps,
        "env": env,
        "compile": train.compile,
    }
    if name == "single":
        return Engine(**options)
    if name == "ddp":
        from selfsup.pipelines.engines.ddp import DDPEngine

        return DDPEngine(sync_batchnorm=train.sync_batchnorm, **options)
    from selfsup.pipelines.engines.deepspeed_engine import DeepSpeedEngine

    return DeepSpeedEngine(
        zero_stage=train.zero_stage,
        micro_batch_size=config.data.batch_size,
        config_overrides=train.deepspeed_config,
        **options,
    )


def cpu_engine(precision: str = "fp32") -> Engine:
    """A single-process CPU engine (evaluation, tools)."""
    return Engine(torch.device("cpu"), precision, None)
