"""The single-process engine, and the interface every engine keeps.

A training step, for ``grad_accum_steps`` micro-batches::

    for i, views in enumerate(micro_batches):
        with engine.sync_context(last=i == accum - 1):
            with engine.autocast():
                output = model(views)
            engine.backward(output.loss)
    engine.step()

Precision policy shared by all engines: bf16 autocast on CPU and GPU; fp16
autocast with loss scaling on GPU only. Checkpoints of model and optimizer
go through ``torch.distributed.checkpoint`` here and in DDP (DeepSpeed uses
its own format).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from selfsup.errors import CheckpointError, ConfigError
from selfsup.pipelines.checkpoint.background import BackgroundWriter
from selfsup.pipelines.checkpoint.dcp_io import (
    check_model_keys,
    check_shards_present,
    load_into,
    quiet_dcp,
    stored_keys,
)
from selfsup.pipelines.runtime.distributed import DEFAULT_TIMEOUT_S, DistEnv

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Feature extraction for evaluation runs on CPUs too, where fp16 autocast does not.
EVAL_PRECISIONS = tuple(name for name in PRECISIONS if name != "fp16")


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            "train.precision=fp16 needs a GPU (CPU autocast supports bf16); "
            "use train.precision=bf16 or fp32"
        )


class Engine:
    """One process on one device (CPU or GPU)."""

    name = "single"

    def __init__(
        self,
        device: torch.device,
        precision: str,
        clip_grad_norm: float | None,
        grad_accum_steps: int = 1,
        env: DistEnv | None = None,
        compile: str | None = None,
        dist_timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        check_precision(precision, device)  # the device is known only here
        self.device = device
        self.precision = precision
        self.clip_grad_norm = clip_grad_norm
        self.grad_accum_steps = grad_accum_steps
        self.env = env or DistEnv()
        self.compile = compile  # a torch.compile mode, or None: eager
        self.dist_timeout_s = dist_timeout_s  # multi-process engines: their collectives' bound
        self.dtype = PRECISIONS[precision]
        # Loss scaling only matters for fp16; bf16 has fp32's exponent range.
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    # -- process topology -------------------------------------------------
    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (a no-op in one process)."""

    def lost_peer(self, exc: BaseException) -> str | None:
        """One line naming the rank a failed collective lost (None: one process has none)."""
        return None

    def reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean of ``value`` over processes."""
        return value

    def any_rank(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any."""
        return flag

    def gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Every process's ``rows`` (the same shape on each), concatenated in rank order."""
        return rows

    # -- model and step ---------------------------------------------------
    def setup(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, channels_last: bool = False
    ) -> nn.Module:
        """Place the model; returns the module to call in the training loop."""
        return self.maybe_compile(self.place(model, optimizer, channels_last))

    def place(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, channels_last: bool = False
    ) -> nn.Module:
        """The model on the device, held with its optimizer; not wrapped, not compiled
        (engines that wrap it compile what they wrap)."""
        model.to(self.device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = optimizer
        return model

    def maybe_compile(self, module: nn.Module) -> nn.Module:
        """``torch.compile`` the module the loop calls, when ``train.compile`` asks for it."""
        if self.compile is None:
            return module
        return torch.compile(module, mode=self.compile)  # type: ignore[return-value]

    def unwrap(self) -> nn.Module:
        """The plain model, without any distributed wrapper."""
        assert self.model is not None, "call setup() first"
        return self.model

    @contextlib.contextmanager
    def gathered(self) -> Iterator[nn.Module]:
        """The plain model, whole, for calls other than its forward (validation)."""
        yield self.unwrap()

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.dtype is None:
            yield
            return
        with torch.autocast(self.device.type, dtype=self.dtype):
            yield

    def sync_context(self, last: bool) -> contextlib.AbstractContextManager:
        """Wraps forward and backward of a micro-batch; gradients sync on the ``last`` one."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate one micro-batch's loss (averaged over the accumulation)."""
        self.scaler.scale(loss / self.grad_accum_steps).backward()

    def step(self) -> None:
        """Clip, take the optimizer step, clear gradients."""
        model, optimizer = self.placed()
        if self.clip_grad_norm is not None:
            self.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), self.clip_grad_norm)
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)

    # -- state ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Engine state a checkpoint must hold (the fp16 loss scale)."""
        return {"grad_scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        scaler_state = state.get("grad_scaler") or {}
        if scaler_state and self.scaler.is_enabled():
            self.scaler.load_state_dict(scaler_state)

    def placed(self) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The model and optimizer given to :meth:`setup`."""
        assert self.model is not None and self.optimizer is not None, "call setup() first"
        return self.model, self.optimizer

    def save_model_and_optimizer(
        self, path: Path, writer: BackgroundWriter | None = None
    ) -> Future | None:
        """Write model and optimizer state into folder ``path`` (collective); with a
        ``writer``, stage a copy and return the future of its background write."""
        model_sd, optim_sd = get_state_dict(*self.placed())
        state = {"model": model_sd, "optim": optim_sd}
        if writer is not None:
            return writer.start(state, path)
        with quiet_dcp():
            dcp.save(state, checkpoint_id=path)
        return None

    def load_model_and_optimizer(self, path: Path, meta: dict[str, Any]) -> None:
        """Restore what :meth:`save_model_and_optimizer` wrote (any process count)."""
        if meta.get("engine", "single") == "deepspeed":
            raise CheckpointError(
                f"{path} was written by the DeepSpeed engine; resume it with "
                "train.engine=deepspeed (or export its weights with `selfsup checkpoint export`)"
            )
        written_by = meta.get("engine", "single")
        if written_by != self.name:  # single, ddp and fsdp share one format
            log.info("checkpoint %s was written by the %s engine: resumed on %s", path,
                     written_by, self.name)  # fmt: skip
        check_shards_present(path)
        model, optimizer = self.placed()
        model_sd, optim_sd = get_state_dict(model, optimizer)
        check_model_keys(path, model_sd, stored_keys(path))
        state: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
        load_into(state, path)
        set_state_dict(
            model,
            optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
        )

    def held(self, parameter: torch.Tensor) -> torch.Tensor:
        """The part of ``parameter`` this process holds (all of it here; a shard where the
        engine shards), detached: what a momentum update or a finiteness check reads."""
        return parameter.detach()

    def weights_finite(self) -> bool:
        """Whether every parameter this process holds is finite (one device sync)."""
        return all_finite(self.held(p) for p in self.unwrap().parameters())

    def full_model_state(self) -> dict[str, torch.Tensor]:
        """The whole model's tensors on CPU, on the main process (collective)."""
        return {k: v.detach().cpu() for k, v in self.unwrap().state_dict().items()}

    def close(self) -> None:
        """Leave the process group, if any."""


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    checks = [t.isfinite().all() for t in tensors if t.numel()]
    return bool(torch.stack(checks).all()) if checks else True
