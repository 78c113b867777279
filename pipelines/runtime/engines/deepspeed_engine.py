"""DeepSpeed ZeRO (stages 1-3), driven through DeepSpeed's own engine.

The DeepSpeed JSON config is generated from the selfsup config, and
``train.deepspeed_config`` (a JSON file) is merged over it for anything else
DeepSpeed offers. Mapping:

===========================  ==============================================
selfsup                      DeepSpeed
===========================  ==============================================
data.batch_size              train_micro_batch_size_per_gpu
train.grad_accum_steps       gradient_accumulation_steps
optim.clip_grad_norm         gradient_clipping (global norm; 0 = off)
train.zero_stage             zero_optimization.stage
train.precision bf16/fp16    torch_autocast {enabled, dtype}
===========================  ==============================================

Precision uses DeepSpeed's ``torch_autocast`` mode: parameters stay fp32 and
matmuls/convolutions run in bf16/fp16, the same numerics as the other
engines. (DeepSpeed's ``bf16`` mode casts the model and leaves BatchNorm
buffers in fp32, which fails on ResNets unless ``data_types.buffer_dtype``
is also set.) The optimizer and schedule are selfsup's, passed to DeepSpeed
as client objects; LARS is refused because ZeRO hands the optimizer
flattened partitions, where LARS's per-layer trust ratio means nothing.

Checkpoints use DeepSpeed's ``save_checkpoint``/``load_checkpoint`` with the
same surrounding protocol as DCP (temporary folder, rename, ``latest``,
per-rank RNG files). ZeRO shards are tied to the process count: a checkpoint
resumes on as many processes as wrote it. To continue elsewhere, export the
weights (``selfsup checkpoint export``, which consolidates with DeepSpeed's
``zero_to_fp32``) or convert the folder with DeepSpeed's universal-checkpoint
tool (``python -m deepspeed.checkpoint.ds_to_universal``) and load it with
``"checkpoint": {"load_universal": true}`` in ``train.deepspeed_config``.
"""

from __future__ import annotations

import contextlib
import json
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup.errors import CheckpointError, ConfigError, DependencyError, one_line
from selfsup.pipelines.checkpoint.background import BackgroundWriter
from selfsup.pipelines.checkpoint.untrusted import deepspeed_reads
from selfsup.pipelines.runtime.engines.base import Engine
from selfsup.pipelines.runtime.engines.collectives import ProcessGroupCollectives

AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def require_deepspeed():
    try:
        import deepspeed
    except ImportError as exc:
        raise DependencyError(
            f"train.engine=deepspeed needs DeepSpeed, which is not installed ({exc}); "
            "install it with: pip install -e .[deepspeed]"
        ) from exc
    return deepspeed


def deepspeed_config(
    micro_batch_size: int,
    grad_accum_steps: int,
    clip_grad_norm: float | None,
    zero_stage: int,
    precision: str,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The DeepSpeed JSON config for these selfsup settings, with ``overrides`` merged in."""
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "gradient_clipping": float(clip_grad_norm or 0.0),
        "zero_optimization": {"stage": zero_stage},
        # selfsup's own optimizers (AdamW, SGD) are "untested" to DeepSpeed.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,  # selfsup logs progress itself
        "wall_clock_breakdown": False,
    }
    if precision in AUTOCAST_DTYPES:
        config["torch_autocast"] = {"enabled": True, "dtype": AUTOCAST_DTYPES[precision]}
    return _merge(config, overrides or {})


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = (
            _merge(merged[key], value)
            if isinstance(value, dict) and isinstance(merged.get(key), dict)
            else value
        )
    return merged


def read_overrides(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"train.deepspeed_config file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"train.deepspeed_config file {path} is not valid JSON: {exc}") from exc


class DeepSpeedEngine(ProcessGroupCollectives, Engine):
    """ZeRO stage 1, 2 or 3 over NCCL (GPUs) or gloo (CPUs)."""

    name = "deepspeed"

    def __init__(
        self,
        *args,
        zero_stage: int = 2,
        micro_batch_size: int = 32,
        config_overrides: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.deepspeed = require_deepspeed()
        self.zero_stage = zero_stage  # 0-3: checked with the config (config.validation)
        self.ds_config = deepspeed_config(
            micro_batch_size,
            self.grad_accum_steps,
            self.clip_grad_norm,
            zero_stage,
            self.precision,
            read_overrides(config_overrides),
        )
        self.join_process_group()
        self.ds_engine: Any = None

    def setup(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, channels_last: bool = False
    ) -> nn.Module:
        from lightly.utils.lars import LARS

        if isinstance(optimizer, LARS) and self.zero_stage > 0:
            raise ConfigError(
                "optim.name=lars does not work with DeepSpeed ZeRO (it partitions parameters into "
                "flat buffers, which breaks LARS's per-layer scaling); use optim.name=adamw or sgd"
            )
        # DeepSpeed flattens parameters into contiguous buffers (as views of
        # one byte array), which a channels_last weight cannot be: the weights
        # stay contiguous. The augmented inputs are still channels_last
        # (model.channels_last), so convolutions pick their NHWC kernels.
        self.place(model, optimizer, channels_last=False)
        self.ds_engine, self.optimizer, _, _ = self.deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.ds_config
        )
        if self.compile:
            self.ds_engine.compile()  # DeepSpeed's own torch.compile integration
        return self.ds_engine

    def unwrap(self) -> nn.Module:
        assert self.ds_engine is not None, "call setup() first"
        return self.ds_engine.module

    @contextlib.contextmanager
    def autocast(self):
        yield  # DeepSpeed's torch_autocast mode wraps the forward pass itself

    def backward(self, loss: torch.Tensor) -> None:
        # DeepSpeed scales by the accumulation itself and steps only at boundaries.
        self.ds_engine.backward(loss)
        self.ds_engine.step()

    def step(self) -> None:
        """Nothing left to do: :meth:`backward` stepped at the accumulation boundary."""

    def state_dict(self) -> dict[str, Any]:
        return {"zero_stage": self.zero_stage}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Loss scaling state lives in DeepSpeed's own checkpoint files."""

    def save_model_and_optimizer(
        self, path: Path, writer: BackgroundWriter | None = None
    ) -> Future | None:
        # DeepSpeed writes its own format, synchronously (checkpoint.async_save is refused).
        assert writer is None, "checkpoint.async_save is checked against the engine"
        self.ds_engine.save_checkpoint(str(path.parent), tag=path.name, save_latest=False)
        return None

    def load_model_and_optimizer(self, path: Path, meta: dict[str, Any]) -> None:
        written_by = meta.get("engine", "single")
        if written_by != "deepspeed":
            raise CheckpointError(
                f"{path} was written by the {written_by} engine (DCP); DeepSpeed cannot resume "
                f"it: resume with train.engine={written_by}"
            )
        if meta.get("world_size") != self.world_size:
            raise CheckpointError(
                f"{path} holds ZeRO shards of {meta.get('world_size')} processes; this run has "
                f"{self.world_size}. Relaunch with {meta.get('world_size')} processes, or see "
                "docs/checkpoints.md for DeepSpeed's universal-checkpoint conversion"
            )
        stage = meta.get("engine_state", {}).get("zero_stage")
        if stage is not None and stage != self.zero_stage:
            raise CheckpointError(
                f"{path} was written with ZeRO stage {stage}; this run uses train.zero_stage="
                f"{self.zero_stage}"
            )
        check_deepspeed_files(path, self.world_size, self.zero_stage)
        try:
            with deepspeed_reads(path):  # DeepSpeed's torch.load(weights_only=False), made safe
                loaded, _ = self.ds_engine.load_checkpoint(
                    str(path.parent), tag=path.name, load_lr_scheduler_states=False
                )
        except (RuntimeError, KeyError, OSError, EOFError) as exc:
            raise CheckpointError(
                f"cannot load DeepSpeed checkpoint {path} ({type(exc).__name__}: "
                f"{one_line(exc)}); it does not match this model or is corrupt"
            ) from exc
        if loaded is None:
            raise CheckpointError(f"DeepSpeed found no checkpoint in {path}")

    def held(self, parameter: torch.Tensor) -> torch.Tensor:
        # ZeRO-3 keeps each rank's share of a parameter in ds_tensor.
        return getattr(parameter, "ds_tensor", parameter).detach()

    def full_model_state(self) -> dict[str, torch.Tensor]:
        if self.zero_stage == 3:
            return gathered_state_dict(self.ds_engine.module, keep=self.is_main)  # collective
        return super().full_model_state()


def gathered_state_dict(module: nn.Module, keep: bool) -> dict[str, torch.Tensor]:
    """The whole state of a ZeRO-3 partitioned module, in fp32 on CPU (collective).

    DeepSpeed's public ``zero.GatheredParameters`` rebuilds one submodule's
    parameters at a time on every rank, so no rank ever holds more than one
    layer beyond its own shard; ranks with ``keep`` false take part and
    return an empty dict.
    """
    import deepspeed

    state: dict[str, torch.Tensor] = {}
    for prefix, submodule in module.named_modules():
        own = list(submodule.named_parameters(recurse=False))
        with deepspeed.zero.GatheredParameters([p for _, p in own], modifier_rank=None):
            if keep:
                for name, param in own:
                    state[f"{prefix}.{name}" if prefix else name] = (
                        param.detach().float().cpu().clone()
                    )
    if keep:  # buffers (BatchNorm statistics) are never partitioned
        for name, buffer in module.named_buffers():
            state[name] = (
                buffer.detach().cpu().float() if buffer.is_floating_point() else buffer.cpu()
            )
    return state


def check_deepspeed_files(path: Path, world_size: int, zero_stage: int) -> None:
    """Every rank's optimizer shard (and ZeRO-3 model shard) is present."""
    expected = []
    if zero_stage > 0:
        expected += [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(world_size)]
    if zero_stage == 3:
        expected += [f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(world_size)]
    else:
        expected.append("mp_rank_00_model_states.pt")
    missing = [name for name in expected if not (path / name).is_file()]
    if missing:
        raise CheckpointError(
            f"DeepSpeed checkpoint {path} is missing shard file(s) {', '.join(missing)}: copy the "
            "whole folder, or delete it to resume from the one before"
        )
